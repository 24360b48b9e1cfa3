// Package parasite is the cr-parasite stage: it reads state that only the
// task itself can report, by injecting system calls into it (lib/inject):
// the signal dispositions (rt_sigaction with a NULL new action), the
// clear_child_tid address (prctl PR_GET_TID_ADDRESS), the alternate signal
// stack, parent-death signal and securebits of every thread, and the
// interval timers, POSIX timers, dumpable and child-subreaper flags of
// every process. Then, from outside, the signals queued for each thread
// and process (PTRACE_PEEKSIGINFO): after the timers, so that a timer that
// expires meanwhile is recorded as armed again plus a pending signal, never
// lost.
//
// Per process it appends one TaskState and one ThreadInside record per
// thread (sigactions are per process and go only into the thread group
// leader's TaskState), then one ProcessInside record. Zombies are skipped.
// Tasks under seccomp are seized with PTRACE_O_SUSPEND_SECCOMP, so that the
// injected calls pass their filters (or strict mode).
//
// A frozen task cannot execute a system call, so the cgroup is thawed for
// exactly the time of the injection, while every task is held in a ptrace
// stop (ptrace-stopped tasks count as frozen and do not run), and frozen
// again before any task is detached.
//
// The calls of a thread (4, and ~70 more in the leader: 62 of them
// rt_sigaction) run as one batch through a stub mapped into the process
// for the time of the injection (inject.Stub): a few ptrace stops per
// thread instead of two per call. A process that refuses the mapping (an
// address-space limit, an LSM) gets its calls one at a time, with their
// results in scratch bytes below the red zone, which are put back;
// --one-at-a-time asks for that everywhere. Either way the records are the
// same. The processes are shared out among one tracer thread per CPU.
package parasite

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/cli"
	"crpipe/lib/image"
	"crpipe/lib/inject"
	"crpipe/lib/internal/par"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/seize"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// Timeouts for stops and for the cgroup to report frozen again.
var (
	StopTimeout   = 10 * time.Second
	FreezeTimeout = 10 * time.Second
)

// Command is cr-parasite.
func Command() *cli.App {
	return stage.FilterCommand("cr-parasite", "append state read from inside every frozen task (sigactions, tid address, sigaltstack, timers, prctl bits) and pending signals",
		[]cli.Flag{&cli.BoolFlag{Name: "one-at-a-time", Usage: "inject each system call separately, two ptrace stops per call, instead of running them in one batch (slower; gives the same records)"}},
		func(c *cli.Context) (stage.Filter, error) {
			return Filter(Options{OneAtATime: c.Bool("one-at-a-time")}), nil
		})
}

// Filter is the stage without its command line.
func Filter(opt Options) stage.Filter {
	up := &stage.Upstream{}
	wit := &witnesses{}
	seen := threadIDs{}
	return stage.Filter{
		Observe: func(f *image.Frame) error {
			if err := up.Observe(f); err != nil {
				return err
			}
			// The witnesses start while the stages before still work (a
			// tiny process is injected into sooner than a shell starts):
			// the first process's as its record passes, the others' from
			// the ids in cr-seize's records, with no /proc read.
			switch {
			case f.Type == image.TypeThreadState:
				id, ok, err := seen.observe(f)
				if ok {
					wit.start(id.uid, id.gid)
				}
				return err
			case f.Type == image.TypeProcess && len(up.Procs) == 1:
				wit.startFor(int(up.Procs[0].Pid))
			}
			return nil
		},
		Finish: func(w *image.Writer) error {
			defer wit.close()
			if err := up.NeedProcs(); err != nil {
				return err
			}
			fr, procs := up.Freeze, up.Procs
			if err := up.NeedFreeze(); err != nil {
				return err
			}
			res, err := run(fr, procs, opt, wit, seen)
			if err != nil {
				return err
			}
			for _, r := range res {
				if err := w.WriteMessage(image.TypeTaskState, r.State); err != nil {
					return fmt.Errorf("output: %w", err)
				}
			}
			for _, r := range res {
				if err := w.WriteMessage(image.TypeThreadInside, r.Inside); err != nil {
					return fmt.Errorf("output: %w", err)
				}
				if r.Process != nil {
					if err := w.WriteMessage(image.TypeProcessInside, r.Process); err != nil {
						return fmt.Errorf("output: %w", err)
					}
				}
			}
			return nil
		},
	}
}

