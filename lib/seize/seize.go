// Package seize is the cr-seize stage: it attaches to every thread of every
// frozen process in the stream with PTRACE_SEIZE, stops it with
// PTRACE_INTERRUPT (the stop is reported while the cgroup is frozen),
// reads its CPU state and what else can be read from outside, and detaches,
// leaving it frozen. Per process it appends a ThreadCore and a ThreadState
// record per thread (registers, FPU, sigmask, rseq; name, scheduling,
// affinity, robust futex list, credentials, seccomp filters), then a
// ProcessState record (personality, resource limits). Zombies are skipped.
//
// Refused, with a message naming the state: a thread traced by another
// tracer, processes sharing one address space (vfork in progress), threads
// of one process with different seccomp filters.
package seize

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/arch"
	"crpipe/lib/cli"
	"crpipe/lib/image"
	"crpipe/lib/internal/par"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// StopTimeout bounds the wait for a thread's interrupt stop.
var StopTimeout = 10 * time.Second

// Command is cr-seize.
func Command() *cli.App {
	return stage.FilterCommand("cr-seize", "append registers, FPU, sigmask, rseq, scheduling, credentials, seccomp and rlimits of every frozen thread", nil,
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
			if err := CheckShared(procs); err != nil {
				return err
			}
			mount, err := proc.Cgroup2Mount()
			if err != nil {
				return err
			}
			// Each process is seized, read and detached on its own: one
			// tracer thread per core, each taking every nth process. Its
			// records are written once those before it are: a thread's
			// xsave area is held only until then, not to the end.
			return par.Ordered(len(procs), par.Workers(len(procs)), func(i int) (*State, error) {
				if procs[i].State == "Z" {
					return nil, nil // a zombie has no threads to read
				}
				if err := CheckFrozen(procs[i], fr, mount); err != nil {
					return nil, err
				}
				return Process(procs[i])
			}, func(i int, st *State) error {
				if st == nil {
					return nil
				}
				for _, c := range st.Cores {
					if err := w.WriteMessage(image.TypeThreadCore, c); err != nil {
						return fmt.Errorf("output: %w", err)
					}
				}
				for _, ts := range st.Threads {
					if err := w.WriteMessage(image.TypeThreadState, ts); err != nil {
						return fmt.Errorf("output: %w", err)
					}
				}
				if err := w.WriteMessage(image.TypeProcessState, st.Process); err != nil {
					return fmt.Errorf("output: %w", err)
				}
				stage.Logf("pid %d: %d thread(s) read", procs[i].Pid, len(st.Cores))
				return nil
			})
		},
	}
}

// CheckFrozen verifies that p is the process cr-freeze recorded (same
// start time) and still sits in the frozen cgroup: reading a running or
// reused process would give a silently wrong image. mount is where
// cgroup2 is mounted (proc.Cgroup2Mount).
func CheckFrozen(p *pb.Process, fr *pb.Freeze, mount string) error {
	pid := int(p.Pid)
	st, err := proc.ReadStat(pid)
	if err != nil {
		return fmt.Errorf("pid %d: %w", pid, proc.ErrNoProcess)
	}
	if st.StartTime != p.StartTime {
		return fmt.Errorf("pid %d: started at %d, not %d as recorded: the process was replaced", pid, st.StartTime, p.StartTime)
	}
	if fr == nil {
		return stage.Hint(fmt.Errorf("pid %d: the stream has no freeze record", pid), "start the stream with cr-freeze")
	}
	rel, err := proc.Cgroup2Of(pid)
	if err != nil {
		return err
	}
	if got := filepath.Join(mount, rel); got != filepath.Clean(fr.Cgroup) {
		return stage.Hint(fmt.Errorf("pid %d: in cgroup %s, not in the frozen %s", pid, got, fr.Cgroup), "the process was thawed or moved during the checkpoint; start again")
	}
	return nil
}

// State is what cr-seize records of one process.
type State struct {
	Cores   []*pb.ThreadCore  // per thread, the leader first
	Threads []*pb.ThreadState // per thread, the leader first
	Process *pb.ProcessState
}

