package pb

import "sync"

// The descriptors of the records (what the protobuf runtime reflects with:
// crit's JSON, proto.Equal, an enum's String) are built at their first
// use, not as each command starts. protoc-gen-go builds them in an init
// function of each *.pb.go; the records are encoded and decoded by the
// generated code of codec.go, which needs none of them, and building them
// took ~2 ms of every command's start on the PVM guest (doc/performance.md
// 82). `make generate` rewrites the files after protoc
// (lib/pb/internal/lazyinit): their init functions register here instead,
// and the methods that reach a descriptor (a message's ProtoReflect, an
// enum's Descriptor and Type) call buildDescriptors first.

var (
	fileInits       []func()
	descriptorsOnce sync.Once
)

// lazily keeps a file's init for buildDescriptors.
func lazily(init func()) bool {
	fileInits = append(fileInits, init)
	return true
}

// buildDescriptors builds every file's descriptors and registers its types
// with the runtime (protoregistry.GlobalTypes), once.
func buildDescriptors() {
	descriptorsOnce.Do(func() {
		for _, init := range fileInits {
			init()
		}
	})
}

// BuildDescriptors builds the descriptors now: for code that finds the
// types by name in the runtime's registry rather than through a message.
func BuildDescriptors() { buildDescriptors() }
