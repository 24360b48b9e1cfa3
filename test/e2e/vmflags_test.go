package e2e

import (
	"errors"
	"testing"

	"crpipe/lib/proc"
	"crpipe/lib/sys"
)

// vsyscallStart is the one VMA smaps lists that is not in a process's
// own address space (the gate VMA), which the BPF VMA iterator skips.
const vsyscallStart = 0xffffffffff600000

// TestFastVmFlags: the VmFlags read through the BPF VMA iterator
// (proc.FastVmFlags, which cr-pages --lend asks first for a lending
// process whose parent is not in the dump) are smaps' own, for every
// mapping of programs of many kinds: mlock, madvise, MAP_DROPPABLE and
// mseal advice, System V and shared memory, memfds, NUMA policies,
// threads' stacks. A process with a flag the check never saw set (a
// mapping registered with userfaultfd) is left to smaps.
func TestFastVmFlags(t *testing.T) {
	fast, err := proc.NewFastVmFlags()
	switch {
	case errors.Is(err, sys.ErrNoVmaIter):
		t.Skipf("no BPF VMA iterator on this machine: %v", err)
	case errors.Is(err, proc.ErrFlagsDisagree):
		// cr-pages reads smaps then, as without the iterator.
		t.Skipf("the iterator's bits are not where this build expects them here: %v", err)
	case err != nil:
		t.Fatal(err)
	}
	defer fast.Close()
	for _, c := range []struct {
		prog     string
		args     []string
		fallback bool
	}{
		{"vmadvice", nil, false},
		{"vmadvice", []string{"big"}, false},
		{"vmadvice", []string{"sysv"}, false},
		{"vmadvice", []string{"uffd"}, true},
		{"memfd_map", nil, false},
		{"mlockall", []string{"onfault"}, false},
		{"numapol", nil, false},
		{"shm", nil, false},
		{"threadstate", nil, false},
	} {
		t.Run(c.prog+fmtArgs(c.args), func(t *testing.T) {
			p := startStateProg(t, c.prog, c.args...)
			defer p.terminate(0)
			compareVmFlags(t, fast, p.pid, c.fallback)
		})
	}
	// More VMAs than one read of the iterator takes (it went round and
	// round in the kernel's 6.18: sys.VmaIter.Read).
	t.Run("benchload/maps", func(t *testing.T) {
		compareVmFlags(t, fast, startBenchload(t, "maps", "10000").pid, false)
	})
}

// compareVmFlags checks fast reads pid's VmFlags as smaps shows them, or,
// with fallback, leaves pid to smaps.
func compareVmFlags(t *testing.T, fast *proc.FastVmFlags, pid int, fallback bool) {
	t.Helper()
	got, ok := fast.Read(pid)
	shown, err := proc.ReadVmFlags(pid)
	if err != nil {
		t.Fatal(err)
	}
	if fallback {
		if ok {
			t.Fatalf("the iterator answered for pid %d, whose flags it cannot all tell", pid)
		}
		return
	}
	if !ok {
		t.Fatalf("the iterator left pid %d to smaps", pid)
	}
	byStart := map[uint64]proc.VmFlags{}
	for _, g := range got {
		byStart[g.Start] = g.VmFlags
	}
	n := 0
	for _, s := range shown {
		if s.Start == vsyscallStart {
			continue
		}
		n++
		f, found := byStart[s.Start]
		if !found {
			t.Errorf("VMA at %#x: smaps lists it, the iterator does not", s.Start)
		} else if f != s.VmFlags {
			t.Errorf("VMA at %#x: the iterator says %q, smaps %q", s.Start, f, s.VmFlags)
		}
	}
	if n != len(got) {
		t.Errorf("the iterator lists %d VMAs, smaps %d", len(got), n)
	}
}

func fmtArgs(args []string) string {
	s := ""
	for _, a := range args {
		s += "/" + a
	}
	return s
}