// target is one process to inject into.
type target struct {
	pid     int
	insn    uint64
	cgroup  string // the frozen cgroup
	tids    []int
	ids     [][2]int // per thread: real uid and gid (its witness's)
	seccomp []bool
	stopped bool // in a group stop (state T)
	res     []*ThreadResult
}

// ThreadResult is what cr-parasite records of one thread.
type ThreadResult struct {
	State   *pb.TaskState
	Inside  *pb.ThreadInside
	Process *pb.ProcessInside // the thread group leader's only
}

// Options change how the calls are injected, not what is read.
type Options struct {
	// OneAtATime injects each call separately, two ptrace stops per call,
	// instead of running them all through a stub mapped into the process
	// (inject.Stub). It is what a process that refuses the stub's mapping
	// gets anyway; tests compare the two.
	OneAtATime bool
}

// Run reads the task state of every thread of procs, which are frozen in
// fr.Cgroup. On return, success or failure, the cgroup is frozen again,
// every thread is detached and the registers, signal masks and memory of
// the tasks are as they were.
//
// The processes are shared out among one worker per CPU. ptrace requests
// must come from the thread that seized the task, so each worker is a
// locked OS thread that seizes its processes, injects into them once all
// workers hold theirs and the cgroup is thawed, and detaches them once it
// is frozen again.
func Run(fr *pb.Freeze, procs []*pb.Process, opt Options) (res []*ThreadResult, err error) {
	wit := &witnesses{}
	defer wit.close()
	return run(fr, procs, opt, wit, nil)
}

// run is Run with the witnesses (landlock.go) started so far, and the ids
// of the threads cr-seize recorded (seen, may be nil).
func run(fr *pb.Freeze, procs []*pb.Process, opt Options, wit *witnesses, seen threadIDs) (res []*ThreadResult, err error) {
	var live []*pb.Process
	for _, p := range procs {
		if p.State != "Z" { // a zombie runs nothing and keeps no state but its exit code
			live = append(live, p)
		}
	}
	if len(live) == 0 {
		return nil, nil
	}
	mount, err := proc.Cgroup2Mount()
	if err != nil {
		return nil, err
	}
	nw := par.Workers(len(live))
	targets := make([]*target, len(live))
	if err := par.For(len(live), nw, func(i int) (err error) {
		targets[i], err = prepare(live[i], fr, mount, wit, seen)
		return err
	}); err != nil {
		return nil, err
	}

	// Ctrl-C in a shell pipeline, or cr-dump stopping the stages after a
	// failure elsewhere, must not kill this process between injected
	// syscalls: a task would be left with borrowed registers. Finish the
	// processes at hand, put everything back, then give up.
	sigs := make(chan os.Signal, 1)
	stage.NotifyInterrupt(sigs)
	defer stage.StopInterrupt(sigs)
	ws := make([]*worker, nw)
	aborted := new(atomic.Bool)
	for i := range ws {
		ws[i] = &worker{sigs: sigs, aborted: aborted, opt: opt, wit: wit, in: make(chan bool), out: make(chan error)}
		for j := i; j < len(targets); j += nw {
			ws[i].targets = append(ws[i].targets, targets[j])
		}
		go ws[i].run()
	}
	// next lets every worker go on to its next phase (or, with false,
	// straight to detaching) and collects the errors of that phase.
	next := func(proceed bool) error {
		var errs []error
		for _, w := range ws {
			w.in <- proceed
		}
		for _, w := range ws {
			errs = append(errs, <-w.out)
		}
		return errors.Join(errs...)
	}
	var errs []error
	for _, w := range ws { // seized, or not
		errs = append(errs, <-w.out)
	}
	select {
	case s := <-sigs:
		errs = append(errs, stage.Interrupted(s, "tasks left frozen"))
	default:
	}
	if err := errors.Join(errs...); err != nil {
		return nil, errors.Join(err, next(false))
	}
	// A frozen task cannot run the injected calls; stopped in ptrace, it
	// does not run anything else.
	err = sys.CgroupFreeze(fr.Cgroup, false, 0)
	if err == nil {
		err = next(true)
	}
	// Refreeze before detaching: a detached thawed task would run.
	if ferr := sys.CgroupFreeze(fr.Cgroup, true, FreezeTimeout); ferr != nil {
		err = errors.Join(err, fmt.Errorf("refreeze: %w", ferr))
	}
	if derr := next(err == nil); derr != nil {
		err = errors.Join(err, derr)
	}
	if err != nil {
		return nil, err
	}
	for _, tg := range targets {
		res = append(res, tg.res...)
	}
	return res, nil
}

