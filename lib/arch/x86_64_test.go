package arch

import (
	"encoding/binary"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestRegsRoundTrip(t *testing.T) {
	var r unix.PtraceRegs
	// Distinct values in every field catch a swapped pair.
	p := (*[27]uint64)(unsafe.Pointer(&r))
	for i := range p {
		p[i] = uint64(i+1) * 0x0101010101
	}
	back, err := RegsFromPB(RegsToPB(&r))
	if err != nil {
		t.Fatal(err)
	}
	if back != r {
		t.Fatalf("round trip changed registers:\n got %+v\nwant %+v", back, r)
	}
	if _, err := RegsFromPB(nil); err == nil {
		t.Fatal("nil registers accepted")
	}
}

func TestParseXsave(t *testing.T) {
	b := make([]byte, 832)
	le := binary.LittleEndian
	le.PutUint64(b[464:], 0x207)
	le.PutUint64(b[512:], 3)
	x, err := ParseXsave(b)
	if err != nil {
		t.Fatal(err)
	}
	if x.XCR0 != 0x207 || x.Size != 832 || x.XstateBV != 3 {
		t.Fatalf("got %+v", x)
	}
	if err := XsaveCompatible(x, 7); err != nil {
		t.Fatal(err)
	}
	if err := XsaveCompatible(x, 1); err == nil {
		t.Fatal("missing component accepted")
	}
	if _, err := ParseXsave(b[:100]); err == nil {
		t.Fatal("short area accepted")
	}
	le.PutUint64(b[512:], 0x10)
	if _, err := ParseXsave(b); err == nil {
		t.Fatal("state outside XCR0 accepted")
	}
	le.PutUint64(b[464:], 0)
	if _, err := ParseXsave(b); err == nil {
		t.Fatal("XCR0 0 accepted")
	}
}
