package pb

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// The records are plain structs (protoc-gen-go's types rewritten by
// lib/pb/internal/plain), encoded and decoded by the code
// protoc-gen-go-vtproto generates beside each *.pb.go (*_vtproto.pb.go):
// plain Go for each field, and no protobuf runtime in the commands, whose
// start it cost ~2 ms each on the PVM guest (its package initialisation,
// its descriptors, its size: doc/performance.md 79, 82, 92). The bytes are
// those of a deterministic proto.Marshal (fields in the order of their
// numbers, unknown fields kept and written last; none of our messages has
// a map or a oneof), which TestCodecAgreesWithProto checks for every
// record type against lib/pb/protomsg, the same records as protobuf
// messages. Unlike the runtime, the generated code does not check that
// strings are UTF-8: a path with other bytes is kept as it is.

// Message is a record.
type Message interface {
	Reset()
	MessageName() string // its full name in the .proto files ("cr.v1.Process")
	SizeVT() int
	MarshalToSizedBufferVT([]byte) (int, error)
	UnmarshalVT([]byte) error
}

// Marshal encodes m, deterministically.
func Marshal(m Message) ([]byte, error) {
	return MarshalAppend(nil, m)
}

// MarshalAppend appends the encoding of m to b.
func MarshalAppend(b []byte, m Message) ([]byte, error) {
	n := m.SizeVT()
	b = slices.Grow(b, n)
	if _, err := m.MarshalToSizedBufferVT(b[len(b) : len(b)+n]); err != nil {
		return b, err
	}
	return b[:len(b)+n], nil
}

// Size is the length of m's encoding.
func Size(m Message) int { return m.SizeVT() }

// Unmarshal decodes b into m, which it resets first, as proto.Unmarshal.
// Its errors begin "proto:" as the runtime's do, and name the message.
func Unmarshal(b []byte, m Message) error {
	m.Reset()
	if err := m.UnmarshalVT(b); err != nil {
		return fmt.Errorf("proto: cannot decode %s: %s", m.MessageName(), strings.TrimPrefix(err.Error(), "proto: "))
	}
	return nil
}

// Equal says whether a and b are the same record: their encodings are
// (deterministic, unknown fields included).
func Equal(a, b Message) bool {
	ea, errA := Marshal(a)
	eb, errB := Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ea, eb)
}
