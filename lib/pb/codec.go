package pb

import (
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
)

// The records are encoded and decoded by the code protoc-gen-go-vtproto
// generates beside each *.pb.go (*_vtproto.pb.go): plain Go for each
// field, where the protobuf runtime reflects over the message's struct and
// builds its coders at a type's first use in each process (~0.1 ms a type
// on the PVM guest, ~6 ms for all of them: a large part of a small dump's
// stages and of a small restore; doc/performance.md 79). The bytes are
// those of a deterministic proto.Marshal (fields in the order of their
// numbers, unknown fields last; none of our messages has a map or a
// oneof), which TestCodecAgreesWithProto checks for every record type.
// Unlike the runtime, the generated code does not check that strings are
// UTF-8: a path with other bytes is kept as it is.

// fastCodec is what the generated code gives each message.
type fastCodec interface {
	SizeVT() int
	MarshalToSizedBufferVT([]byte) (int, error)
	UnmarshalVT([]byte) error
}

// Marshal encodes m, deterministically.
func Marshal(m proto.Message) ([]byte, error) {
	return MarshalAppend(nil, m)
}

// MarshalAppend appends the encoding of m to b.
func MarshalAppend(b []byte, m proto.Message) ([]byte, error) {
	c, ok := m.(fastCodec)
	if !ok {
		return proto.MarshalOptions{Deterministic: true}.MarshalAppend(b, m)
	}
	n := c.SizeVT()
	b = slices.Grow(b, n)
	if _, err := c.MarshalToSizedBufferVT(b[len(b) : len(b)+n]); err != nil {
		return b, err
	}
	return b[:len(b)+n], nil
}

// Size is the length of m's encoding.
func Size(m proto.Message) int {
	if c, ok := m.(fastCodec); ok {
		return c.SizeVT()
	}
	return proto.MarshalOptions{Deterministic: true}.Size(m)
}

// Unmarshal decodes b into m, which it resets first, as proto.Unmarshal.
// Its errors begin "proto:" as the runtime's do, and name the message.
func Unmarshal(b []byte, m proto.Message) error {
	c, ok := m.(fastCodec)
	if !ok {
		return proto.Unmarshal(b, m)
	}
	proto.Reset(m) // the generated Reset: no coders built
	if err := c.UnmarshalVT(b); err != nil {
		return fmt.Errorf("proto: cannot decode %s: %s", m.ProtoReflect().Descriptor().FullName(),
			strings.TrimPrefix(err.Error(), "proto: "))
	}
	return nil
}
