package pb

import (
	"bytes"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	_ "crpipe/lib/pb/protomsg" // registers the records as protobuf messages
)

// recordTypes are the message types of lib/pb's .proto files, as
// protobuf messages (lib/pb/protomsg), each with the plain record of the
// same name (records_gen.go).
func recordTypes(t *testing.T) []protoreflect.MessageType {
	var types []protoreflect.MessageType
	protoregistry.GlobalTypes.RangeMessages(func(mt protoreflect.MessageType) bool {
		if name := string(mt.Descriptor().FullName()); strings.HasPrefix(name, "cr.v1.") {
			if newRecord(name) == nil {
				t.Fatalf("%s has no plain record: run `make generate`", name)
			}
			types = append(types, mt)
		}
		return true
	})
	if len(types) != len(recordNames) || len(types) < 50 {
		t.Fatalf("%d record types registered, %d plain ones: run `make generate`", len(types), len(recordNames))
	}
	// The registry's order is a map's: the fuzzer's workers must agree on it.
	slices.SortFunc(types, func(a, b protoreflect.MessageType) int {
		return strings.Compare(string(a.Descriptor().FullName()), string(b.Descriptor().FullName()))
	})
	return types
}

func plainOf(mt protoreflect.MessageType) Message {
	return newRecord(string(mt.Descriptor().FullName()))
}

// TestCodecAgreesWithProto: for messages with random values in every field
// (nested, repeated, zero or not, unknown enum values, unknown fields), the
// plain record decodes the bytes of a deterministic proto.Marshal, whatever
// it held before, and encodes them back byte for byte, its Size their
// length; and a record cut short is refused, naming its type.
func TestCodecAgreesWithProto(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	det := proto.MarshalOptions{Deterministic: true}
	for _, mt := range recordTypes(t) {
		name := mt.Descriptor().FullName()
		// A length past the end: refused, naming the message.
		if err := Unmarshal([]byte{0x0a, 0x05}, plainOf(mt)); err == nil ||
			!strings.HasPrefix(err.Error(), "proto: cannot decode "+string(name)+": ") {
			t.Errorf("%s: a truncated record gave %v", name, err)
		}
		back := plainOf(mt)
		for i := range 40 {
			m := mt.New()
			fillRandom(rnd, m, 3)
			if i%4 == 3 { // a field from a newer writer, kept and passed on
				m.SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 900, protowire.BytesType), []byte("newer")))
			}
			want, err := det.Marshal(m.Interface())
			if err != nil {
				t.Fatalf("%s: proto.Marshal: %v", name, err)
			}
			// back still holds the record before: Unmarshal resets it.
			if err := Unmarshal(want, back); err != nil {
				t.Fatalf("%s: Unmarshal: %v", name, err)
			}
			got, err := Marshal(back)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s: Marshal = %x, %v; proto.Marshal gives %x", name, got, err, want)
			}
			if Size(back) != len(want) {
				t.Fatalf("%s: Size %d, encoding %d bytes", name, Size(back), len(want))
			}
			appended, err := MarshalAppend([]byte("head"), back)
			if err != nil || string(appended[:4]) != "head" || !bytes.Equal(appended[4:], want) {
				t.Fatalf("%s: MarshalAppend = %x, %v", name, appended, err)
			}
			if i%8 == 0 {
				other := plainOf(mt)
				if !Equal(other, plainOf(mt)) || (len(want) > 0) == Equal(back, other) {
					t.Fatalf("%s: Equal of an empty record and one of %d bytes is %v", name, len(want), Equal(back, other))
				}
			}
		}
	}
}

// FuzzCodecUnmarshal: whatever the protobuf runtime decodes, the plain
// record decodes to the same message (encoded, and decoded by the
// runtime), but for a known field with another wire type, which the
// runtime keeps as an unknown field and the generated code refuses (only a
// writer that changed a field's type, which the stream's rules forbid,
// would write it). The other way, the generated code is the more lenient:
// it does not check that strings are UTF-8, nor the tenth byte of a
// varint; the frames' checksums stand before it, and the stages check the
// values they use. Neither panics.
func FuzzCodecUnmarshal(f *testing.F) {
	rnd := rand.New(rand.NewPCG(3, 4))
	types := recordTypes(&testing.T{})
	for i, mt := range types {
		m := mt.New()
		fillRandom(rnd, m, 2)
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m.Interface())
		f.Add(uint8(i), b)
	}
	f.Fuzz(func(t *testing.T, which uint8, b []byte) {
		mt := types[int(which)%len(types)]
		fast, slow := plainOf(mt), mt.New().Interface()
		fastErr, slowErr := Unmarshal(b, fast), proto.Unmarshal(b, slow)
		switch {
		case slowErr == nil && fastErr != nil && !strings.Contains(fastErr.Error(), "wrong wireType"):
			t.Fatalf("%s: Unmarshal refuses what proto.Unmarshal decodes: %v", mt.Descriptor().FullName(), fastErr)
		case slowErr == nil && fastErr == nil:
			enc, err := Marshal(fast)
			if err != nil {
				t.Fatalf("%s: Marshal of what Unmarshal decoded: %v", mt.Descriptor().FullName(), err)
			}
			again := mt.New().Interface()
			if err := proto.Unmarshal(enc, again); err != nil || !proto.Equal(normalized(again), normalized(slow)) {
				t.Fatalf("%s: decoded differently (%v):\n %v\n %v", mt.Descriptor().FullName(), err, again, slow)
			}
		}
	})
}

// normalized is m encoded and decoded by the runtime, which writes the tags
// of unknown fields anew: the generated code keeps an over-long one as it
// came.
func normalized(m proto.Message) proto.Message {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic(err)
	}
	n := m.ProtoReflect().New().Interface()
	if err := proto.Unmarshal(b, n); err != nil {
		panic(err)
	}
	return n
}

// fillRandom sets about three fields in four of m to random values,
// messages to depth levels.
func fillRandom(rnd *rand.Rand, m protoreflect.Message, depth int) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if rnd.IntN(4) == 0 {
			continue
		}
		switch {
		case fd.IsList():
			l := m.Mutable(fd).List()
			for range rnd.IntN(4) {
				if fd.Kind() != protoreflect.MessageKind {
					l.Append(randomScalar(rnd, fd))
				} else if depth > 0 {
					e := l.NewElement()
					fillRandom(rnd, e.Message(), depth-1)
					l.Append(e)
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			if depth > 0 {
				fillRandom(rnd, m.Mutable(fd).Message(), depth-1)
			}
		default:
			m.Set(fd, randomScalar(rnd, fd))
		}
	}
}

func randomScalar(rnd *rand.Rand, fd protoreflect.FieldDescriptor) protoreflect.Value {
	small := rnd.IntN(3) == 0 // zeros and small numbers as often as large ones
	u := rnd.Uint64()
	if small {
		u = uint64(rnd.IntN(3))
	}
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(u&1 == 1)
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(protoreflect.EnumNumber(rnd.IntN(8))) // unknown numbers too
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(u))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(int64(u))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(u))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(u)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(float32(rnd.NormFloat64()))
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(rnd.NormFloat64() * math.MaxInt32)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(string([]rune("aé/\x00ü€😀z")[:u%9]))
	case protoreflect.BytesKind:
		b := make([]byte, u%40)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		return protoreflect.ValueOfBytes(b)
	}
	panic("no random value for " + fd.Kind().String())
}
