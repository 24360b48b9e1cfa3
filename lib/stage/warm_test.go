package stage

import (
	"slices"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"crpipe/lib/pb"
)

// TestHeldRecords: the records every stage handles, the stage's own, and
// the messages they hold at any depth, in lists or not, each once.
func TestHeldRecords(t *testing.T) {
	var names []string
	for _, m := range heldRecords([]proto.Message{&pb.Files{}, &pb.ThreadState{}, &pb.Process{}}) {
		names = append(names, string(m.Descriptor().FullName()))
	}
	for _, want := range []string{
		"cr.v1.Inventory", "cr.v1.Freeze", "cr.v1.Process", "cr.v1.End", // every stage's
		"cr.v1.Files", "cr.v1.ThreadState", // the stage's own
		"cr.v1.Fd",            // repeated, in Files
		"cr.v1.Creds",         // in ThreadState
		"cr.v1.SeccompFilter", // repeated, in ThreadState
	} {
		if !slices.Contains(names, want) {
			t.Errorf("%s is not among %v", want, names)
		}
	}
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	if len(slices.Compact(sorted)) != len(names) {
		t.Errorf("a type twice in %v", names)
	}
	warm(nil) // and setting them up does not fail
}

// TestWarmAtOnce: cr-dump's stages warm their records at once in one
// process; warming the same shared messages from many goroutines must
// neither panic nor touch those messages.
func TestWarmAtOnce(t *testing.T) {
	files := &pb.Files{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 300 {
				warm([]proto.Message{files, &pb.ThreadState{}})
			}
		})
	}
	wg.Wait()
	if !proto.Equal(files, &pb.Files{}) {
		t.Errorf("warm changed a shared record: %v", files)
	}
}
