package pages

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// Tunables. A batch is one buffer filled by process_vm_readv calls with up
// to iovMax remote ranges each, then written as page frames while the next
// buffers fill.
const (
	bufSize = image.MaxPagesPayload - image.PagesPreamble // one full page frame
	// maxCopiers bounds the goroutines copying pages at once (one per
	// core): each holds a 4 MiB buffer, and peak RSS must stay small.
	maxCopiers = 3
	iovMax     = 1024 // UIO_MAXIOV
	// batchMaxPieces bounds the ranges of a batch: a batch of one-page
	// runs (a process of many small mappings) fills a quarter of its
	// buffer, not all of it, and the buffers of such a dump stay a
	// quarter resident (60,000 one-page mappings: cr-pages 40-42 MB ->
	// 36-39, 10,000: 25 -> 19 MB; doc/performance.md, 37). Long runs fill
	// a buffer in a few pieces, as before.
	batchMaxPieces = 256
	// maxStoredRuns bounds the runs the first scan keeps (24 bytes each);
	// a process with more scattered pages is scanned a second time while
	// streaming instead.
	maxStoredRuns = 1 << 18
	vecLen        = 512 // page regions per PAGEMAP_SCAN call (see sys.Pagemap.Scan)
)

// Stats describe one process's dump.
type Stats struct {
	Vmas    int
	Pages   uint64 // found to dump (Mm.pages_total)
	Zero    uint64 // of those, pages of zeros left out
	Runs    int
	Frames  int
	Elapsed time.Duration
}

// DumpProcess writes the Mm record of p and the page frames that follow it.
func DumpProcess(w *image.Writer, p *pb.Process) (Stats, error) {
	var st Stats
	err := DumpProcesses(w, []*pb.Process{p}, func(_ *pb.Process, s Stats) { st = s })
	return st, err
}

// DumpProcesses writes, for each process in order, its Mm record and the
// page frames that follow it. One pipeline serves them all: while one
// process's frames are written, the next one is scanned and its pages
// copied, so a tree of many small processes dumps about as fast as one
// large process. done, when not nil, is called for each process once its
// last frame is written.
func DumpProcesses(w *image.Writer, procs []*pb.Process, done func(*pb.Process, Stats)) error {
	return stream(w, procs, newGhosts(defaultOptions, nil), nil, nil, done)
}

// prepared is a process ready to stream: its Mm record, and the runs of
// pages to read (source).
type prepared struct {
	p      *pb.Process
	pid    int
	mm     []byte // the Mm record, encoded (encodeMm)
	vmas   []vma
	source func(func(run) error) error
	stats  Stats
	t0     time.Time
	close  func()
}

