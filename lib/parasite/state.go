package parasite

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"crpipe/lib/inject"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// scratchSize is what one thread's injected calls need below its red
// zone: the largest result is struct itimerspec / itimerval (32 bytes).
const scratchSize = 64

// threadInside reads, by injection, the per-thread state only the thread
// can report: its alternate signal stack, parent-death signal and
// securebits.
func threadInside(s *inject.Session, pid, tid int, scratch uint64) (*pb.ThreadInside, error) {
	ti := &pb.ThreadInside{Pid: uint32(pid), Tid: uint32(tid)}
	var buf [sys.StackTSize]byte
	if err := call(s, scratch, "sigaltstack", unix.SYS_SIGALTSTACK, 0, scratch); err != nil {
		return nil, err
	}
	if err := s.ReadMem(scratch, buf[:]); err != nil {
		return nil, err
	}
	sp, flags, size := sys.ParseStackT(buf[:])
	ti.Sigaltstack = &pb.Sigaltstack{Sp: sp, Flags: flags, Size: size}
	if err := call(s, scratch, "prctl(PR_GET_PDEATHSIG)", unix.SYS_PRCTL, unix.PR_GET_PDEATHSIG, scratch); err != nil {
		return nil, err
	}
	if err := s.ReadMem(scratch, buf[:4]); err != nil {
		return nil, err
	}
	ti.PdeathSignal = binary.LittleEndian.Uint32(buf[:4])
	bits, err := s.Syscall(unix.SYS_PRCTL, unix.PR_GET_SECUREBITS)
	if err != nil {
		return nil, err
	}
	if err := inject.Errno(bits); err != nil {
		return nil, fmt.Errorf("prctl(PR_GET_SECUREBITS): %w", err)
	}
	ti.Securebits = uint32(bits)
	return ti, nil
}

// processInside reads, by injection into the thread group leader, the
// per-process state only the process can report: interval timers, POSIX
// timers (listed in /proc/PID/timers), dumpable and child-subreaper.
func processInside(s *inject.Session, pid int, scratch uint64) (*pb.ProcessInside, error) {
	pi := &pb.ProcessInside{Pid: uint32(pid)}
	var buf [sys.ItimervalSize]byte
	for which := uint32(0); which < 3; which++ {
		if err := call(s, scratch, fmt.Sprintf("getitimer(%d)", which), unix.SYS_GETITIMER, uint64(which), scratch); err != nil {
			return nil, err
		}
		if err := s.ReadMem(scratch, buf[:]); err != nil {
			return nil, err
		}
		interval, value := sys.ParseItimerval(buf[:])
		// An ITIMER_REAL that expired while the task was frozen reads 0
		// with its interval: the kernel re-arms it only when the task
		// dequeues the SIGALRM, which is then pending.
		if value != 0 || interval != 0 {
			pi.Itimers = append(pi.Itimers, &pb.Itimer{Which: which, IntervalNs: interval, ValueNs: value})
		}
	}
	timers, err := proc.ReadTimers(pid)
	if err != nil {
		return nil, err
	}
	for _, tm := range timers {
		if err := call(s, scratch, fmt.Sprintf("timer_gettime(%d)", tm.ID), unix.SYS_TIMER_GETTIME, uint64(uint32(tm.ID)), scratch); err != nil {
			return nil, err
		}
		if err := s.ReadMem(scratch, buf[:sys.ItimerspecSize]); err != nil {
			return nil, err
		}
		interval, value := sys.ParseItimerspec(buf[:sys.ItimerspecSize])
		pt := &pb.PosixTimer{Id: tm.ID, Clock: tm.Clock, Notify: tm.Notify, Signo: tm.Signo, Sigval: tm.Sigval,
			IntervalNs: interval, ValueNs: value}
		if tm.Notify&sys.SigevThreadID != 0 {
			pt.Tid = uint32(tm.Target)
		}
		pi.PosixTimers = append(pi.PosixTimers, pt)
	}
	d, err := s.Syscall(unix.SYS_PRCTL, unix.PR_GET_DUMPABLE)
	if err != nil {
		return nil, err
	}
	if err := inject.Errno(d); err != nil {
		return nil, fmt.Errorf("prctl(PR_GET_DUMPABLE): %w", err)
	}
	pi.Dumpable = uint32(d)
	if err := call(s, scratch, "prctl(PR_GET_CHILD_SUBREAPER)", unix.SYS_PRCTL, unix.PR_GET_CHILD_SUBREAPER, scratch); err != nil {
		return nil, err
	}
	if err := s.ReadMem(scratch, buf[:4]); err != nil {
		return nil, err
	}
	pi.ChildSubreaper = binary.LittleEndian.Uint32(buf[:4]) != 0
	return pi, nil
}

// call runs one injected syscall whose result lands in scratch.
func call(s *inject.Session, scratch uint64, what string, nr uintptr, args ...uint64) error {
	ret, err := s.Syscall(nr, args...)
	if err != nil {
		return err
	}
	if err := inject.Errno(ret); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// pendingSignals reads a stopped thread's queued signals (shared: its
// process's). Read after the timers, so that a timer expiring between the
// two reads shows up as a pending signal rather than being lost.
func pendingSignals(pid, tid int, shared bool) ([]*pb.Siginfo, error) {
	raws, err := sys.PtracePeekSiginfo(tid, shared)
	if err != nil {
		return nil, fmt.Errorf("pid %d tid %d: %w", pid, tid, err)
	}
	var out []*pb.Siginfo
	for _, raw := range raws {
		signo, code := sys.SiginfoSignoCode(raw)
		switch unix.Signal(signo) {
		case unix.SIGKILL:
			return nil, fmt.Errorf("pid %d tid %d: SIGKILL is pending: the process is being killed", pid, tid)
		case unix.SIGSTOP:
			return nil, stage.Hint(fmt.Errorf("pid %d tid %d: SIGSTOP is pending: not supported", pid, tid),
				"checkpoint after the process stopped and was continued, or before the signal is sent")
		}
		out = append(out, &pb.Siginfo{Signo: signo, Code: code, Raw: raw})
	}
	return out, nil
}
