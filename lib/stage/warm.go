package stage

import (
	"slices"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"crpipe/lib/pb"
)

// everyStageRecords are the records every stage decodes or writes.
var everyStageRecords = []proto.Message{&pb.Inventory{}, &pb.Freeze{}, &pb.Process{}, &pb.End{}}

// warm sets up the protobuf code of the records a stage will decode or
// write (everyStageRecords and ms) and of every message they hold, while
// it waits for the freeze. The protobuf runtime does it lazily, at a
// type's first use: ~0.3-0.7 ms for the first type of a .proto file and
// ~0.05-0.3 ms for each other on the PVM guest, paid on the frozen tree's
// path as the first records came (doc/performance.md 68). It decodes into
// new messages only: cr-dump's stages warm at once in one process, and
// Unmarshal resets its message, leaving it for an instant without its type
// (another stage's warm of the same shared record then panicked).
func warm(ms []proto.Message) {
	for _, m := range heldRecords(ms) {
		proto.Unmarshal(nil, m.Type().New().Interface()) // sets up the type's code; nothing to decode
	}
}

// heldRecords are everyStageRecords, ms, and the messages they hold, each
// type once.
func heldRecords(ms []proto.Message) []protoreflect.Message {
	var all []protoreflect.Message
	seen := map[protoreflect.FullName]bool{}
	var visit func(m protoreflect.Message)
	visit = func(m protoreflect.Message) {
		d := m.Descriptor()
		if seen[d.FullName()] {
			return
		}
		seen[d.FullName()] = true
		all = append(all, m)
		fields := d.Fields()
		for i := range fields.Len() {
			switch f := fields.Get(i); {
			case f.Kind() != protoreflect.MessageKind || f.IsMap():
			case f.IsList():
				visit(m.NewField(f).List().NewElement().Message())
			default:
				visit(m.NewField(f).Message())
			}
		}
	}
	for _, m := range slices.Concat(everyStageRecords, ms) {
		visit(m.ProtoReflect())
	}
	return all
}