// prepare reads what the Mm record says about p and finds its pages.
// parent, when not 0, is p's parent in the same dump: pages p still shares
// with it since fork are left out (inherit.go). lending: p is to lend its
// pages, so the runs to lend need not be split by sharing (sharing.go).
// fast: where to read the VmFlags from first (readVmFlags).
// parents keeps the parents' mappings from one process to the next,
// objects what they dumped of shared memory.
func prepare(p *pb.Process, parent int, lending bool, parents parentVmas, objects sharedObjects, fast *proc.FastVmFlags) (_ *prepared, err error) {
	t0 := time.Now()
	pid := int(p.Pid)
	var stats Stats
	if pid <= 0 {
		return nil, fmt.Errorf("process record with pid %d", pid)
	}
	st, err := proc.ReadMmStat(pid)
	if err != nil {
		return nil, procErr(pid, err)
	}
	if p.StartTime != 0 && st.StartTime != p.StartTime {
		return nil, stage.Hint(fmt.Errorf("pid %d: start time %d, the stream says %d: it is not the process that was frozen", pid, st.StartTime, p.StartTime),
			"the process exited and its PID was reused; checkpoint again")
	}
	maps, err := proc.ReadMaps(pid)
	if err != nil {
		return nil, procErr(pid, err)
	}
	// Room in the heap for this process's mappings until its pages are
	// read (a parent's stay: parentVmas).
	reserved := int64(len(maps)) * stage.VmaHeap
	stage.ReserveHeap(reserved)
	release := func() { stage.ReserveHeap(-reserved); reserved = 0 }
	defer func() {
		if err != nil {
			release()
		}
	}()
	flags := readVmFlags(pid, fast)
	vmas, err := classify(pid, maps)
	if err != nil {
		return nil, err
	}
	if err := checkMemfdData(pid, vmas); err != nil {
		return nil, err
	}
	mm := &pb.Mm{
		Pid:        p.Pid,
		StartCode:  st.StartCode,
		EndCode:    st.EndCode,
		StartData:  st.StartData,
		EndData:    st.EndData,
		StartBrk:   st.StartBrk,
		Brk:        st.StartBrk,
		StartStack: st.StartStack,
		ArgStart:   st.ArgStart,
		ArgEnd:     st.ArgEnd,
		EnvStart:   st.EnvStart,
		EnvEnd:     st.EnvEnd,
	}
	// /proc does not show brk itself. The heap VMA ends at brk rounded up to
	// a page, which is brk for every allocator that grows it by pages (glibc).
	for i := range vmas {
		if vmas[i].m.Path == "[heap]" && vmas[i].m.End > mm.Brk {
			mm.Brk = vmas[i].m.End
		}
	}
	if mm.Auxv, err = proc.ReadAuxv(pid); err != nil {
		return nil, procErr(pid, err)
	}
	if mm.Exe, err = os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil {
		return nil, procErr(pid, err)
	}
	if err := applyVmFlags(pid, vmas, <-flags); err != nil {
		return nil, err
	}
	parents.keep(pid, vmas)

	pm, err := sys.OpenPagemap(pid)
	if err != nil {
		return nil, procErr(pid, err)
	}
	sc := &scanner{pid: pid, pm: pm, vmas: vmas, vec: make([]sys.PageRegion, vecLen), objects: objects}
	shared, err := newSharing(pid, parent, vmas, pm, lending, parents)
	if err != nil {
		pm.Close()
		return nil, err
	}
	each, closeAll := shared.each(sc.each), func() { shared.close(); pm.Close(); release() }

	// First pass: count (the Mm record says how many pages follow and which
	// VMAs have them) and keep the runs unless there are very many.
	// As many runs as VMAs at first: one each where most have a page or
	// two (a process of many small mappings), the slice grown otherwise.
	runs := make([]run, 0, min(len(vmas), maxStoredRuns))
	stored := true
	err = each(func(r run) error {
		stats.Runs++
		stats.Pages += uint64(r.pages)
		vmas[r.vma].hasPages = true
		if stored {
			if len(runs) == maxStoredRuns {
				runs, stored = nil, false
			} else {
				runs = append(runs, r)
			}
		}
		return nil
	})
	if errors.Is(err, sys.ErrNoPagemapScan) {
		closeAll()
		return nil, stage.Hint(err, "cr-pages reads memory guided by PAGEMAP_SCAN; run it on Linux 6.7 or later")
	}
	if err != nil {
		closeAll()
		return nil, err
	}
	// An upper bound: pages of zeros are left out while streaming.
	mm.PagesTotal = stats.Pages
	stats.Vmas = len(vmas)
	record, err := encodeMm(mm, vmas, shared.inherited)
	if err != nil {
		closeAll()
		return nil, err
	}

	source := func(emit func(run) error) error {
		for _, r := range runs {
			if err := emit(r); err != nil {
				return err
			}
		}
		return nil
	}
	if !stored {
		stage.Logf("pid %d: more than %d page runs: scanning again while streaming", pid, maxStoredRuns)
		source = each
	}
	return &prepared{p: p, pid: pid, mm: record, vmas: vmas, source: source, stats: stats, t0: t0, close: closeAll}, nil
}

// encodeMm encodes mm, whose Vmas are left empty, with the Vma records
// of vmas (and the ranges each inherits), each made only while it is
// encoded.
func encodeMm(mm *pb.Mm, vmas []vma, inherited map[uint32][]*pb.PageRange) ([]byte, error) {
	b, err := pb.MarshalMm(mm, len(vmas), func(i int, v *pb.Vma) { vmas[i].fill(v, inherited[uint32(i)]) })
	if err != nil {
		return nil, fmt.Errorf("pid %d: encode Mm: %w", mm.Pid, err)
	}
	return b, nil
}

func procErr(pid int, err error) error {
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return stage.Hint(fmt.Errorf("pid %d: process is gone: %w", pid, err), "did the process exit or get killed while frozen? checkpoint again")
	}
	if errors.Is(err, os.ErrPermission) {
		return stage.Hint(fmt.Errorf("pid %d: %w", pid, err), "cr-pages must run as root (or with CAP_SYS_PTRACE and CAP_SYS_ADMIN)")
	}
	return fmt.Errorf("pid %d: %w", pid, err)
}