// Process reads the CPU and task state of every thread of p. All ptrace
// requests come from one locked OS thread; every thread is detached (still
// frozen) before it returns, on success or failure.
func Process(p *pb.Process) (*State, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	pid := int(p.Pid)
	tids := make([]int, len(p.Threads))
	for i, t := range p.Threads {
		tids[i] = int(t)
	}
	if len(tids) == 0 {
		tids = []int{pid}
	}
	var seized []int
	defer func() {
		for _, tid := range seized {
			sys.PtraceDetach(tid, 0)
		}
	}()
	// A thread's credentials are read once, before it is seized: frozen,
	// it cannot change them.
	secs := make([]*proc.Security, len(tids))
	for i, tid := range tids {
		var err error
		if secs[i], err = checkTracer(pid, tid); err != nil {
			return nil, err
		}
		if err := sys.PtraceSeizeStop(tid, unix.PTRACE_O_TRACESYSGOOD); err != nil {
			return nil, ThreadError(pid, tid, err)
		}
		seized = append(seized, tid)
	}
	for _, tid := range tids {
		if err := WaitInterrupt(pid, tid); err != nil {
			return nil, err
		}
	}
	st := &State{}
	for i, tid := range tids {
		c, err := ReadThread(pid, tid)
		if err != nil {
			return nil, err
		}
		st.Cores = append(st.Cores, c)
		ts, err := ReadThreadState(pid, tid, secs[i])
		if err != nil {
			return nil, err
		}
		st.Threads = append(st.Threads, ts)
	}
	if err := CheckThreads(pid, st.Threads); err != nil {
		return nil, err
	}
	var err error
	if st.Process, err = ReadProcessState(pid); err != nil {
		return nil, err
	}
	for len(seized) > 0 {
		tid := seized[0]
		if err := sys.PtraceDetach(tid, 0); err != nil {
			return nil, ThreadError(pid, tid, err)
		}
		seized = seized[1:]
	}
	return st, nil
}

// Exiting reports a thread that is gone, a zombie, or on its way out
// (PF_EXITING: killed while frozen, it exits once thawed or traced).
func Exiting(pid, tid int) bool {
	st, err := proc.ReadTaskStat(pid, tid)
	return err != nil || StatExiting(st)
}

// StatExiting is Exiting for a stat already read.
func StatExiting(st *proc.Stat) bool {
	const pfExiting = 0x4
	return st.State == 'Z' || st.State == 'X' || st.Flags&pfExiting != 0
}

// ThreadError explains a ptrace request refused for a thread of the dump.
// A thread killed while frozen is exiting, and ptrace refuses it with
// EPERM (or ESRCH once it is gone): that says so, rather than blame a
// tracer. Otherwise EPERM means another tracer, or no permission.
func ThreadError(pid, tid int, err error) error {
	err = fmt.Errorf("pid %d tid %d: %w", pid, tid, err)
	if !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.EPERM) {
		return err
	}
	if Exiting(pid, tid) {
		return stage.Hint(fmt.Errorf("%w: the thread exited during the checkpoint", err), "was the process killed meanwhile? checkpoint again")
	}
	if errors.Is(err, unix.ESRCH) {
		return stage.Hint(err, "the thread exited; was the process thawed or killed during the checkpoint?")
	}
	return stage.Hint(err, "another tracer (a debugger, or a stage left attached) holds the thread, or ptrace is not permitted (run as root; check kernel.yama.ptrace_scope)")
}

// WaitInterrupt waits for the PTRACE_EVENT_STOP that PTRACE_INTERRUPT asked
// for. A frozen task reports nothing else first: the freezer keeps it from
// dequeuing signals.
func WaitInterrupt(pid, tid int) error {
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
	if st.Kind == sys.StopSignal {
		// Put the signal back; we do not get to look at a running task.
		sys.PtraceDetach(tid, int(st.Sig))
		return stage.Hint(fmt.Errorf("pid %d tid %d: %v instead of an interrupt stop", pid, tid, st), "the task is not frozen; start the stream with cr-freeze")
	}
	return fmt.Errorf("pid %d tid %d: %v", pid, tid, st)
}

// xsaveBufs: room for any xsave area. A record keeps only its own (~2.7
// KB against 16 KiB of room: 1,000 threads held 9.5 MB of it until their
// records were written).
var xsaveBufs = sync.Pool{New: func() any { return new([arch.XsaveBufSize]byte) }}

// ReadThread reads the state of a thread sitting in a ptrace stop.
func ReadThread(pid, tid int) (*pb.ThreadCore, error) {
	where := func(err error) error { return fmt.Errorf("pid %d tid %d: %w", pid, tid, err) }
	regs, err := sys.PtraceGetRegs(tid)
	if err != nil {
		return nil, where(err)
	}
	if err := arch.CheckSegments(regs.Cs, regs.Ss); err != nil {
		return nil, where(err)
	}
	bufp := xsaveBufs.Get().(*[arch.XsaveBufSize]byte)
	defer xsaveBufs.Put(bufp)
	xsave, err := sys.PtraceGetXstate(tid, bufp[:])
	if err != nil {
		return nil, where(err)
	}
	if _, err := arch.ParseXsave(xsave); err != nil {
		return nil, where(err)
	}
	mask, err := sys.PtraceGetSigmask(tid)
	if err != nil {
		return nil, where(err)
	}
	c := &pb.ThreadCore{
		Pid:     uint32(pid),
		Tid:     uint32(tid),
		Regs:    arch.RegsToPB(&regs),
		Xsave:   bytes.Clone(xsave),
		Sigmask: mask,
	}
	rs, err := sys.PtraceGetRseqConfig(tid)
	if err != nil {
		return nil, where(err)
	}
	if rs.AbiPointer != 0 {
		c.Rseq = &pb.Rseq{AbiPointer: rs.AbiPointer, AbiSize: rs.AbiSize, Flags: rs.Flags, Signature: rs.Signature}
	}
	return c, nil
}
