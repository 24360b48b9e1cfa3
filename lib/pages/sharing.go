package pages

import (
	"sync"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// Private pages shared copy-on-write (after fork) need care twice:
//
//   - Reading one with process_vm_readv breaks the sharing: the kernel pins
//     the pages it copies from, and pinning a shared anonymous page gives
//     the pinning process a copy of its own (GUP unsharing, Linux 5.19+). A
//     dump of a tree that shares 256 MiB would leave it using 256 MiB more.
//     Pages that are not mapped exclusively (pagemap bit 56) are read
//     through /proc/PID/mem instead, which does not pin.
//   - A page a process shares with its parent in the dump (the same page
//     frame or swap slot at the same address, inside VMAs that map the same
//     thing) is left out of the image and listed in Vma.inherited: the
//     restore forks the process from its restored parent, so the pages are
//     shared again instead of copied once per process.
//
// Both need a pagemap read of every page (20 ms per GiB), which is skipped
// where it cannot find anything:
//   - in a VMA of which smaps counts no page mapped twice and none swapped
//     out, or whose anon_vma links it to no other VMA (proc.FastVmFlags):
//     no page of it is shared with anyone (vma.mayShare false);
//   - in runs to lend (lend.go), unless the process may inherit them from
//     its parent: vmsplice(2) takes references to the pages without
//     pinning them, so a page shared since fork stays shared.
//
// sharing splits the runs of one process accordingly.
type sharing struct {
	child, parent *sys.Pagemap
	vmas          []vma
	from          []*vma // per child VMA: the parent VMA it inherits from, or nil (nil: no parent)
	recording     bool   // the first walk records the ranges; later walks only filter
	lending       bool   // the process is to lend its pages: lendable runs pass whole
	ce, pe        []uint64
	bufs          *[]uint64 // ce and pe, from sharingBufs until close
	// inherited: per child VMA, the ranges it shares with the parent
	// (Vma.inherited), recorded by the first walk.
	inherited map[uint32][]*pb.PageRange
}

// sharingChunk pages of pagemap entries are compared at a time.
const sharingChunk = 8192

// sharingBufs hold the entries of a chunk of the child's and the parent's
// pages, taken by a process's first split and given back at its close:
// 128 KiB made anew for every process were a third of what a dump of 64
// processes of 16 MiB allocated, and most of its collections
// (doc/performance.md, 74).
var sharingBufs = sync.Pool{New: func() any {
	b := make([]uint64, 2*sharingChunk)
	return &b
}}

// parentVmas keeps the mappings of the parents in a dump, as their own
// prepare classified them, VmFlags applied, for their children: read once
// for all of them (frozen, a parent's mappings stay: the parent of 99
// children was 15% of cr-pages' CPU, read 99 times), and with the same
// flags as the child's (CanInherit compares MAP_NORESERVE: mappings read
// again without the VmFlags missed every page a jemalloc child shares).
type parentVmas struct {
	isParent map[int]bool
	of       map[int][]vma
}

// newParentVmas keeps the mappings of the processes of procs that are the
// parent of another; inDump holds the pids of procs.
func newParentVmas(procs []*pb.Process, inDump map[uint32]bool) parentVmas {
	pv := parentVmas{isParent: map[int]bool{}, of: map[int][]vma{}}
	for _, p := range procs {
		if inDump[p.Ppid] {
			pv.isParent[int(p.Ppid)] = true
		}
	}
	return pv
}

// keep records pid's mappings if it is a parent.
func (pv parentVmas) keep(pid int, vmas []vma) {
	if pv.isParent[pid] {
		pv.of[pid] = vmas
		stage.ReserveHeap(int64(len(vmas)) * stage.VmaHeap)
	}
}

// get returns pid's mappings; nil if it was not prepared (a zombie has
// none), and then nothing is inherited from it.
func (pv parentVmas) get(pid int) []vma { return pv.of[pid] }

// newSharing prepares the split of pid's runs; parent, when not 0, is its
// parent in the same dump, whose mappings come from parents.
func newSharing(pid, parent int, vmas []vma, child *sys.Pagemap, lending bool, parents parentVmas) (*sharing, error) {
	in := &sharing{child: child, vmas: vmas, recording: true, lending: lending, inherited: map[uint32][]*pb.PageRange{}}
	if parent == 0 {
		return in, nil
	}
	in.from = make([]*vma, len(vmas))
	// Both in address order: the one parent VMA that could hold a VMA is
	// the first that ends after its start. (Comparing every pair took
	// 0.4 s for a parent and child with 16,000 mappings each.)
	pvmas := parents.get(parent)
	found := false
	j := 0
	var c, p pb.Vma
	for i := range vmas {
		for j < len(pvmas) && pvmas[j].m.End <= vmas[i].m.Start {
			j++
		}
		if j == len(pvmas) {
			break
		}
		vmas[i].fill(&c, nil)
		pvmas[j].fill(&p, nil)
		if c.CanInherit(&p) {
			in.from[i], found = &pvmas[j], true
		}
	}
	if found {
		var err error
		if in.parent, err = sys.OpenPagemap(parent); err != nil {
			return nil, procErr(parent, err)
		}
	}
	return in, nil
}

func (in *sharing) close() {
	if in.parent != nil {
		in.parent.Close()
	}
	if in.bufs != nil {
		sharingBufs.Put(in.bufs)
		in.bufs, in.ce, in.pe = nil, nil, nil
	}
}

// each wraps a walk over runs: runs pass with their inherited pages taken
// out (and, on the first walk, recorded in their VMA) and their shared
// pages marked.
func (in *sharing) each(walk func(func(run) error) error) func(func(run) error) error {
	return func(emit func(run) error) error {
		err := walk(func(r run) error { return in.split(r, emit) })
		in.recording = false
		return err
	}
}

// split emits the parts of r that are not inherited, each marked shared
// or not.
func (in *sharing) split(r run, emit func(run) error) error {
	out := run{vma: r.vma}
	flush := func() error {
		if out.pages == 0 {
			return nil
		}
		err := emit(out)
		out.pages = 0
		return err
	}
	if !in.vmas[r.vma].mayShare {
		return emit(r)
	}
	inherits := in.from != nil && in.from[r.vma] != nil
	if !inherits && in.lending && lendable(&in.vmas[r.vma], r) {
		return emit(r)
	}
	if in.bufs == nil {
		// Only now: most processes never get here.
		in.bufs = sharingBufs.Get().(*[]uint64)
		in.ce, in.pe = (*in.bufs)[:sharingChunk], (*in.bufs)[sharingChunk:]
	}
	for done := uint32(0); done < r.pages; {
		n := min(r.pages-done, sharingChunk)
		addr := r.start + uint64(done)*image.PageSize
		if err := in.child.Entries(addr, in.ce[:n]); err != nil {
			return err
		}
		// A page the parent maps too is not mapped exclusively: where all
		// the child's are, the parent's entries need not be read.
		chunkInherits := inherits && !allExclusive(in.ce[:n])
		if chunkInherits {
			if err := in.parent.Entries(addr, in.pe[:n]); err != nil {
				return err
			}
		}
		for i := range n {
			a := addr + uint64(i)*image.PageSize
			if chunkInherits && sharedEntry(in.ce[i], in.pe[i]) {
				if err := flush(); err != nil {
					return err
				}
				if in.recording {
					in.record(r.vma, a)
				}
				continue
			}
			shared := in.ce[i]&sys.PagemapExclusive == 0
			if out.pages > 0 && (out.shared != shared || out.end() != a) {
				if err := flush(); err != nil {
					return err
				}
			}
			if out.pages == 0 {
				out.start, out.shared = a, shared
			}
			out.pages++
		}
		done += n
	}
	return flush()
}

// allExclusive: every page of es that is there at all is present and
// mapped by this process alone (pagemap sets the bit for present pages
// only: a swapped one may be shared).
func allExclusive(es []uint64) bool {
	for _, e := range es {
		if e&(sys.PagemapPresent|sys.PagemapSwapped) != 0 && e&(sys.PagemapPresent|sys.PagemapExclusive) != sys.PagemapPresent|sys.PagemapExclusive {
			return false
		}
	}
	return true
}

// sharedEntry: the same present page frame, or the same swap slot.
func sharedEntry(c, p uint64) bool {
	const kind = sys.PagemapPresent | sys.PagemapSwapped
	if c&kind == 0 || c&kind != p&kind {
		return false
	}
	frame := c & sys.PagemapPFNMask
	return frame != 0 && frame == p&sys.PagemapPFNMask
}

// record adds the page at a to its VMA's inherited ranges.
func (in *sharing) record(i uint32, a uint64) {
	rs := in.inherited[i]
	if n := len(rs); n > 0 && rs[n-1].End == a {
		rs[n-1].End += image.PageSize
		return
	}
	in.inherited[i] = append(rs, &pb.PageRange{Start: a, End: a + image.PageSize})
}
