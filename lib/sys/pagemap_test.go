package sys

import (
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestPagemapScan(t *testing.T) {
	if err := ProbePagemapScan(); err != nil {
		t.Skipf("kernel lacks it: %v", err)
	}
	const pages = 3000
	mem, err := unix.Mmap(-1, 0, pages*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	// Every third page written, every third+1 only read (the zero page):
	// 1000 one-page regions, more than the kernel's 512-entry buffer.
	var sink byte
	for i := 0; i < pages; i += 3 {
		mem[i*4096] = 1
		sink += mem[(i+1)*4096]
	}
	_ = sink
	p, err := OpenPagemap(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	base := uint64(uintptr(unsafe.Pointer(&mem[0])))
	for _, vecLen := range []int{1, 7, 512, 4096} {
		q := PagemapScan{Start: base, End: base + pages*4096, Mask: PageIsPFNZero, Inverted: PageIsPFNZero, AnyOf: PageIsPresent | PageIsSwapped}
		vec := make([]PageRegion, vecLen)
		var got []uint64
		calls := 0
		for q.Start < q.End {
			regs, walkEnd, err := p.Scan(q, vec)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range regs {
				for a := r.Start; a < r.End; a += 4096 {
					got = append(got, (a-base)/4096)
				}
			}
			if walkEnd <= q.Start {
				t.Fatalf("no progress at %#x", q.Start)
			}
			q.Start = walkEnd
			calls++
		}
		if len(got) != pages/3 {
			t.Fatalf("vec %d: %d pages found, want %d", vecLen, len(got), pages/3)
		}
		for i, pg := range got {
			if pg != uint64(3*i) {
				t.Fatalf("vec %d: page %d found as the %dth, want page %d", vecLen, pg, i, 3*i)
			}
		}
		t.Logf("vec %d: %d calls", vecLen, calls)
	}
}
