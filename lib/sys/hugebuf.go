package sys

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// HugePage is the size of an x86-64 transparent huge page.
const HugePage = 2 << 20

// MapHugeAligned maps size bytes of private anonymous memory, outside the
// Go heap, starting at a huge page boundary, so that every whole 2 MiB of
// it can be a transparent huge page once advised (MADV_HUGEPAGE). unmap
// releases the mapping.
func MapHugeAligned(size int) (mem []byte, unmap func(), err error) {
	all, err := unix.Mmap(-1, 0, size+HugePage, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, nil, fmt.Errorf("map %d bytes: %w", size, err)
	}
	skip := int((HugePage - uintptr(unsafe.Pointer(&all[0]))%HugePage) % HugePage)
	return all[skip : skip+size : skip+size], func() { unix.Munmap(all) }, nil
}

// WarmHuge asks for transparent huge pages in mem (from MapHugeAligned)
// and faults them in (MADV_POPULATE_WRITE) without writing anything. On
// this guest a huge page of a block given back to the host costs ~6 ms
// to fault in (its zeroing faults on the host) and a fresh 4 KiB page
// ~22 µs at its first write, against ~2 µs a page written in a huge page
// already in (doc/performance.md 85): memory a command will need soon is
// best warmed while it waits for something else. Best effort.
func WarmHuge(mem []byte) {
	if len(mem) == 0 {
		return
	}
	unix.Madvise(mem, unix.MADV_HUGEPAGE)
	unix.Madvise(mem, unix.MADV_POPULATE_WRITE)
}
