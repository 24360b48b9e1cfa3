package restore

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/signal"
	"runtime"

	"golang.org/x/sys/unix"

	"crpipe/lib/inject"
	"crpipe/lib/internal/par"
	"crpipe/lib/sys"
)

const (
	prSetMm      = 35
	prSetMmMap   = 14
	prSetName    = 15
	prctlMmMapSz = 104 // struct prctl_mm_map
	sysRseq      = 334

	errRestartNoIntr   = 513
	errRestartBlock    = 516
	allSignalsBlocked  = ^uint64(0)
	maxSigactionSignal = 64

	threadStackSize = 64 << 10
	threadFlags     = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND |
		unix.CLONE_THREAD | unix.CLONE_SYSVSEM
)

// finish runs once the whole stream is read: every live task gets its
// files, its per-process state and its threads, then all of them their
// registers, and only then does any of them run.
func (rc *Ctx) finish() error {
	if err := rc.waitFills(); err != nil {
		return err
	}
	if err := rc.checkMemfdsMapped(); err != nil {
		return err
	}
	rc.countDescUses()
	var live []*task
	for _, t := range rc.Order {
		if t.zombie() {
			continue
		}
		if err := t.complete(); err != nil {
			return err
		}
		live = append(live, t)
	}
	if err := rc.completeTree(); err != nil {
		return err
	}
	// Files, per-process state and threads, a task per core at a time:
	// it is mostly round trips to the tasks, each waiting for the other.
	if err := par.For(len(live), runtime.GOMAXPROCS(0), func(i int) error { return rc.finishTask(live[i]) }); err != nil {
		return err
	}
	// From here on tasks are released one by one, and TCP connections stay
	// locked until the last step: Ctrl-C or SIGTERM, which would kill us
	// half way, leaving some tasks running and some not, wait for the end,
	// which then kills everything made (Run).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGHUP)
	defer signal.Stop(sigs)
	if faultSignalledAtEnd {
		unix.Kill(os.Getpid(), unix.SIGTERM)
		// The runtime passes a signal on to the channel from a goroutine
		// of its own: wait until it has, so that the check at the end
		// sees it however fast the release (on a busy machine it once
		// came too late).
		sigs <- <-sigs
	}
	// Every thread is seized (not stopped: the restorers go on serving)
	// before the last states, by the tracers (tracers.go).
	trs := startTracers(live, runtime.GOMAXPROCS(0))
	defer stopTracers(trs)
	if err := eachTask(trs, (*tracer).seize); err != nil {
		return err
	}
	// The last states are round trips to the restorers, like finishTask's
	// work: a task per core at a time.
	if err := par.For(len(live), runtime.GOMAXPROCS(0), func(i int) error { return rc.finishLast(live[i]) }); err != nil {
		return err
	}
	if err := eachTask(trs, (*tracer).ready); err != nil {
		return err
	}
	for _, t := range live {
		if t.stopped() {
			// Dumped in a group stop: stopped again before any of its
			// threads runs a user instruction. The SIGSTOP waits while
			// they are traced; once detached, each is inside get_signal,
			// where the first to look dequeues it and stops them all.
			if err := unix.Kill(t.pid, unix.SIGSTOP); err != nil {
				return fmt.Errorf("pid %d: stop it as dumped: %w", t.pid, err)
			}
		}
	}
	if err := eachTask(trs, (*tracer).release); err != nil {
		return err
	}
	if rc.init != nil {
		// From now on the namespace's init only reaps, and leaves with the
		// root's status.
		if err := rc.init.becomeInit(int(rc.Order[0].proc.Pid)); err != nil {
			return err
		}
	}
	for _, f := range finishers {
		if err := f(rc); err != nil {
			return err
		}
	}
	select {
	case s := <-sigs:
		return fmt.Errorf("interrupted by %v while the processes were released: all are killed", s)
	default:
	}
	return nil
}

// faultSignalledAtEnd: CRPIPE_FAULT=restore-signalled-at-end makes
// cr-restore send itself SIGTERM as it starts releasing the tasks (fault
// injection for the test of that window).
var faultSignalledAtEnd = os.Getenv("CRPIPE_FAULT") == "restore-signalled-at-end"

func (t *task) runWithScratch(r *restorer, s *scratchWriter, calls []call) error {
	if err := t.flushScratch(s); err != nil {
		return err
	}
	_, err := r.run(calls...)
	return err
}

