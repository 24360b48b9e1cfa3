// Package restore rebuilds process trees from an image stream (cr-restore).
//
// The coordinator (this package) decides everything; the restorer blob
// (crpipe/pie) runs syscalls on command inside each task being rebuilt. The
// order follows the stream, so memory streams straight from the input into
// the tasks with constant memory:
//
//	process records -> the tree is ordered, the root cloned (tree.go)
//	mm record       -> the process is cloned from its parent with its dumped
//	                   PID, keeping what it shares with it since fork
//	                   (inherit.go); the restorer moves to a hole, the
//	                   dumped VMAs are mapped
//	page frames     -> into the task: UFFDIO_COPY into fresh anonymous
//	                   memory (fill_uffd.go), process_vm_writev elsewhere
//	end             -> files, per-process state, threads, per-thread state,
//	                   then every restorer is unmapped and the dumped
//	                   registers set through ptrace (final.go)
//
// doc/restorer.md describes the sequence and the restorer's protocol.
package restore

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/arch"
	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
)

// Options are cr-restore's flags.
type Options struct {
	Input   string        // image file; stdin when empty
	Detach  bool          // return once the tree runs
	PidFile string        // write the root's PID here
	PidWait time.Duration // how long to wait for dumped PIDs to become free
	PidNS   bool          // restore into a new PID namespace, beside the original
	Cgroup  string        // cgroup v2 directory to start the tree in; cr-restore's when empty
	// DumpedCgroups starts each process in the cgroup it was dumped from
	// (cgroups.go); not with Cgroup.
	DumpedCgroups bool
	NoUffd        bool // write every page with process_vm_writev (fill_uffd.go)
}

// task is one process being rebuilt.
type task struct {
	proc     *pb.Process
	pid      int
	r        *restorer
	parent   *task
	cores    map[uint32]*pb.ThreadCore // by tid, without their xsave areas
	xsaves   map[uint32]held           // by tid: ThreadCore.Xsave (held.go)
	states   map[uint32]*pb.TaskState  // by tid
	mm       *pb.Mm                    // without its VMAs: vmas
	vmas     []vma                     // in address order (setupMm)
	files    *pb.Files
	hole     uint64
	holeSize uint64
	scratch  uint64
	stacks   uint64       // thread stacks, inside the hole
	writable []*vma       // the VMAs pages are written into, by address
	sysv     []sysvAttach // the VMAs that attach System V segments (sysv.go)
	uffd     *uffdFill    // while its pages are placed with UFFDIO_COPY (fill_uffd.go)
	forkOut  []span       // its memory kept out of its children's forks (inherit.go)
	// sharedFiles: the descriptions its shared file mappings were made
	// with, by mapping start, kept until its locks are taken: a lock held
	// through a mapping alone is taken on them (fd_locks.go).
	sharedFiles map[uint64]*os.File
	ctlFd       int               // the task's end of its control socket
	threads     []*thread         // all but the leader
	rseqCs      map[uint32]uint64 // by tid: rseq_cs as dumped, put back last (final.go)
	inNs        bool              // in a --pidns namespace: pid (ours) differs from proc.Pid
	done        bool
	restorerSec *proc.Security // its restorer's own credentials (restorerSecurity)
}

// thread is a non-leader thread with a restorer of its own.
type thread struct {
	tid   int    // as this coordinator sees it (outside a --pidns namespace)
	inner uint32 // as dumped
	r     *restorer
	ctlFd int
}

func (t *task) zombie() bool { return t.proc.State == "Z" }

// stopped: the process was in a group stop (SIGSTOP, or SIGTSTP, SIGTTIN,
// SIGTTOU at their default action) when it was dumped.
func (t *task) stopped() bool { return t.proc.State == "T" }

