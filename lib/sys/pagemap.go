package sys

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PAGEMAP_SCAN (Linux 6.7, include/uapi/linux/fs.h) walks a range of a
// process's page tables in the kernel and returns runs of pages by category,
// so a dump never looks at unpopulated or zero-pfn pages one by one.

// Page categories of struct page_region and the masks of struct pm_scan_arg.
const (
	PageIsWPAllowed = 1 << 0
	PageIsWritten   = 1 << 1
	PageIsFile      = 1 << 2 // not an anonymous page (page cache, shmem)
	PageIsPresent   = 1 << 3
	PageIsSwapped   = 1 << 4
	PageIsPFNZero   = 1 << 5 // the shared zero page: a read, never written, anonymous page
	PageIsHuge      = 1 << 6 // mapped by a PMD (THP) or hugetlb
	PageIsSoftDirty = 1 << 7
)

// Flags of struct pm_scan_arg.
const (
	PMScanWPMatching   = 1 << 0
	PMScanCheckWPAsync = 1 << 1
)

// PageRegion is struct page_region: [Start, End) with the same categories.
type PageRegion struct {
	Start      uint64
	End        uint64
	Categories uint64
}

// pmScanArg is struct pm_scan_arg.
type pmScanArg struct {
	Size              uint64
	Flags             uint64
	Start             uint64
	End               uint64
	WalkEnd           uint64
	Vec               uint64
	VecLen            uint64
	MaxPages          uint64
	CategoryInverted  uint64
	CategoryMask      uint64
	CategoryAnyofMask uint64
	ReturnMask        uint64
}

// _IOWR('f', 16, struct pm_scan_arg)
const pagemapScan = 3<<30 | uint64(unsafe.Sizeof(pmScanArg{}))<<16 | 'f'<<8 | 16

// ErrNoPagemapScan is returned when the kernel lacks PAGEMAP_SCAN.
var ErrNoPagemapScan = errors.New("PAGEMAP_SCAN: needs Linux 6.7")

// PagemapScan selects pages of [Start, End) for one ioctl. A page matches when
// its categories, XORed with Inverted, contain all of Mask and (when AnyOf is
// not zero) at least one of AnyOf. Returned regions carry the categories of
// Return only; adjacent pages with equal returned categories are merged.
type PagemapScan struct {
	Start, End uint64
	Inverted   uint64
	Mask       uint64
	AnyOf      uint64
	Return     uint64
	Flags      uint64
	MaxPages   uint64 // 0: no limit
}

// Pagemap is an open /proc/PID/pagemap.
type Pagemap struct {
	f *os.File
}

// OpenPagemap opens /proc/PID/pagemap (needs PTRACE_MODE_READ on pid).
func OpenPagemap(pid int) (*Pagemap, error) {
	f, err := Open(fmt.Sprintf("/proc/%d/pagemap", pid), unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	return &Pagemap{f: f}, nil
}

// Close closes the pagemap file.
func (p *Pagemap) Close() error { return p.f.Close() }

// scanChunk is the kernel's own region buffer (PAGEMAP_WALK_SIZE >>
// PAGE_SHIFT = 512 on x86_64). The kernel reports walk_end only from the
// last pass that filled that buffer: when a call returns more regions than
// that and then completes its walk, walk_end is stale (seen on 6.18), and a
// caller continuing from it would get regions twice. With at most 512
// regions per call the buffer fills at most once, and only when the call
// stops early, so walk_end is exact.
const scanChunk = 512

// Scan fills vec with matching regions from s.Start on. It returns the
// regions found and where the walk stopped: when walkEnd < s.End, vec was
// full (or MaxPages reached) and the caller continues from walkEnd.
// ErrNoPagemapScan means the kernel does not know the ioctl.
func (p *Pagemap) Scan(s PagemapScan, vec []PageRegion) (regions []PageRegion, walkEnd uint64, err error) {
	if len(vec) == 0 {
		return nil, s.Start, errors.New("PAGEMAP_SCAN: empty region vector")
	}
	vec = vec[:min(len(vec), scanChunk)]
	arg := pmScanArg{
		Size:              uint64(unsafe.Sizeof(pmScanArg{})),
		Flags:             s.Flags,
		Start:             s.Start,
		End:               s.End,
		Vec:               uint64(uintptr(unsafe.Pointer(&vec[0]))),
		VecLen:            uint64(len(vec)),
		MaxPages:          s.MaxPages,
		CategoryInverted:  s.Inverted,
		CategoryMask:      s.Mask,
		CategoryAnyofMask: s.AnyOf,
		ReturnMask:        s.Return,
	}
	// The kernel writes into vec through an address hidden in arg.
	var pin runtime.Pinner
	pin.Pin(&vec[0])
	defer pin.Unpin()
	for {
		n, _, e := unix.Syscall(unix.SYS_IOCTL, p.f.Fd(), uintptr(pagemapScan), uintptr(unsafe.Pointer(&arg)))
		runtime.KeepAlive(p.f)
		switch e {
		case 0:
			if int(n) < len(vec) && s.MaxPages == 0 {
				// Not stopped early: the walk reached End.
				arg.WalkEnd = s.End
			}
			return vec[:n], arg.WalkEnd, nil
		case unix.EINTR:
			continue
		case unix.ENOTTY: // a /proc file without the ioctl
			return nil, 0, ErrNoPagemapScan
		default:
			return nil, 0, fmt.Errorf("PAGEMAP_SCAN %#x-%#x: %w", s.Start, s.End, e)
		}
	}
}

// ProbePagemapScan reports whether this kernel has PAGEMAP_SCAN, using the
// caller's own pagemap.
func ProbePagemapScan() error {
	p, err := OpenPagemap(os.Getpid())
	if err != nil {
		return fmt.Errorf("PAGEMAP_SCAN probe: %w", err)
	}
	defer p.Close()
	var vec [1]PageRegion
	_, _, err = p.Scan(PagemapScan{Start: 0, End: 4096, AnyOf: PageIsPresent, Return: PageIsPresent}, vec[:])
	return err
}

// Pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const (
	PagemapPresent   = 1 << 63
	PagemapSwapped   = 1 << 62
	PagemapFile      = 1 << 61   // a page of a file, or shared anonymous memory
	PagemapExclusive = 1 << 56   // mapped by this process only
	PagemapPFNMask   = 1<<55 - 1 // PFN when present (root only), swap type and offset when swapped
)

// Entries reads the pagemap entries of the pages from addr on into out,
// one per page.
func (p *Pagemap) Entries(addr uint64, out []uint64) error {
	if len(out) == 0 {
		return nil
	}
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&out[0])), len(out)*8)
	off := int64(addr / 4096 * 8)
	for len(buf) > 0 {
		n, err := p.f.ReadAt(buf, off)
		if n == 0 && err != nil {
			return fmt.Errorf("pagemap %#x: %w", addr, err)
		}
		buf, off = buf[n:], off+int64(n)
	}
	return nil
}
