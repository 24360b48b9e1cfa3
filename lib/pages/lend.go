package pages

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"

	"crpipe/lib/image"
	"crpipe/lib/inject"
	"crpipe/lib/parasite"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// With --lend, the pages of private anonymous memory of the larger
// processes are not copied out with process_vm_readv: each such process
// lends them (inject.Lender): code run in one of its threads checksums
// them and puts the pages themselves into a pipe, and this stage passes
// them on to its output with splice. Nobody copies them until the last
// stage writes them to a file; to /dev/null, nobody even reads them but
// the checksum. The price is that the image refers to the process's
// memory until it is read, so --lend is for a dump whose processes are
// killed (or stay frozen) until the image is read to the end: cr-dump
// without --leave-running.
//
// Lending needs every thread of the tree held in ptrace and the cgroup
// thawed while this stage streams (parasite.Hold), and an injection per
// process: ~1 ms, worth it only for processes with much memory
// (lendMinAnon). The others, and memory that is shared, file-backed or
// unreadable, are copied as without --lend.
//
// Every ptrace request goes through one thread, so the writer never waits
// for one: the tree is held while the first processes are prepared, a
// process's lender starts as soon as its runs are known (start), filling
// its pipe while the writer still streams the processes before it, and
// it is stopped and taken out after its last frame behind the writer's
// back (finish); what fails there fails the dump at close.

// lendMinAnon: a process with less private anonymous memory resident
// (RssAnon) is copied, not lent: putting a lender in, and the hold of the
// tree it needs, cost more than copying less than this (64 × 16 MiB →
// /dev/null 0.229 s copied against 0.254 lent; 16 × 64 MiB the same;
// doc/performance.md, 51). CRPIPE_LEND_MIN=SIZE (8M, 1G) sets another.
const lendMinAnon = 64 << 20

// lendMinFromEnv is lendMinAnon, or the size CRPIPE_LEND_MIN gives (0:
// every process worth lending at all).
func lendMinFromEnv() (int64, error) {
	s := os.Getenv("CRPIPE_LEND_MIN")
	if s == "" {
		return lendMinAnon, nil
	}
	n, err := stage.ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("CRPIPE_LEND_MIN: %w", err)
	}
	return n, nil
}

// lendMinRun: shorter runs are copied. Each lent frame costs a few system
// calls of its own; the copiers put many short runs into one batch.
const lendMinRun = 64 << 10

// lendMaxFrame: the lender's frames are as long as the copiers' batches.
const lendMaxFrame = bufSize &^ (image.PageSize - 1)

// lenders are the page lenders of one dump, run from one locked OS thread
// (ptrace requests must come from the thread that seized the task).
type lenders struct {
	reqs chan func()
	want map[int]bool
	// The writer's: a process's frames were written (faultFailWhileLending).
	writtenFirst bool
	// On the lenders' thread only:
	held    *parasite.Held
	holdErr error
	procs   map[int]parasite.HeldProcess
	byPid   map[int]*lender
	errs    []error // of finish
}

type lender struct {
	hp parasite.HeldProcess
	s  *inject.Session
	st *inject.Stub
	l  *inject.Lender
	g  *inject.Lending // the run under way
	// The page of the lending thread's rseq area (0: none), which the
	// kernel writes whenever the thread comes back to user space.
	rseqPage uint64
}

// startLenders holds the tree for lending from the processes of procs
// worth it. It returns nil (copy everything) when there is none.
func startLenders(fr *pb.Freeze, procs []*pb.Process, min int64) (*lenders, error) {
	if !inject.LendUsable() {
		stage.Logf("--lend: this CPU has no crc32 instruction; copying")
		return nil, nil
	}
	ls := &lenders{reqs: make(chan func()), want: map[int]bool{}, procs: map[int]parasite.HeldProcess{}, byPid: map[int]*lender{}}
	for _, p := range procs {
		if hasAnon(p, min) {
			ls.want[int(p.Pid)] = true
		}
	}
	if len(ls.want) == 0 {
		return nil, nil
	}
	go func() {
		runtime.LockOSThread() // for good: the thread ends with its ptrace state
		for f := range ls.reqs {
			f()
		}
	}()
	// The first lender waits for the hold (begin), the copies do not.
	ls.async(func() { ls.holdErr = ls.hold(fr, procs) })
	return ls, nil
}

