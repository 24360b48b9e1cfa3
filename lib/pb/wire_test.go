package pb

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// TestEachField: EachField gives what protowire reads, field by field, for
// every wire type (a group whole), and refuses damaged fields.
func TestEachField(t *testing.T) {
	var b []byte
	b = protowire.AppendVarint(protowire.AppendTag(b, 1, protowire.VarintType), 300)
	b = protowire.AppendFixed64(protowire.AppendTag(b, 2, protowire.Fixed64Type), 7)
	b = protowire.AppendBytes(protowire.AppendTag(b, 3, protowire.BytesType), []byte("abc"))
	b = protowire.AppendTag(b, 4, protowire.StartGroupType)
	b = protowire.AppendVarint(protowire.AppendTag(b, 1, protowire.VarintType), 1)
	b = protowire.AppendTag(b, 4, protowire.EndGroupType)
	b = protowire.AppendFixed32(protowire.AppendTag(b, 1<<29-1, protowire.Fixed32Type), 9)
	type field struct {
		num FieldNumber
		typ WireType
		val []byte
	}
	var want []field
	for rest := b; len(rest) > 0; {
		num, typ, n := protowire.ConsumeTag(rest)
		m := protowire.ConsumeFieldValue(num, typ, rest[n:])
		want = append(want, field{FieldNumber(num), WireType(typ), rest[n : n+m]})
		rest = rest[n+m:]
	}
	var got []field
	if err := EachField(b, func(num FieldNumber, typ WireType, v []byte) error {
		got = append(got, field{num, typ, v})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) || len(got) != 5 {
		t.Fatalf("%d fields, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].num != want[i].num || got[i].typ != want[i].typ || !bytes.Equal(got[i].val, want[i].val) {
			t.Errorf("field %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if v, err := consumeBytes(got[2].val); err != nil || string(v) != "abc" {
		t.Errorf("consumeBytes: %q, %v", v, err)
	}
	for _, bad := range [][]byte{
		b[:len(b)-1],       // fixed32 cut short
		{0x00, 0x01},       // field 0
		{0x1a, 0x05, 'a'},  // bytes past the end
		{0x23, 0x08, 0x01}, // a group never ended
		{0x24},             // the end of a group never started
		{0x0e},             // wire type 6
		{0x80},             // a tag cut short
	} {
		if err := EachField(bad, func(FieldNumber, WireType, []byte) error { return nil }); err == nil {
			t.Errorf("%x: no error", bad)
		}
	}
	if _, err := consumeBytes([]byte{0x05, 'a'}); err == nil {
		t.Error("consumeBytes: a length past the end read")
	}
}