// prepare checks one process and finds what its injection needs; wit,
// when not nil, gets the witnesses of its threads started.
func prepare(p *pb.Process, fr *pb.Freeze, mount string, wit *witnesses, seen threadIDs) (*target, error) {
	if err := checkFrozen(p, fr, mount); err != nil {
		return nil, err
	}
	pid := int(p.Pid)
	insn, err := inject.FindSyscallInsn(pid)
	if err != nil {
		if seize.Exiting(pid, pid) {
			return nil, exitedError(pid)
		}
		return nil, err
	}
	tg := &target{pid: pid, insn: insn, cgroup: fr.Cgroup, stopped: p.State == "T"}
	tids := p.Threads
	if len(tids) == 0 {
		tids = []uint32{p.Pid}
	}
	for _, t := range tids {
		id, err := seen.of(pid, int(t))
		if err != nil {
			return nil, err
		}
		tg.tids = append(tg.tids, int(t))
		tg.ids = append(tg.ids, [2]int{id.uid, id.gid})
		tg.seccomp = append(tg.seccomp, id.seccomp)
		if wit != nil {
			wit.start(id.uid, id.gid)
		}
	}
	return tg, nil
}

// threadID is what the injection needs of a thread's credentials: its
// real ids (its witness's, landlock.go) and whether seccomp is on.
type threadID struct {
	uid, gid int
	seccomp  bool
}

// threadIDs are the ids of the threads cr-seize recorded, by tid: read
// from its ThreadState records, they spare a read of each thread's status
// (~17% of cr-parasite's CPU with 500 threads). The tree is frozen
// between the stages, so the ids cannot have changed since.
type threadIDs map[int]threadID

// observe keeps the ids of a ThreadState record, and returns them (ok
// false: the record has no credentials).
func (m threadIDs) observe(f *image.Frame) (id threadID, ok bool, err error) {
	ts := &pb.ThreadState{}
	if err := image.Unmarshal(f, ts); err != nil {
		return threadID{}, false, err
	}
	c := ts.Creds
	if c == nil || len(c.Uids) == 0 || len(c.Gids) == 0 {
		return threadID{}, false, nil
	}
	id = threadID{uid: int(c.Uids[0]), gid: int(c.Gids[0]), seccomp: ts.SeccompMode != 0}
	m[int(ts.Tid)] = id
	return id, true, nil
}

// of is tid's ids, read from its status where no record gave them (a
// stream without cr-seize's records).
func (m threadIDs) of(pid, tid int) (threadID, error) {
	if id, ok := m[tid]; ok {
		return id, nil
	}
	sec, err := proc.ReadSecurity(pid, tid)
	if err != nil {
		return threadID{}, err
	}
	return threadID{uid: sec.Uid[0], gid: sec.Gid[0], seccomp: sec.Seccomp != 0}, nil
}

// worker is one tracer thread and the processes it holds.
type worker struct {
	targets []*target
	opt     Options
	wit     *witnesses
	sigs    chan os.Signal
	aborted *atomic.Bool // set when a worker fails: the others stop at their next process
	in      chan bool    // go on to the next phase (false: to detaching)
	out     chan error   // the result of each phase
}

func (w *worker) run() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var seized []int
	w.out <- w.seize(&seized)
	if <-w.in {
		err := w.inject()
		if err != nil {
			w.aborted.Store(true)
		}
		w.out <- err
		<-w.in
	}
	var errs []error
	for _, tid := range seized {
		if err := sys.PtraceDetach(tid, 0); err != nil {
			errs = append(errs, seize.ThreadError(pidOf(w.targets, tid), tid, err))
		}
	}
	w.out <- errors.Join(errs...)
}

// pidOf is the process of tid among targets.
func pidOf(targets []*target, tid int) int {
	for _, tg := range targets {
		if slices.Contains(tg.tids, tid) {
			return tg.pid
		}
	}
	return 0
}

// seize seizes every thread of the worker's processes and waits for each
// to stop, adding each seized thread to seized.
func (w *worker) seize(seized *[]int) error {
	for _, tg := range w.targets {
		if err := tg.seize(seized); err != nil {
			return err
		}
	}
	for _, tg := range w.targets {
		if err := tg.waitStops(); err != nil {
			return err
		}
	}
	return nil
}