// hasAnon: p has at least min bytes of private anonymous memory resident
// (worth lending, or the BPF iterator's setup: fastMinAnon).
func hasAnon(p *pb.Process, min int64) bool {
	if p.State == "Z" {
		return false
	}
	st, err := proc.ReadStatus(int(p.Pid))
	return err == nil && int64(st.RssAnon)<<10 >= min
}

// faultFailWhileLending: CRPIPE_FAULT=pages-fails-while-lending makes the
// writer fail as it gets to the second process that lends, whose lender
// start has started or will have started (the lenders' thread takes
// requests in order) and nobody reads: cr-pages must take every lender
// out itself.
var faultFailWhileLending = os.Getenv("CRPIPE_FAULT") == "pages-fails-while-lending"

// do runs f on the lenders' thread and waits for it.
func (ls *lenders) do(f func()) {
	done := make(chan struct{})
	ls.reqs <- func() { f(); close(done) }
	<-done
}

// async queues f on the lenders' thread, after what is queued already.
func (ls *lenders) async(f func()) { ls.reqs <- f }

func (ls *lenders) hold(fr *pb.Freeze, procs []*pb.Process) (err error) {
	if ls.held, err = parasite.Hold(fr, procs); err != nil {
		return err
	}
	for _, hp := range ls.held.Procs {
		ls.procs[hp.Pid] = hp
	}
	if err := ls.held.Thaw(); err != nil {
		return errors.Join(err, ls.undo())
	}
	return nil
}

// wants: pid is worth lending from (it lends unless it refuses the lender).
func (ls *lenders) wants(pid int) bool { return ls != nil && ls.want[pid] }

// begin sets up pid's lender, if pid is worth lending from, once its
// memory has been looked at (prepare): the lender's own mappings must not
// be taken for the process's. It says whether pid lends its pages, and
// which page of them is copied all the same.
func (ls *lenders) begin(pid int) (lends bool, keepOut uint64, err error) {
	if !ls.wants(pid) {
		return false, 0, nil
	}
	var ld *lender
	ls.do(func() {
		if err = ls.holdErr; err == nil {
			ld, err = newLender(ls.procs[pid])
		}
	})
	if errors.Is(err, inject.ErrNoStub) || errors.Is(err, inject.ErrNoLender) {
		stage.Logf("%v; copying its pages", err)
		return false, 0, nil
	}
	if err != nil {
		return false, 0, err
	}
	ls.do(func() { ls.byPid[pid] = ld })
	stage.Logf("pid %d lends its private anonymous pages", pid)
	return true, ld.rseqPage, nil
}

// newLender injects a lender into a held process, through its first
// thread that takes a session (a leader that has exited is a zombie),
// first of those asleep in a syscall, which carry the stub's mmap and
// munmap frozen (lib/inject/frozen.go).
func newLender(hp parasite.HeldProcess) (ld *lender, err error) {
	ld = &lender{hp: hp}
	tids := hp.Tids
	if i := slices.IndexFunc(tids, inject.Restarts); i > 0 {
		tids = slices.Concat(tids[i:i+1], tids[:i], tids[i+1:])
	}
	for _, tid := range tids {
		if err = inject.KeepMasks(hp.Cgroup, hp.Pid, []int{tid}); err != nil {
			return nil, err
		}
		if ld.s, err = inject.Begin(tid, hp.Insn); err == nil {
			ld.s.FreezeCallsIn(hp.Cgroup)
			break
		}
	}
	if ld.s == nil {
		return nil, errors.Join(fmt.Errorf("pid %d: no thread to lend pages through: %w", hp.Pid, err), inject.DropMasks(hp.Cgroup, hp.Pid))
	}
	defer func() {
		if err == nil {
			return
		}
		if uerr := ld.undo(); uerr != nil {
			// Not a refusal to copy around: the process is not as it was.
			err = fmt.Errorf("%v; then: %w", err, uerr)
		}
	}()
	if ld.st, err = inject.MapStub(ld.s, []*inject.Session{ld.s}); err != nil {
		return ld, fmt.Errorf("pid %d: %w", hp.Pid, err)
	}
	if ld.l, err = ld.st.NewLender(ld.s, hp.Pid); err != nil {
		return ld, err
	}
	if rs, err := sys.PtraceGetRseqConfig(ld.s.Tid()); err == nil && rs.AbiPointer != 0 {
		ld.rseqPage = rs.AbiPointer &^ (image.PageSize - 1)
	}
	return ld, nil
}

