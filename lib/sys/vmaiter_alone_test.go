package sys_test

import (
	"errors"
	"os"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"crpipe/lib/internal/testprog"
	"crpipe/lib/sys"
)

func vmaIter(t *testing.T) *sys.VmaIter {
	t.Helper()
	it, err := sys.NewVmaIter()
	if errors.Is(err, sys.ErrNoVmaIter) {
		t.Skipf("no BPF VMA iterator on this machine: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { it.Close() })
	return it
}

// TestVmaAloneSplit: fresh anonymous memory this process touched is
// alone; split in three by mprotect, its parts share one anon_vma and
// none is.
func TestVmaAloneSplit(t *testing.T) {
	it := vmaIter(t)
	const page = 4096
	// PROT_NONE pages on both sides keep it from merging with a neighbour.
	g, err := unix.Mmap(-1, 0, 18*page, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(g)
	m := g[page : 17*page]
	if err := unix.Mprotect(m, unix.PROT_READ|unix.PROT_WRITE); err != nil {
		t.Fatal(err)
	}
	for i := range m {
		m[i] = 1
	}
	start := uint64(uintptr(unsafe.Pointer(&m[0])))
	alone := func() map[uint64]bool {
		vmas, err := it.Read(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		got := map[uint64]bool{}
		for _, v := range vmas {
			if v.Start >= start && v.End <= start+uint64(len(m)) {
				got[v.Start] = v.Alone
			}
		}
		return got
	}
	if got := alone(); !got[start] {
		t.Fatalf("a fresh mapping touched by this process alone: %v, want alone", got)
	}
	if err := unix.Mprotect(m[4*page:8*page], unix.PROT_READ); err != nil {
		t.Fatal(err)
	}
	got := alone()
	if len(got) != 3 {
		t.Fatalf("split in three, the iterator lists %d parts: %v", len(got), got)
	}
	for s, a := range got {
		if a {
			t.Errorf("%#x: part of a split mapping said alone", s)
		}
	}
}

// TestVmaAloneForked: in a parent and the child it forked (which then
// touches memory of its own), every page of a VMA the iterator calls
// alone is mapped by that process only (pagemap), and some VMA of each
// is not alone because it shares pages since fork.
func TestVmaAloneForked(t *testing.T) {
	it := vmaIter(t)
	p := testprog.Start(t, "child", "1")
	// The child touches its MiB while the parent says it is ready.
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range []int{p.Pid, p.Child} {
		for {
			alonePages, sharedVmas := checkAlone(t, it, pid)
			if sharedVmas == 0 {
				t.Errorf("pid %d: no VMA shares a page since fork", pid)
			}
			if pid == p.Pid || alonePages >= 256 || t.Failed() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pid %d: %d pages in VMAs alone, want the 256 it touched after fork at least", pid, alonePages)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// checkAlone fails t where a VMA of pid said alone has a page mapped
// elsewhere too, and counts the pages in VMAs alone and the VMAs that
// share some.
func checkAlone(t *testing.T, it *sys.VmaIter, pid int) (alonePages, sharedVmas int) {
	vmas, err := it.Read(pid)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := sys.OpenPagemap(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	for _, v := range vmas {
		es := make([]uint64, (v.End-v.Start)/4096)
		if err := pm.Entries(v.Start, es); err != nil {
			t.Fatal(err)
		}
		var present, shared int
		for _, e := range es {
			if e&sys.PagemapPresent != 0 && e&sys.PagemapFile == 0 {
				present++
				if e&sys.PagemapExclusive == 0 {
					shared++
				}
			}
		}
		if v.Alone && shared > 0 {
			t.Errorf("pid %d: %#x-%#x said alone, %d of its %d anonymous pages are mapped elsewhere too", pid, v.Start, v.End, shared, present)
		}
		if v.Alone {
			alonePages += present
		}
		if shared > 0 {
			sharedVmas++
		}
	}
	t.Logf("pid %d: %d VMAs, %d pages in those alone, %d VMAs sharing pages", pid, len(vmas), alonePages, sharedVmas)
	return alonePages, sharedVmas
}