// seize seizes every thread of the process and asks each to stop, adding
// each seized thread to seized.
func (tg *target) seize(seized *[]int) error {
	for i, tid := range tg.tids {
		opts := unix.PTRACE_O_TRACESYSGOOD
		if tg.seccomp[i] {
			// Injected calls would meet the task's filters, or be
			// fatal in strict mode.
			opts |= unix.PTRACE_O_SUSPEND_SECCOMP
		}
		if err := sys.PtraceSeizeStop(tid, opts); err != nil {
			return seize.ThreadError(tg.pid, tid, err)
		}
		*seized = append(*seized, tid)
	}
	return nil
}

// waitStops waits for every thread of the process to report its stop.
func (tg *target) waitStops() error {
	for _, tid := range tg.tids {
		if err := waitInterrupt(tg.pid, tid); err != nil {
			return err
		}
	}
	return nil
}

// inject reads every process of the worker, then its pending signals.
func (w *worker) inject() error {
	for _, tg := range w.targets {
		select {
		case s := <-w.sigs:
			return stage.Interrupted(s, "tasks restored and left frozen")
		default:
		}
		if w.aborted.Load() {
			return nil // another worker failed and says why
		}
		witness := make([]int, len(tg.tids))
		for i, id := range tg.ids {
			var err error
			if witness[i], err = w.wit.pid(id[0], id[1]); err != nil {
				return fmt.Errorf("pid %d tid %d: %w", tg.pid, tg.tids[i], err)
			}
		}
		res, err := Process(tg.pid, tg.tids, tg.insn, tg.cgroup, w.opt, witness)
		if errors.Is(err, inject.ErrSigstop) {
			// Put back, the process stops as the signal asks once thawed.
			return stage.Hint(err, "the process was sent SIGSTOP during the checkpoint; checkpoint it again once it has stopped (a stopped process is dumped as it is)")
		}
		if err != nil {
			return err
		}
		for _, r := range res {
			pid, tid := int(r.State.Pid), int(r.State.Tid)
			if r.Inside.Pending, err = pendingSignals(pid, tid, false, tg.stopped); err != nil {
				return err
			}
			if r.Process != nil {
				if r.Process.SharedPending, err = pendingSignals(pid, tid, true, tg.stopped); err != nil {
					return err
				}
			}
		}
		tg.res = res
	}
	return nil
}