// undo takes the lender out of its process and ends the session.
func (ld *lender) undo() error {
	var errs []error
	if ld.g != nil {
		errs = append(errs, ld.g.Finish())
		ld.g = nil
	}
	if ld.l != nil {
		errs = append(errs, ld.l.Close())
	}
	if ld.st != nil {
		errs = append(errs, ld.st.Unmap(ld.s))
	}
	if err := ld.s.End(nil); err != nil {
		return errors.Join(append(errs, err)...) // the record serves the thaw
	}
	errs = append(errs, inject.DropMasks(ld.hp.Cgroup, ld.hp.Pid))
	return errors.Join(errs...)
}

// undo takes every lender out and releases the tree (on the lenders'
// thread).
func (ls *lenders) undo() error {
	var errs []error
	for pid, ld := range ls.byPid {
		if err := ld.undo(); err != nil {
			errs = append(errs, fmt.Errorf("pid %d: %w", pid, err))
		}
	}
	ls.byPid = nil
	if ls.held != nil {
		errs = append(errs, ls.held.Release())
		ls.held = nil
	}
	return errors.Join(errs...)
}

// close ends lending: every process as it was, frozen, detached.
func (ls *lenders) close() error {
	if ls == nil {
		return nil
	}
	var err error
	ls.do(func() { err = errors.Join(append(ls.errs, ls.undo())...) })
	close(ls.reqs)
	return err
}

// start has b's lender start on b at once, behind the writer's back (the
// first batch of a process: the writer takes it when it gets to b).
func (ls *lenders) start(b *lentBatch) {
	b.started = make(chan struct{})
	ls.async(func() {
		b.err = ls.lend(b)
		close(b.started)
	})
}

// lend starts b's lender on b's runs (on the lenders' thread).
func (ls *lenders) lend(b *lentBatch) (err error) {
	ld := ls.byPid[b.pid]
	b.pipe = ld.l.Pipe
	if len(b.runs) > 0 {
		ld.g, err = ld.l.Lend(b.runs, lendMaxFrame)
		b.g = ld.g
	}
	return err
}

// finish brings b's lender back to a stop once its frames are read and,
// after the process's last batch, takes it out (on the lenders' thread).
func (ls *lenders) finish(b *lentBatch) {
	ld := ls.byPid[b.pid]
	var err error
	if ld.g != nil {
		err = ld.g.Finish()
		ld.g = nil
	}
	if b.last && err == nil {
		delete(ls.byPid, b.pid)
		err = ld.undo()
	}
	if err != nil {
		ls.errs = append(ls.errs, fmt.Errorf("pid %d: %w", b.pid, err))
	}
}

// write writes the frames b's process lends to w, and returns the pages
// of zeros left out. Its lender was started by start (a process's first
// batch) or is started here.
func (ls *lenders) write(w *image.Writer, b *lentBatch, frame func(n uint64)) (zeros uint64, err error) {
	pid := b.pid
	if faultFailWhileLending && b.started != nil && ls.writtenFirst {
		return 0, fmt.Errorf("pid %d: CRPIPE_FAULT=pages-fails-while-lending", pid)
	}
	if b.started != nil {
		<-b.started
		err = b.err
	} else {
		stage.Logf("pid %d lends more than %d runs: again", pid, inject.MaxLendRuns)
		ls.do(func() { err = ls.lend(b) })
	}
	if err != nil {
		return 0, fmt.Errorf("pid %d: %w", pid, err)
	}
	defer ls.async(func() { ls.finish(b) })
	ls.writtenFirst = true
	g := b.g
	for g != nil {
		f, ok, err := g.Next()
		if err != nil {
			return 0, fmt.Errorf("pid %d: %w", pid, err)
		}
		if !ok {
			return g.Zeros(), nil
		}
		var sum image.PagesSummer
		sum.AddSum(f.Sums[0], int64(f.Split))
		sum.AddSum(f.Sums[1], int64(f.Split))
		sum.AddSum(f.Sums[2], int64(f.Len-2*f.Split))
		h := image.PagesHeader{Pid: uint32(pid), Addr: f.Addr}
		if err := w.WritePagesFrom(h, int(f.Len), sum.Sum(h), b.pipe, stage.SpliceMover); err != nil {
			return 0, fmt.Errorf("output: %w", err)
		}
		frame(f.Len)
	}
	return 0, nil
}
