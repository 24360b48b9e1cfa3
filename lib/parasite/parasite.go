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
// again before any task is detached. Nothing is written into the task
// except the scratch bytes below its red zone, which are put back.
package parasite

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/inject"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
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
	return stage.FilterCommand("cr-parasite", "append state read from inside every frozen task (sigactions, tid address, sigaltstack, timers, prctl bits) and pending signals", nil,
		func(*cli.Context) (stage.Filter, error) { return Filter(), nil })
}

// Filter is the stage without its command line.
func Filter() stage.Filter {
	up := &stage.Upstream{}
	return stage.Filter{
		Observe: up.Observe,
		Finish: func(w *image.Writer) error {
			if err := up.NeedProcs(); err != nil {
				return err
			}
			fr, procs := up.Freeze, up.Procs
			if err := up.NeedFreeze(); err != nil {
				return err
			}
			res, err := Run(fr, procs)
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

type thread struct {
	pid, tid int
	insn     uint64
	leader   bool
	seccomp  bool
}

// ThreadResult is what cr-parasite records of one thread.
type ThreadResult struct {
	State   *pb.TaskState
	Inside  *pb.ThreadInside
	Process *pb.ProcessInside // the thread group leader's only
}

// Run reads the task state of every thread of procs, which are frozen in
// fr.Cgroup. On return, success or failure, the cgroup is frozen again,
// every thread is detached and the registers, signal masks and memory of
// the tasks are as they were.
func Run(fr *pb.Freeze, procs []*pb.Process) (res []*ThreadResult, err error) {
	var threads []thread
	for _, p := range procs {
		if p.State == "Z" {
			continue // a zombie runs nothing and keeps no state but its exit code
		}
		if err := checkFrozen(p, fr); err != nil {
			return nil, err
		}
		pid := int(p.Pid)
		insn, err := inject.FindSyscallInsn(pid)
		if err != nil {
			return nil, fmt.Errorf("pid %d: %w", pid, err)
		}
		tids := p.Threads
		if len(tids) == 0 {
			tids = []uint32{p.Pid}
		}
		for _, t := range tids {
			sec, err := proc.ReadSecurity(pid, int(t))
			if err != nil {
				return nil, err
			}
			threads = append(threads, thread{pid: pid, tid: int(t), insn: insn, leader: int(t) == pid, seccomp: sec.Seccomp != 0})
		}
	}

	// Ctrl-C in a shell pipeline, or cr-dump stopping the stages after a
	// failure elsewhere, must not kill this process between injected
	// syscalls: a task would be left with borrowed registers. Finish the
	// thread at hand, put everything back, then give up.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	interrupted := func() error {
		select {
		case s := <-sigs:
			return fmt.Errorf("interrupted by %v; tasks restored and left frozen", s)
		default:
			return nil
		}
	}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	var seized []int
	thawed := false
	defer func() {
		// Refreeze before detaching: a detached thawed task would run.
		if thawed {
			if ferr := sys.CgroupFreeze(fr.Cgroup, true, FreezeTimeout); ferr != nil {
				err = errors.Join(err, fmt.Errorf("refreeze: %w", ferr))
			}
		}
		for _, tid := range seized {
			if derr := sys.PtraceDetach(tid, 0); derr != nil && err == nil {
				err = derr
			}
		}
	}()
	for _, t := range threads {
		opts := unix.PTRACE_O_TRACESYSGOOD
		if t.seccomp {
			// Injected calls would meet the task's filters, or be fatal in
			// strict mode.
			opts |= unix.PTRACE_O_SUSPEND_SECCOMP
		}
		if err := sys.PtraceSeize(t.tid, opts); err != nil {
			return nil, seizeError(t.pid, t.tid, err)
		}
		seized = append(seized, t.tid)
		if err := sys.PtraceInterrupt(t.tid); err != nil {
			return nil, fmt.Errorf("pid %d tid %d: %w", t.pid, t.tid, err)
		}
	}
	for _, t := range threads {
		if err := waitInterrupt(t.pid, t.tid); err != nil {
			return nil, err
		}
	}
	if err := interrupted(); err != nil {
		return nil, err
	}
	thawed = true
	if err := sys.CgroupFreeze(fr.Cgroup, false, 0); err != nil {
		return nil, err
	}
	for _, t := range threads {
		if err := interrupted(); err != nil {
			return nil, err
		}
		r, err := Thread(t.pid, t.tid, t.insn, t.leader)
		if err != nil {
			return nil, err
		}
		res = append(res, r)
	}
	for i, t := range threads {
		if res[i].Inside.Pending, err = pendingSignals(t.pid, t.tid, false); err != nil {
			return nil, err
		}
		if t.leader {
			if res[i].Process.SharedPending, err = pendingSignals(t.pid, t.tid, true); err != nil {
				return nil, err
			}
		}
	}
	return res, nil
}

// Thread injects the state-reading syscalls into one thread, which the
// calling locked OS thread holds in a PTRACE_EVENT_STOP, and puts it back
// as it was (End), whatever happens.
func Thread(pid, tid int, insn uint64, leader bool) (res *ThreadResult, err error) {
	where := func(err error) error { return fmt.Errorf("pid %d tid %d: %w", pid, tid, err) }
	s, err := inject.Begin(tid, insn)
	if err != nil {
		return nil, where(err)
	}
	defer func() {
		if eerr := s.End(nil); eerr != nil {
			err = errors.Join(err, where(fmt.Errorf("restore registers: %w", eerr)))
			res = nil
		}
	}()
	st := &pb.TaskState{Pid: uint32(pid), Tid: uint32(tid)}
	res = &ThreadResult{State: st}
	scratch, err := s.Scratch(scratchSize)
	if err != nil {
		return nil, where(err)
	}
	var buf [32]byte
	ret, err := s.Syscall(unix.SYS_PRCTL, unix.PR_GET_TID_ADDRESS, scratch)
	if err != nil {
		return nil, where(err)
	}
	if err := inject.Errno(ret); err != nil {
		return nil, where(fmt.Errorf("prctl(PR_GET_TID_ADDRESS): %w", err))
	}
	if err := s.ReadMem(scratch, buf[:8]); err != nil {
		return nil, where(err)
	}
	st.ClearChildTid = binary.LittleEndian.Uint64(buf[:8])
	if res.Inside, err = threadInside(s, pid, tid, scratch); err != nil {
		return nil, where(err)
	}
	if !leader {
		return res, nil
	}
	if res.Process, err = processInside(s, pid, scratch); err != nil {
		return nil, where(err)
	}
	for sig := 1; sig <= 64; sig++ {
		if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) {
			continue
		}
		// struct kernel_sigaction: handler, flags, restorer, mask (8 bytes).
		ret, err := s.Syscall(unix.SYS_RT_SIGACTION, uint64(sig), 0, scratch, 8)
		if err != nil {
			return nil, where(err)
		}
		if err := inject.Errno(ret); err != nil {
			if err == unix.EINVAL {
				continue // not a valid signal number on this kernel
			}
			return nil, where(fmt.Errorf("rt_sigaction(%d): %w", sig, err))
		}
		if err := s.ReadMem(scratch, buf[:]); err != nil {
			return nil, where(err)
		}
		le := binary.LittleEndian
		a := &pb.Sigaction{
			Signo:    uint32(sig),
			Handler:  le.Uint64(buf[0:]),
			Flags:    le.Uint64(buf[8:]),
			Restorer: le.Uint64(buf[16:]),
			Mask:     le.Uint64(buf[24:]),
		}
		if a.Handler != 0 || a.Flags != 0 || a.Mask != 0 {
			st.Sigactions = append(st.Sigactions, a)
		}
	}
	return res, nil
}

func waitInterrupt(pid, tid int) error {
	st, ok, err := sys.PtraceWaitTimeout(tid, StopTimeout)
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

func seizeError(pid, tid int, err error) error {
	err = fmt.Errorf("pid %d tid %d: %w", pid, tid, err)
	switch {
	case errors.Is(err, unix.ESRCH):
		return stage.Hint(err, "the thread exited; was the process thawed or killed during the checkpoint?")
	case errors.Is(err, unix.EPERM):
		return stage.Hint(err, "another tracer holds the thread, or ptrace is not permitted (run as root; check kernel.yama.ptrace_scope)")
	}
	return err
}

// checkFrozen verifies identity and that the process sits in the frozen
// cgroup: thawing that cgroup must only ever release tasks held in ptrace.
func checkFrozen(p *pb.Process, fr *pb.Freeze) error {
	pid := int(p.Pid)
	st, err := proc.ReadStat(pid)
	if err != nil {
		return fmt.Errorf("pid %d: %w", pid, proc.ErrNoProcess)
	}
	if st.StartTime != p.StartTime {
		return fmt.Errorf("pid %d: started at %d, not %d as recorded: the process was replaced", pid, st.StartTime, p.StartTime)
	}
	mount, err := proc.Cgroup2Mount()
	if err != nil {
		return err
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