// processCalls are the base per-process syscalls: umask, signal handlers,
// name, and the mm fields with the exe file.
func (t *task) processCalls(rc *Ctx, s *scratchWriter) ([]call, error) {
	mm := t.mm
	exe := mm.Exe
	if exe == "" {
		exe = t.files.Exe
	}
	var exeFile *os.File
	err := rc.locked(func() (err error) {
		exeFile, err = rc.openExe(t, exe)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pid %d: exe: %w", t.pid, err)
	}
	defer exeFile.Close()
	remote, err := t.r.sendFds([]*os.File{exeFile})
	if err != nil {
		return nil, err
	}
	exeFd := uint64(remote[0])

	// Every signal stays blocked from before the first handler is
	// installed until the thread gets its dumped mask (setThreadState):
	// none may run a handler in a half-restored task.
	calls := []call{
		sc("block signals", unix.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK, s.putU64s(allSignalsBlocked), 0, 8),
		sc("umask", unix.SYS_UMASK, uint64(t.files.Umask)),
	}
	if st := t.states[t.proc.Pid]; st != nil {
		for _, a := range st.Sigactions {
			if a.Signo == 0 || a.Signo > maxSigactionSignal || a.Signo == uint32(unix.SIGKILL) || a.Signo == uint32(unix.SIGSTOP) {
				return nil, fmt.Errorf("pid %d: sigaction for signal %d in the image", t.pid, a.Signo)
			}
			addr := s.putU64s(a.Handler, a.Flags, a.Restorer, a.Mask)
			calls = append(calls, sc(fmt.Sprintf("sigaction %d", a.Signo), unix.SYS_RT_SIGACTION, uint64(a.Signo), addr, 0, 8))
		}
	}
	if t.proc.Comm != "" {
		calls = append(calls, sc("set name", unix.SYS_PRCTL, prSetName, s.putString(t.proc.Comm)))
	}
	auxv := uint64(0)
	if len(mm.Auxv) > 0 {
		auxv = s.put(mm.Auxv)
	}
	mmMap := make([]byte, 0, prctlMmMapSz)
	for _, v := range []uint64{mm.StartCode, mm.EndCode, mm.StartData, mm.EndData, mm.StartBrk, mm.Brk,
		mm.StartStack, mm.ArgStart, mm.ArgEnd, mm.EnvStart, mm.EnvEnd, auxv} {
		mmMap = binary.LittleEndian.AppendUint64(mmMap, v)
	}
	mmMap = binary.LittleEndian.AppendUint32(mmMap, uint32(len(mm.Auxv)))
	mmMap = binary.LittleEndian.AppendUint32(mmMap, uint32(exeFd))
	calls = append(calls, sc("prctl PR_SET_MM_MAP", unix.SYS_PRCTL, prSetMm, prSetMmMap, s.put(mmMap), prctlMmMapSz, 0))
	calls = append(calls, sc("close exe", unix.SYS_CLOSE, exeFd))
	return calls, nil
}

// createThreads clones every thread but the leader with its dumped TID,
// each on a stack in the hole and with a control socket of its own.
func (t *task) createThreads() error {
	for i, tid := range t.proc.Threads {
		if tid == t.proc.Pid {
			continue
		}
		ours, theirs, err := controlPair()
		if err != nil {
			return err
		}
		n, err := t.r.sendFds([]*os.File{theirs})
		theirs.Close()
		if err != nil {
			ours.Close()
			return err
		}
		stack := t.stacks + uint64(i)*threadStackSize
		if _, err := t.r.clone(cloneReq{flags: threadFlags, tid: int(tid), childCtl: n[0], stack: stack, stackSize: threadStackSize}); err != nil {
			ours.Close()
			return fmt.Errorf("pid %d thread %d: %w", t.pid, tid, err)
		}
		outer := int(tid)
		if t.inNs {
			if outer, err = outerTid(t.pid, int(tid)); err != nil {
				ours.Close()
				return err
			}
		}
		t.threads = append(t.threads, &thread{tid: outer, inner: tid, r: &restorer{sock: ours, pid: outer, layout: t.r.layout}, ctlFd: n[0]})
	}
	return nil
}

// threadCalls runs, in every thread, what only the thread itself can set.
func (rc *Ctx) threadCalls(t *task) error {
	all := append([]threadRef{{t.proc.Pid, t.r}}, t.threadRefs()...)
	return t.eachThread(all, func(o threadRef, s *scratchWriter) error {
		var calls []call
		err := rc.locked(func() error {
			if st := t.states[o.tid]; st != nil {
				calls = append(calls, sc("set_tid_address", unix.SYS_SET_TID_ADDRESS, st.ClearChildTid))
			}
			if rs := t.cores[o.tid].Rseq; rs != nil && rs.AbiPointer != 0 {
				// The registration makes the kernel look at rseq_cs as the
				// restorer returns to user space, outside any critical
				// section, and clear it: keep the dumped pointer (the
				// thread's own memory is filled by now) for setThreadState
				// to put back.
				cs, err := inject.ReadRseqCs(t.pid, inject.RseqCsAddr(rs.AbiPointer))
				if err != nil {
					return fmt.Errorf("pid %d tid %d: %w", t.pid, o.tid, err)
				}
				if cs != 0 {
					if t.rseqCs == nil {
						t.rseqCs = map[uint32]uint64{}
					}
					t.rseqCs[o.tid] = cs
				}
				calls = append(calls, sc("rseq", sysRseq, rs.AbiPointer, uint64(rs.AbiSize), 0, uint64(rs.Signature)))
			}
			var err error
			calls, err = threadStateCalls(rc, t, o.tid, s, threadStates, calls)
			return err
		})
		if err != nil {
			return err
		}
		return t.runWithScratch(o.r, s, calls)
	})
}

// threadStateCalls appends to calls those of the states sts for thread tid
// of t (under rc.mu).
func threadStateCalls(rc *Ctx, t *task, tid uint32, s *scratchWriter, sts []threadState, calls []call) ([]call, error) {
	for _, st := range sts {
		c, err := st(rc, t, tid, s)
		if err != nil {
			return nil, err
		}
		calls = append(calls, c...)
	}
	return calls, nil
}

// threadRef is a thread of a task: its tid as dumped, and its restorer.
type threadRef struct {
	tid uint32
	r   *restorer
}

// threadRefs are t's threads but the leader.
func (t *task) threadRefs() []threadRef {
	refs := make([]threadRef, len(t.threads))
	for i, th := range t.threads {
		refs[i] = threadRef{th.inner, th.r}
	}
	return refs
}

// threadWorkers: threads are given their state this many at a time (a
// round trip each, mostly waiting), each worker with its own part of the
// scratch area (a process's seccomp filters, its largest arguments, take
// at most 256 KiB).
const threadWorkers = 2

// eachThread runs f for each of ths, threadWorkers at a time, each worker
// laying out its arguments in a part of the scratch area of its own.
func (t *task) eachThread(ths []threadRef, f func(o threadRef, s *scratchWriter) error) error {
	part := uint64(scratchSize / threadWorkers)
	return par.ForWorker(len(ths), threadWorkers, func(w, i int) error {
		return f(ths[i], &scratchWriter{base: t.scratch + uint64(w)*part, size: part})
	})
}

// finishTask gives t its files, its per-process state and its threads.
// Tasks are finished in parallel: what they share in rc is used under
// rc.mu.
func (rc *Ctx) finishTask(t *task) error {
	if err := t.sealVmas(); err != nil {
		return err
	}
	if err := rc.restoreFiles(t); err != nil {
		return err
	}
	s := &scratchWriter{base: t.scratch}
	calls, err := t.processCalls(rc, s)
	if err != nil {
		return err
	}
	more, err := rc.stateCalls(t, s, processStates)
	if err != nil {
		return err
	}
	calls = append(calls, more...)
	if err := t.runWithScratch(t.r, s, calls); err != nil {
		return err
	}
	if err := t.createThreads(); err != nil {
		return err
	}
	return rc.threadCalls(t)
}

// finishLast runs t's lastStates in its leader, then its lastThreadStates.
func (rc *Ctx) finishLast(t *task) error {
	s := &scratchWriter{base: t.scratch}
	calls, err := rc.stateCalls(t, s, lastStates)
	if err != nil {
		return err
	}
	if err := t.runWithScratch(t.r, s, calls); err != nil {
		return err
	}
	return rc.runLastThreadStates(t)
}

// stateCalls are the calls of states for t, made under rc.mu: tasks are
// finished in parallel.
func (rc *Ctx) stateCalls(t *task, s *scratchWriter, states []processState) ([]call, error) {
	var calls []call
	err := rc.locked(func() error {
		for _, st := range states {
			c, err := st(rc, t, s)
			if err != nil {
				return err
			}
			calls = append(calls, c...)
		}
		return nil
	})
	return calls, err
}

// tidPair is a thread as we see it (outer) and as it was dumped (inner);
// they differ in a --pidns namespace.
type tidPair struct {
	outer int
	inner uint32
}

func (t *task) tids() []tidPair {
	tids := []tidPair{{t.pid, t.proc.Pid}}
	for _, th := range t.threads {
		tids = append(tids, tidPair{th.tid, th.inner})
	}
	return tids
}

// interruptStop stops a seized thread inside get_signal and waits for it.
func interruptStop(tid int) error {
	if err := sys.PtraceInterrupt(tid); err != nil {
		return err
	}
	return waitEventStop(tid)
}

// closeThreadControls closes, through the leader's restorer, the task's
// ends of its other threads' control sockets (every thread is stopped
// by now): one round trip, where an injected close each cost 14% of the
// restore of 500 threads.
func (t *task) closeThreadControls() error {
	var calls []call
	for _, th := range t.threads {
		calls = append(calls, sc(fmt.Sprintf("close the control socket of thread %d", th.tid), unix.SYS_CLOSE, uint64(th.ctlFd)))
	}
	if len(calls) == 0 {
		return nil
	}
	_, err := t.r.run(calls...)
	return err
}

// dropRestorer closes the leader's control socket and unmaps the hole, by
// injection in the leader, then brings the leader back to a stop inside
// get_signal so that the kernel's syscall-restart logic applies to the
// registers it gets next.
func (t *task) dropRestorer() error {
	pid := t.pid
	s, err := inject.Begin(pid, t.hole+t.r.layout.SyscallInsn)
	if err != nil {
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	if err := injected(s.Syscall(unix.SYS_CLOSE, uint64(t.ctlFd))); err != nil {
		s.End(nil)
		return fmt.Errorf("pid %d: close control socket %d: %w", pid, t.ctlFd, err)
	}
	if err := injected(s.Syscall(unix.SYS_MUNMAP, t.hole, t.holeSize)); err != nil {
		s.End(nil)
		return fmt.Errorf("pid %d: unmap restorer: %w", pid, err)
	}
	// setThreadState gives the leader its dumped registers and mask next.
	return s.End(nil)
}

func injected(ret int64, err error) error {
	if err != nil {
		return err
	}
	return inject.Errno(ret)
}

// setThreadState gives a thread, stopped inside get_signal, its dumped
// registers, FPU state and signal mask.
func (t *task) setThreadState(id tidPair) error {
	tid := id.outer
	regs, err := t.regsFor(id.inner)
	if err != nil {
		return err
	}
	// The restart_block of the interrupted syscall stayed with the dumped
	// task; restart the syscall itself instead of restart_syscall(2).
	if int64(regs.Orig_rax) >= 0 && int64(regs.Rax) == -errRestartBlock {
		noIntr := int64(-errRestartNoIntr)
		regs.Rax = uint64(noIntr)
	}
	core := t.cores[id.inner]
	xsave, err := t.xsaves[id.inner].bytes()
	if err != nil {
		return fmt.Errorf("pid %d tid %d: xsave area: %w", t.pid, tid, err)
	}
	if err := sys.PtraceSetRegs(tid, &regs); err != nil {
		return fmt.Errorf("pid %d tid %d: set registers: %w", t.pid, tid, err)
	}
	if len(xsave) > 0 {
		if err := sys.PtraceSetRegset(tid, sys.NT_X86_XSTATE, xsave); err != nil {
			return fmt.Errorf("pid %d tid %d: set FPU/xsave state: %w", t.pid, tid, err)
		}
	}
	if err := sys.PtraceSetSigmask(tid, core.Sigmask); err != nil {
		return fmt.Errorf("pid %d tid %d: set signal mask: %w", t.pid, tid, err)
	}
	// A thread dumped inside an rseq critical section is aborted on its
	// way back to user space, by the pointer the restore's own returns
	// cleared (threadCalls).
	if cs := t.rseqCs[id.inner]; cs != 0 {
		if err := inject.PutRseqCs(tid, inject.RseqCsAddr(core.Rseq.AbiPointer), cs); err != nil {
			return fmt.Errorf("pid %d tid %d: %w", t.pid, tid, err)
		}
	}
	return nil
}

func waitEventStop(pid int) error {
	st, err := sys.PtraceWait(pid)
	if err != nil {
		return err
	}
	if !st.IsEventStop() {
		return fmt.Errorf("pid %d: expected a ptrace event stop, got %v", pid, st)
	}
	return nil
}
