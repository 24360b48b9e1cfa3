package pages

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/sys"
)

// run is a range of pages to dump, all inside vmas[vma].
type run struct {
	start  uint64
	pages  uint32
	vma    uint32
	shared bool // not mapped exclusively: read without pinning (sharing.go)
}

func (r run) end() uint64 { return r.start + uint64(r.pages)*image.PageSize }

// The pages of a private mapping that belong in the image: present or
// swapped out, not the shared zero page, and anonymous. Anonymous VMAs hold
// nothing else, and asking for PAGE_IS_FILE makes the kernel look up every
// page (3x the time of the walk), so only private file mappings ask.
// PAGE_IS_HUGE is returned to mark VMAs that had transparent huge pages.
var (
	anonScan = sys.PagemapScan{
		Mask:     sys.PageIsPFNZero,
		Inverted: sys.PageIsPFNZero,
		AnyOf:    sys.PageIsPresent | sys.PageIsSwapped,
		Return:   sys.PageIsHuge,
	}
	filePrivateScan = sys.PagemapScan{
		Mask:     sys.PageIsFile | sys.PageIsPFNZero,
		Inverted: sys.PageIsFile | sys.PageIsPFNZero,
		AnyOf:    sys.PageIsPresent | sys.PageIsSwapped,
		Return:   sys.PageIsHuge,
	}
)

// scanner finds the pages of a process to dump.
type scanner struct {
	pid  int
	pm   *sys.Pagemap
	vmas []vma
	vec  []sys.PageRegion
	// objects: what earlier processes of the dump dumped of shared memory
	// objects (objects.go); nil: dump all.
	objects sharedObjects
}

// maxRunLen keeps a run's page count in a uint32 (and is far above any frame).
const maxRunPages = 1 << 30

// each calls emit with the runs of every VMA to dump, in address order.
func (s *scanner) each(emit func(run) error) error {
	for i := 0; i < len(s.vmas); {
		switch s.vmas[i].scan {
		case scanNone:
			i++
		case scanShared:
			if err := s.shared(i, emit); err != nil {
				return err
			}
			i++
		case scanAnon, scanFilePrivate:
			// One walk over neighbouring VMAs of a kind: the walk skips the
			// holes between them, and 10,000 small mappings cost a few
			// ioctls, not 10,000.
			j := i + 1
			for j < len(s.vmas) && s.vmas[j].scan == s.vmas[i].scan {
				j++
			}
			if err := s.private(i, j, emit); err != nil {
				return err
			}
			i = j
		}
	}
	return nil
}

// private scans vmas[i:j] with one PAGEMAP_SCAN walk and splits the regions
// at VMA boundaries.
func (s *scanner) private(i, j int, emit func(run) error) error {
	q := anonScan
	if s.vmas[i].scan == scanFilePrivate {
		q = filePrivateScan
	}
	q.Start, q.End = s.vmas[i].m.Start, s.vmas[j-1].m.End
	k := i          // the VMA the next region starts in
	var done uint64 // end of what was emitted: regions are in address order
	for q.Start < q.End {
		regs, walkEnd, err := s.pm.Scan(q, s.vec)
		if err != nil {
			if errors.Is(err, sys.ErrNoPagemapScan) {
				return err
			}
			return fmt.Errorf("pid %d: %w", s.pid, err)
		}
		for _, r := range regs {
			r.Start = max(r.Start, done)
			for r.Start < r.End {
				for k < j && s.vmas[k].m.End <= r.Start {
					k++
				}
				if k == j {
					return fmt.Errorf("pid %d: PAGEMAP_SCAN returned %#x-%#x outside the scanned VMAs", s.pid, r.Start, r.End)
				}
				v := s.vmas[k].m
				if r.Start < v.Start { // a region in a hole between VMAs cannot be; be safe
					r.Start = min(v.Start, r.End)
					continue
				}
				end := min(r.End, v.End)
				if r.Categories&sys.PageIsHuge != 0 {
					s.vmas[k].huge = true
				}
				if err := emitRange(r.Start, end, uint32(k), emit); err != nil {
					return err
				}
				r.Start = end
				done = end
			}
		}
		if walkEnd <= q.Start {
			return fmt.Errorf("pid %d: PAGEMAP_SCAN made no progress at %#x", s.pid, q.Start)
		}
		q.Start = walkEnd
	}
	return nil
}

// shared finds the pages a shared anonymous VMA's shmem object holds: its
// data ranges, not its page table entries, since pages of shmem can be in
// the object without being mapped here (MADV_DONTNEED, reclaim, swap);
// those of another process of the dump dumped already left out
// (sharedObjects).
func (s *scanner) shared(i int, emit func(run) error) error {
	m := s.vmas[i].m
	f, err := unix.Open(fmt.Sprintf("/proc/%d/map_files/%x-%x", s.pid, m.Start, m.End), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		// Without map_files (no CAP_SYS_ADMIN), what is mapped here is the best we know.
		q := sys.PagemapScan{Start: m.Start, End: m.End, AnyOf: sys.PageIsPresent | sys.PageIsSwapped}
		for q.Start < q.End {
			regs, walkEnd, err := s.pm.Scan(q, s.vec)
			if err != nil {
				return fmt.Errorf("pid %d: %w", s.pid, err)
			}
			for _, r := range regs {
				if err := emitRange(max(r.Start, m.Start), min(r.End, m.End), uint32(i), emit); err != nil {
					return err
				}
			}
			if walkEnd <= q.Start {
				return fmt.Errorf("pid %d: PAGEMAP_SCAN made no progress at %#x", s.pid, q.Start)
			}
			q.Start = walkEnd
		}
		return nil
	}
	defer unix.Close(f)
	lo, hi := int64(m.Offset), int64(m.Offset+m.Len())
	parts := [][2]int64{{lo, hi}}
	var k objectKey
	k.dev, k.inode = s.vmas[i].object()
	if s.objects != nil && k.inode != 0 {
		parts = s.objects.missing(k, s.pid, i, lo, hi)
		s.objects.claim(k, s.pid, i, lo, hi)
	}
	for _, part := range parts {
		if err := s.sharedData(f, i, lo, part[0], part[1], emit); err != nil {
			return err
		}
	}
	return nil
}

// sharedData emits the data ranges in [from, hi) of the object open as f,
// which VMA i maps from its offset lo.
func (s *scanner) sharedData(f, i int, lo, from, hi int64, emit func(run) error) error {
	m := s.vmas[i].m
	for off := from; off < hi; {
		data, err := unix.Seek(f, off, unix.SEEK_DATA)
		if err == unix.ENXIO || (err == nil && data >= hi) {
			break
		}
		if err != nil {
			return fmt.Errorf("pid %d vma %x-%x: SEEK_DATA: %w", s.pid, m.Start, m.End, err)
		}
		hole, err := unix.Seek(f, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("pid %d vma %x-%x: SEEK_HOLE: %w", s.pid, m.Start, m.End, err)
		}
		hole = min(hole, hi)
		data &^= image.PageSize - 1
		hole = (hole + image.PageSize - 1) &^ (image.PageSize - 1)
		if err := emitRange(m.Start+uint64(data-lo), m.Start+uint64(hole-lo), uint32(i), emit); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

func emitRange(start, end uint64, vma uint32, emit func(run) error) error {
	for start < end {
		n := min((end-start)/image.PageSize, maxRunPages)
		if n == 0 {
			return nil
		}
		if err := emit(run{start: start, pages: uint32(n), vma: vma}); err != nil {
			return err
		}
		start += n * image.PageSize
	}
	return nil
}