// Process injects the state-reading calls into the threads tids of
// process pid, which the calling locked OS thread holds in
// PTRACE_EVENT_STOPs, and puts every thread back as it was (End), and
// the process's memory, whatever happens. cgroup is the frozen cgroup,
// which keeps the threads' signal masks meanwhile (inject.KeepMasks).
// insn is a syscall instruction in the process. witness gives, per
// thread, the witness it looks at for a sandbox (landlock.go; 0: none).
func Process(pid int, tids []int, insn uint64, cgroup string, opt Options, witness []int) (res []*ThreadResult, err error) {
	if err := inject.KeepMasks(cgroup, pid, tids); err != nil {
		return nil, err
	}
	var sessions []*inject.Session
	defer func() {
		ended := true
		for _, s := range sessions {
			if eerr := s.End(nil); eerr != nil {
				err = errors.Join(err, fmt.Errorf("pid %d tid %d: restore registers: %w", pid, s.Tid(), eerr))
				res, ended = nil, false
			}
		}
		if ended { // else the record serves the thaw
			if derr := inject.DropMasks(cgroup, pid); derr != nil {
				err, res = errors.Join(err, derr), nil
			}
		}
	}()
	var leader *inject.Session
	for _, tid := range tids {
		s, err := inject.Begin(tid, insn)
		if err != nil {
			return nil, fmt.Errorf("pid %d tid %d: %w", pid, tid, err)
		}
		s.FreezeCallsIn(cgroup)
		sessions = append(sessions, s)
		if tid == pid || leader == nil {
			leader = s
		}
	}
	// The stub's mmap and munmap, through a thread whose calls run frozen.
	carrier := inject.Carrier(sessions, leader)
	run := func(s *inject.Session, calls []inject.Call) error { return s.RunEach(calls) }
	mlock, mlockKnown := uint32(0), false
	if !opt.OneAtATime {
		locked, err := lockedKB(pid)
		if err != nil {
			return nil, err
		}
		stub, merr := inject.MapStub(carrier, sessions)
		switch {
		case merr == nil:
			// Deferred after the sessions' End, so run before it.
			defer func() {
				if uerr := stub.Unmap(carrier); uerr != nil {
					err = errors.Join(err, fmt.Errorf("pid %d: %w", pid, uerr))
					res = nil
				}
			}()
			run = stub.Run
			_, size, untouched := stub.Mapping()
			if mlock, err = futureLock(pid, locked, size, untouched); err != nil {
				return nil, err
			}
			mlockKnown = true
		case !errors.Is(merr, inject.ErrNoStub):
			return nil, fmt.Errorf("pid %d: %w", pid, merr)
		default:
			stage.Logf("pid %d: no stub (%v): one call at a time", pid, merr)
		}
	}
	if !mlockKnown {
		var err error
		if mlock, err = probeFutureLock(carrier, pid); err != nil {
			return nil, err
		}
	}
	for i, s := range sessions {
		where := func(err error) error { return fmt.Errorf("pid %d tid %d: %w", pid, s.Tid(), err) }
		r, err := planThread(pid, s.Tid(), s.Tid() == pid, witness[i])
		if err != nil {
			return nil, where(err)
		}
		var pol *policies
		if r.proc != nil {
			if pol, err = askPolicies(pid, &r.reads); err != nil {
				return nil, where(err)
			}
		}
		err = run(s, r.calls)
		if errors.Is(err, inject.ErrNoStub) {
			// Its first batch could not make the stub's data writable.
			stage.Logf("pid %d: no stub (%v): one call at a time", pid, err)
			run = func(s *inject.Session, calls []inject.Call) error { return s.RunEach(calls) }
			err = run(s, r.calls)
		}
		if err != nil {
			return nil, where(err)
		}
		tr, err := r.decode()
		if err != nil {
			return nil, where(err)
		}
		if tr.Process != nil {
			tr.Process.Mlockall = mlock
			if tr.Process.VmaPolicies, err = pol.finish(func(calls []inject.Call) error { return run(s, calls) }); err != nil {
				return nil, where(err)
			}
		}
		res = append(res, tr)
	}
	return res, nil
}

func waitInterrupt(pid, tid int) error {
	st, ok, err := sys.PtraceWaitSeized(tid, StopTimeout)
	if err != nil {
		return fmt.Errorf("pid %d tid %d: %w", pid, tid, err)
	}
	if !ok {
		return stage.Hint(fmt.Errorf("pid %d tid %d: no ptrace stop within %v", pid, tid, StopTimeout), "the task may be in uninterruptible sleep (state D)")
	}
	if st.IsEventStop() {
		return nil
	}
	return fmt.Errorf("pid %d tid %d: %v instead of an interrupt stop (is the task frozen?)", pid, tid, st)
}

func exitedError(pid int) error {
	return stage.Hint(fmt.Errorf("pid %d: the process exited during the checkpoint", pid), "was it killed meanwhile? checkpoint again")
}

// checkFrozen verifies identity and that the process sits in the frozen
// cgroup: thawing that cgroup must only ever release tasks held in ptrace.
// mount is where cgroup2 is mounted.
func checkFrozen(p *pb.Process, fr *pb.Freeze, mount string) error {
	pid := int(p.Pid)
	st, err := proc.ReadStat(pid)
	if err != nil {
		return fmt.Errorf("pid %d: %w", pid, proc.ErrNoProcess)
	}
	if seize.StatExiting(st) {
		return exitedError(pid)
	}
	if st.StartTime != p.StartTime {
		return fmt.Errorf("pid %d: started at %d, not %d as recorded: the process was replaced", pid, st.StartTime, p.StartTime)
	}
	rel, err := proc.Cgroup2Of(pid)
	if err != nil {
		return err
	}
	if got := filepath.Join(mount, rel); got != filepath.Clean(fr.Cgroup) {
		return stage.Hint(fmt.Errorf("pid %d: in cgroup %s, not in the frozen %s", pid, got, fr.Cgroup), "the process was thawed or moved during the checkpoint; start again")
	}
	if tids, err := proc.Threads(pid); err == nil && len(tids) != len(p.Threads) {
		return fmt.Errorf("pid %d: has %d threads, %d recorded", pid, len(tids), len(p.Threads))
	}
	return nil
}