// Run restores the stream described by opts.
func Run(opts Options) (err error) {
	go warmPieces()
	// Orphans of a tree killed after a failure come back to us to be reaped.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl child subreaper: %w", err)
	}
	rc := &Ctx{Tasks: map[uint32]*task{}, Shared: map[string]any{}, vmaPaths: map[string]string{}, pidns: opts.PidNS, noUffd: opts.NoUffd, dumpedCgroups: opts.DumpedCgroups}
	defer rc.closeAll()
	if opts.Cgroup != "" {
		if rc.cgroup, err = openCgroup(opts.Cgroup); err != nil {
			return fmt.Errorf("--cgroup: %w", err)
		}
		rc.owned = append(rc.owned, rc.cgroup)
	}
	// The helper starts before the stream's header is read: the root
	// waited 0.7-1.5 ms for it (doc/performance.md 84).
	if !opts.PidNS && !opts.DumpedCgroups { // else its namespace or cgroup is not known yet
		rc.early = startEarly(rc.cgroup)
	}
	in, err := stage.Input(opts.Input)
	if err != nil {
		return err
	}
	defer in.Close()
	rd, err := image.NewReader(in)
	if err != nil {
		return fmt.Errorf("input: %w", err)
	}
	// Large page frames are read where they go, a piece at a time: from an
	// image file by several threads, else in order (doc/performance.md, 31).
	if rc.fromFile = rd.PagesInFile(); !rc.fromFile {
		rd.DeferPages(nil)
	}
	if err := rc.restoreStream(rd, opts); err != nil {
		rc.abortFills()
		rc.killAll()
		for _, abort := range aborters {
			err = abort(rc, err)
		}
		if errors.Is(err, unix.EMFILE) {
			var lim unix.Rlimit
			unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
			err = stage.Hint(err, fmt.Sprintf("cr-restore keeps a file of each pipe end, and of each open file description that several fds share, until every process runs, and opens up to %d more at a time; %d files are its limit: raise RLIMIT_NOFILE (ulimit -Hn)", fdInstallBatch, lim.Cur))
		}
		return err
	}
	root := rc.Order[0]
	if opts.PidFile != "" {
		if err := os.WriteFile(opts.PidFile, []byte(fmt.Sprintf("%d\n", root.pid)), 0o644); err != nil {
			return err
		}
	}
	if opts.Detach {
		return nil
	}
	if rc.init != nil {
		// The namespace's init passes the root's status on.
		return waitRoot(rc.init.pid)
	}
	return waitRoot(root.pid)
}

// waitRoot waits for our child pid (the restored root, or the init of its
// namespace) and passes its status on.
func waitRoot(pid int) error {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait for pid %d: %w", pid, err)
		}
		break
	}
	switch {
	case ws.Exited():
		if ws.ExitStatus() != 0 {
			return &stage.ExitStatus{Code: ws.ExitStatus()}
		}
		return nil
	case ws.Signaled():
		return &stage.ExitStatus{Code: 128 + int(ws.Signal())}
	}
	return nil
}

