package pb

import (
	"encoding/binary"
	"errors"

	"github.com/planetscale/vtprotobuf/protohelpers"
)

// The protobuf wire format where a record is handled field by field
// (mm.go), without the protobuf runtime (codec.go).

// FieldNumber is a field's number in its message.
type FieldNumber int32

// WireType is how a field's value is encoded.
type WireType int8

// BytesType is a length-delimited value: bytes, a string, a message.
const BytesType WireType = 2

// errWire is a message that is not valid wire format.
var errWire = errors.New("proto: cannot parse invalid wire-format data")

// appendTag appends the tag of field num of type typ.
func appendTag(b []byte, num FieldNumber, typ WireType) []byte {
	return binary.AppendUvarint(b, uint64(num)<<3|uint64(typ))
}

// EachField calls fn with the number, type and encoded value of each field
// of the encoded message b (a BytesType value with its length).
func EachField(b []byte, fn func(FieldNumber, WireType, []byte) error) error {
	for len(b) > 0 {
		tag, n := binary.Uvarint(b)
		if n <= 0 || tag>>3 == 0 || tag>>3 > 1<<29-1 {
			return errWire
		}
		whole, err := protohelpers.Skip(b) // the tag and the value: a group whole
		if err != nil || whole < n || whole > len(b) {
			return errWire
		}
		if err := fn(FieldNumber(tag>>3), WireType(tag&7), b[n:whole]); err != nil {
			return err
		}
		b = b[whole:]
	}
	return nil
}

// consumeBytes returns the bytes of a BytesType value (EachField's).
func consumeBytes(v []byte) ([]byte, error) {
	n, k := binary.Uvarint(v)
	if k <= 0 || n > uint64(len(v)-k) {
		return nil, errWire
	}
	return v[k : k+int(n)], nil
}
