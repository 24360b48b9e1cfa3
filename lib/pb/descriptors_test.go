package pb

import (
	"sync"
	"testing"
)

// builtAtStart: whether the descriptors were built as the package started
// (the init functions of test files run after the package's own).
var builtAtStart bool

func init() {
	builtAtStart = File_cr_proto != nil || File_files_proto != nil || File_state_proto != nil
}

// TestDescriptorsBuiltAtFirstUse: nothing is built as the package starts;
// the first use of a descriptor, from several goroutines at once, builds
// every file's.
func TestDescriptorsBuiltAtFirstUse(t *testing.T) {
	if builtAtStart {
		t.Fatal("the descriptors were built as the package started")
	}
	var wg sync.WaitGroup
	names := make([]string, 4)
	for i := range names {
		wg.Go(func() {
			switch i {
			case 0:
				names[i] = FdKind_FD_PIPE.String()
			case 1:
				names[i] = string((&Inventory{}).ProtoReflect().Descriptor().FullName())
			case 2:
				names[i] = string(VmaKind(0).Type().Descriptor().FullName())
			case 3:
				names[i] = (&Files{Pid: 7}).String()
			}
		})
	}
	wg.Wait()
	want := []string{"FD_PIPE", "cr.v1.Inventory", "cr.v1.VmaKind", "pid:7"}
	for i := range names {
		if names[i] != want[i] {
			t.Errorf("use %d gave %q, want %q", i, names[i], want[i])
		}
	}
	for _, f := range []any{File_cr_proto, File_files_proto, File_ghost_proto, File_locks_proto, File_state_proto, File_tcp_proto} {
		if f == nil {
			t.Errorf("a file's descriptor is still not built")
		}
	}
}