// killAll removes every task this restore created, and reaps them: the root
// is our child, the others come back to us as orphans (we are a subreaper).
func (rc *Ctx) killAll() {
	if rc.init != nil {
		// Killing a namespace's init kills everything in it.
		unix.Kill(rc.init.pid, unix.SIGKILL)
		var ws unix.WaitStatus
		unix.Wait4(rc.init.pid, &ws, 0, nil)
		return
	}
	created := 0
	for _, t := range rc.Order {
		if t.pid != 0 {
			unix.Kill(t.pid, unix.SIGKILL)
			created++
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for created > 0 && time.Now().Before(deadline) {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WALL|unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		if pid == 0 {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if _, ours := rc.Tasks[uint32(pid)]; ours {
			created--
		}
	}
}

func (rc *Ctx) closeAll() {
	rc.abortFills()
	if rc.early != nil {
		rc.early.drop()
	}
	if rc.init != nil {
		rc.init.sock.Close()
	}
	for _, f := range rc.owned {
		f.Close()
	}
	for _, t := range rc.Order {
		t.closeSharedFiles(rc)
		if t.r != nil {
			t.r.sock.Close()
		}
		for _, th := range t.threads {
			th.r.sock.Close()
		}
	}
}

// restoreStream consumes the stream and leaves the tree running.
func (rc *Ctx) restoreStream(rd *image.Reader, opts Options) error {
	created := false
	var spool *os.File
	defer func() {
		if spool != nil {
			spool.Close()
		}
	}()
	for {
		f, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("input: %w", err)
		}
		if f.Type != image.TypeProcess && !created && len(rc.Order) > 0 {
			if !rc.pidsFree() {
				// The dumped tree may still be alive, waiting for its dump to
				// complete (cr-dump | cr-restore). Keep reading into a spool file
				// so the dump can finish (nothing waits for a file to be read),
				// then wait for the PIDs to be freed.
				if rc.fromFile {
					stage.Logf("pid %d (or another pid of the tree) is in use: waiting for it", rc.Order[0].proc.Pid)
				} else {
					stage.Logf("pid %d (or another pid of the tree) is in use: spooling the rest of the stream while waiting for it", rc.Order[0].proc.Pid)
					if spool, rd, err = spoolRest(rd, f); err != nil {
						return err
					}
				}
				if err := rc.waitPidsFree(opts.PidWait); err != nil {
					return err
				}
				if !rc.fromFile {
					if f, err = rd.Next(); err != nil {
						return fmt.Errorf("spool: %w", err)
					}
				}
			}
			if err := rc.planTree(); err != nil {
				return err
			}
			created = true
		}
		if err := rc.handle(f, created); err != nil {
			return err
		}
	}
	if len(rc.Order) == 0 {
		return fmt.Errorf("input: the stream holds no process")
	}
	if !created {
		return stage.Hint(fmt.Errorf("input: the stream holds only process records"), throughEveryStage)
	}
	return rc.finish()
}

func (rc *Ctx) handle(f *image.Frame, created bool) error {
	if err := rc.fillFailed(); err != nil {
		return err
	}
	// A record other than memory waits for every task's memory (fill.go).
	if f.Type != image.TypePages && f.Type != image.TypeMm {
		if err := rc.waitFills(); err != nil {
			return err
		}
	}
	switch f.Type {
	case image.TypeProcess:
		var p pb.Process
		if err := image.Unmarshal(f, &p); err != nil {
			return err
		}
		if created {
			return fmt.Errorf("frame %d at offset %d: process record for pid %d after the tree was built: %w", f.Index, f.Offset, p.Pid, image.ErrCorrupt)
		}
		// Without the inventory the page size the pages were laid out in
		// is unknown: cr-freeze writes it first in every stream.
		if !rc.inventory {
			return fmt.Errorf("frame %d at offset %d: process record before any inventory record: %w", f.Index, f.Offset, image.ErrCorrupt)
		}
		if _, dup := rc.Tasks[p.Pid]; dup || p.Pid == 0 {
			return fmt.Errorf("frame %d at offset %d: duplicate or zero pid %d: %w", f.Index, f.Offset, p.Pid, image.ErrCorrupt)
		}
		t := &task{proc: &p, cores: map[uint32]*pb.ThreadCore{}, xsaves: map[uint32]held{}, states: map[uint32]*pb.TaskState{}}
		stage.ReserveHeap(stage.ProcessHeap)
		rc.Tasks[p.Pid] = t
		rc.Order = append(rc.Order, t)
	case image.TypeThreadCore:
		var c pb.ThreadCore
		if err := image.Unmarshal(f, &c); err != nil {
			return err
		}
		t, err := rc.taskFor(f, c.Pid)
		if err != nil {
			return err
		}
		// Checked here, before anything is made: given to a thread at the
		// end, such segments kill it on its way back to user space.
		if c.Regs != nil {
			if err := arch.CheckSegments(c.Regs.Cs, c.Regs.Ss); err != nil {
				return fmt.Errorf("frame %d at offset %d: pid %d tid %d: %w: %w", f.Index, f.Offset, c.Pid, c.Tid, err, image.ErrCorrupt)
			}
		}
		t.xsaves[c.Tid] = rc.holder.hold(c.Xsave)
		c.Xsave = nil
		t.cores[c.Tid] = &c
	case image.TypeTaskState:
		var s pb.TaskState
		if err := image.Unmarshal(f, &s); err != nil {
			return err
		}
		t, err := rc.taskFor(f, s.Pid)
		if err != nil {
			return err
		}
		t.states[s.Tid] = &s
	case image.TypeMm:
		mm, vmas, err := decodeMm(f, rc.vmaPaths)
		if err != nil {
			return err
		}
		t, err := rc.taskFor(f, mm.Pid)
		if err != nil {
			return err
		}
		if t.mm != nil {
			return fmt.Errorf("frame %d at offset %d: second mm record for pid %d: %w", f.Index, f.Offset, mm.Pid, image.ErrCorrupt)
		}
		t.mm, t.vmas = mm, vmas
		stage.ReserveHeap(int64(len(vmas)) * stage.VmaHeap)
		if limit, err := maxMapCount(); err == nil {
			if err := checkMapCount(mm.Pid, len(vmas), limit); err != nil {
				return err
			}
		}
		rc.closeFill() // the task before has all its pages
		if err := rc.ensureCreated(t); err != nil {
			return err
		}
		return rc.startFill(t, true)
	case image.TypePages:
		h, err := f.PagesHeader()
		if err != nil {
			return err
		}
		t, err := rc.taskFor(f, h.Pid)
		if err != nil {
			return err
		}
		if t.mm == nil {
			return fmt.Errorf("frame %d at offset %d: pages before the mm record of pid %d: %w", f.Index, f.Offset, h.Pid, image.ErrCorrupt)
		}
		return rc.fillPages(t, h.Addr, f)
	case image.TypeFiles:
		var fl pb.Files
		if err := image.Unmarshal(f, &fl); err != nil {
			return err
		}
		t, err := rc.taskFor(f, fl.Pid)
		if err != nil {
			return err
		}
		t.files = &fl
	case image.TypeInventory:
		var inv pb.Inventory
		if err := image.Unmarshal(f, &inv); err != nil {
			return err
		}
		// Pages are laid out, and VMAs aligned, in the dumping machine's
		// page size.
		if inv.PageSize == 0 {
			return fmt.Errorf("frame %d at offset %d: inventory without a page size: %w", f.Index, f.Offset, image.ErrCorrupt)
		}
		if int(inv.PageSize) != os.Getpagesize() {
			return fmt.Errorf("frame %d: the image was made on a machine with %d-byte pages, this one has %d", f.Index, inv.PageSize, os.Getpagesize())
		}
		rc.inventory = true
	case image.TypeEnd:
	default:
		if h, ok := recordHandlers[f.Type]; ok {
			return h(rc, f)
		}
		stage.Logf("frame %d: %s record not used by restore", f.Index, f.Type)
	}
	return nil
}

// dumpPipeline is the pipeline as cr-dump runs it, for hints about an
// image that missed a stage.
const (
	dumpPipeline      = "cr-freeze | cr-seize | cr-parasite | cr-files | cr-tcp | cr-pages"
	throughEveryStage = "the image must come through every stage: " + dumpPipeline
)

func (rc *Ctx) taskFor(f *image.Frame, pid uint32) (*task, error) {
	t := rc.Tasks[pid]
	if t == nil {
		return nil, fmt.Errorf("frame %d at offset %d: %s record for pid %d, which no process record announced: %w", f.Index, f.Offset, f.Type, pid, image.ErrCorrupt)
	}
	if t.zombie() {
		return nil, fmt.Errorf("frame %d at offset %d: %s record for pid %d, a zombie: %w", f.Index, f.Offset, f.Type, pid, image.ErrCorrupt)
	}
	return t, nil
}

// complete checks that the stream carried everything a live task needs.
func (t *task) complete() error {
	missing := ""
	switch {
	case t.cores[t.proc.Pid] == nil:
		missing = "registers (cr-seize)"
	case t.mm == nil:
		missing = "memory (cr-pages)"
	case t.files == nil:
		missing = "files (cr-files)"
	}
	for _, tid := range t.proc.Threads {
		if missing == "" && t.cores[tid] == nil {
			missing = fmt.Sprintf("registers of thread %d (cr-seize)", tid)
		}
	}
	if missing != "" {
		return stage.Hint(fmt.Errorf("pid %d: the stream has no %s", t.proc.Pid, missing), throughEveryStage)
	}
	return nil
}

func (rc *Ctx) pidsFree() bool {
	if rc.pidns {
		return true // a new namespace has every pid free
	}
	for _, t := range rc.Order {
		for _, tid := range append([]uint32{t.proc.Pid}, t.proc.Threads...) {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", tid)); !errors.Is(err, os.ErrNotExist) {
				return false
			}
		}
	}
	return true
}

// waitPidsFree polls, from every millisecond up to every 20: cr-dump kills
// the dumped tree right after the image is complete, so its PIDs are
// usually freed within a few milliseconds of the last frame.
func (rc *Ctx) waitPidsFree(wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for pause := time.Millisecond; !rc.pidsFree(); pause = min(2*pause, 20*time.Millisecond) {
		if time.Now().After(deadline) {
			return stage.Hint(fmt.Errorf("pid %d (or another pid of the tree) is still in use after %v", rc.Order[0].proc.Pid, wait),
				"the dumped processes (or others with their PIDs) still run: kill them, or wait for them to be reaped")
		}
		time.Sleep(pause)
	}
	return nil
}

// spoolRest copies the frame at hand and the rest of the stream into an
// unlinked temporary file and returns a reader over it, so that the
// producer of the stream can finish.
func spoolRest(rd *image.Reader, first *image.Frame) (*os.File, *image.Reader, error) {
	f, err := os.CreateTemp("", "crpipe-spool-*")
	if err != nil {
		return nil, nil, fmt.Errorf("spool: %w", err)
	}
	os.Remove(f.Name())
	fail := func(err error) (*os.File, *image.Reader, error) {
		f.Close()
		return nil, nil, err
	}
	w, err := image.NewWriter(f, image.WriterOptions{})
	if err != nil {
		return fail(err)
	}
	for fr := first; ; {
		if fr.Type != image.TypeEnd { // the spool gets its own end frame
			if err := w.Pass(fr); err != nil {
				return fail(fmt.Errorf("spool: %w", err))
			}
		}
		fr, err = rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fail(fmt.Errorf("input: %w", err))
		}
	}
	if err := w.Close(); err != nil {
		return fail(fmt.Errorf("spool: %w", err))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fail(err)
	}
	nr, err := image.NewReader(f)
	if err != nil {
		return fail(fmt.Errorf("spool: %w", err))
	}
	nr.PagesInFile()
	return f, nr, nil
}

// regsFor returns the registers a thread resumes with.
func (t *task) regsFor(tid uint32) (unix.PtraceRegs, error) {
	regs, err := arch.RegsFromPB(t.cores[tid].Regs)
	if err != nil {
		return regs, fmt.Errorf("pid %d tid %d: %w", t.pid, tid, err)
	}
	return regs, nil
}
