// Package sys is crpipe's one door to the kernel: raw system calls, request
// numbers and kernel struct layouts live here and nowhere else. Each area has
// its own file (ptrace.go, pagemap.go, ...).
package sys

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// All ptrace requests for a tracee must come from the OS thread that seized
// it: callers wrap attach..detach in runtime.LockOSThread.

// ptrace's addr and data may be pointers converted to uintptr: the
// directive puts what they point to on the heap. On a goroutine's stack,
// moved when the call grew it, the kernel would write to the old copy,
// and the caller read the value it had before (a thread's registers
// read as nothing; seen as an xsave area that "filled" its buffer).
//
//go:uintptrescapes
func ptrace(req int, tid int, addr, data uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, uintptr(req), uintptr(tid), addr, data, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// PtraceSeize attaches to tid without stopping it (Linux 3.4). opts are
// PTRACE_O_* options, e.g. unix.PTRACE_O_TRACESYSGOOD.
func PtraceSeize(tid int, opts int) error {
	if err := ptrace(unix.PTRACE_SEIZE, tid, 0, uintptr(opts)); err != nil {
		return fmt.Errorf("ptrace seize %d: %w", tid, err)
	}
	return nil
}

// PtraceInterrupt asks a seized tracee to enter a PTRACE_EVENT_STOP. The stop
// is reported even while the task is frozen by the cgroup freezer.
func PtraceInterrupt(tid int) error {
	if err := ptrace(unix.PTRACE_INTERRUPT, tid, 0, 0); err != nil {
		return fmt.Errorf("ptrace interrupt %d: %w", tid, err)
	}
	return nil
}

// PtraceSeizeStop seizes tid and asks it for a PTRACE_EVENT_STOP, which
// the caller collects with PtraceWaitSeized.
func PtraceSeizeStop(tid int, opts int) error {
	if err := PtraceSeize(tid, opts); err != nil {
		return err
	}
	if err := PtraceInterrupt(tid); err != nil {
		PtraceDetach(tid, 0) // best effort: an exiting tracer detaches too
		return err
	}
	return nil
}

// PtraceWaitSeized collects the stop PtraceSeizeStop asked for, within d
// (ok false: none came). A task in a group stop (state T) traps on its
// own, on the attach or, detached a moment ago by another tracer, on its
// way back to the stop; the interrupt may land after that trap and stay
// pending, to trap the task again at its first resume, before any
// syscall stop. No check made before the interrupt can tell (the trap
// may come between the check and the interrupt), so after a group stop's
// trap (its signal not SIGTRAP) the task is resumed with an interrupt
// asked: one trap takes the pending one, if any, and the new one alike.
func PtraceWaitSeized(tid int, d time.Duration) (Stop, bool, error) {
	st, ok, err := PtraceWaitTimeout(tid, d)
	if err != nil || !ok || !st.IsEventStop() || st.Sig == unix.SIGTRAP {
		return st, ok, err
	}
	if err := PtraceInterrupt(tid); err != nil {
		return st, false, err
	}
	if err := PtraceCont(tid, 0); err != nil {
		return st, false, err
	}
	return PtraceWaitTimeout(tid, d)
}

// PtraceCont resumes a stopped tracee, delivering sig (0 for none).
func PtraceCont(tid int, sig int) error {
	if err := ptrace(unix.PTRACE_CONT, tid, 0, uintptr(sig)); err != nil {
		return fmt.Errorf("ptrace cont %d: %w", tid, err)
	}
	return nil
}

// PtraceSyscall resumes a stopped tracee until the next syscall entry or exit.
func PtraceSyscall(tid int, sig int) error {
	if err := ptrace(unix.PTRACE_SYSCALL, tid, 0, uintptr(sig)); err != nil {
		return fmt.Errorf("ptrace syscall %d: %w", tid, err)
	}
	return nil
}

// PtraceDetach detaches from a stopped tracee, delivering sig (0 for none).
func PtraceDetach(tid int, sig int) error {
	if err := ptrace(unix.PTRACE_DETACH, tid, 0, uintptr(sig)); err != nil {
		return fmt.Errorf("ptrace detach %d: %w", tid, err)
	}
	return nil
}

// PtraceSetOptions replaces the PTRACE_O_* options of a stopped tracee.
func PtraceSetOptions(tid int, opts int) error {
	if err := ptrace(unix.PTRACE_SETOPTIONS, tid, 0, uintptr(opts)); err != nil {
		return fmt.Errorf("ptrace setoptions %d: %w", tid, err)
	}
	return nil
}

// StopKind classifies what wait4 reported about a tracee.
type StopKind int

const (
	// StopExited: the task exited; Stop.Status is its exit code.
	StopExited StopKind = iota
	// StopKilled: the task was killed by Stop.Sig.
	StopKilled
	// StopSignal: signal-delivery stop for Stop.Sig (not yet delivered).
	StopSignal
	// StopSyscall: syscall-enter or syscall-exit stop (needs PTRACE_O_TRACESYSGOOD).
	StopSyscall
	// StopEvent: a PTRACE_EVENT_* stop; Stop.Event says which. For
	// PTRACE_EVENT_STOP Stop.Sig is SIGTRAP after PTRACE_INTERRUPT, or the
	// stopping signal for a group-stop.
	StopEvent
)

func (k StopKind) String() string {
	switch k {
	case StopExited:
		return "exited"
	case StopKilled:
		return "killed"
	case StopSignal:
		return "signal-delivery stop"
	case StopSyscall:
		return "syscall stop"
	case StopEvent:
		return "event stop"
	}
	return fmt.Sprintf("stop-kind-%d", int(k))
}

// Stop is a decoded wait status of a tracee.
type Stop struct {
	Tid    int
	Kind   StopKind
	Sig    unix.Signal
	Event  int // PTRACE_EVENT_* for StopEvent
	Status int // exit code for StopExited
}

// IsInterrupt reports a PTRACE_EVENT_STOP caused by PTRACE_INTERRUPT (or the
// initial stop after a seize), as opposed to a group-stop.
func (s Stop) IsInterrupt() bool {
	return s.Kind == StopEvent && s.Event == unix.PTRACE_EVENT_STOP && s.Sig == unix.SIGTRAP
}

// IsEventStop reports any PTRACE_EVENT_STOP (interrupt or group-stop): the
// tracee sits inside get_signal.
func (s Stop) IsEventStop() bool {
	return s.Kind == StopEvent && s.Event == unix.PTRACE_EVENT_STOP
}

func (s Stop) String() string {
	switch s.Kind {
	case StopExited:
		return fmt.Sprintf("exited with status %d", s.Status)
	case StopKilled:
		return fmt.Sprintf("killed by %s", unix.SignalName(s.Sig))
	case StopSignal:
		return fmt.Sprintf("signal-delivery stop (%s)", unix.SignalName(s.Sig))
	case StopEvent:
		return fmt.Sprintf("event stop %d (%s)", s.Event, unix.SignalName(s.Sig))
	}
	return s.Kind.String()
}

// ErrGone is wrapped by PtraceWait when the tracee exited or was killed.
var ErrGone = errors.New("task is gone")

// PtraceWait waits for the next stop of tid (wait4 with __WALL) and decodes it.
func PtraceWait(tid int) (Stop, error) {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(tid, &ws, unix.WALL, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return Stop{Tid: tid}, fmt.Errorf("wait for %d: %w", tid, err)
		}
		break
	}
	return DecodeWaitStatus(tid, ws), nil
}

// PtraceWaitTimeout is PtraceWait bounded by d (polling with WNOHANG);
// ok is false when no stop came in time.
func PtraceWaitTimeout(tid int, d time.Duration) (s Stop, ok bool, err error) {
	deadline := time.Now().Add(d)
	for i := 0; ; i++ {
		if s, ok, err = PtracePoll(tid); ok || err != nil {
			return s, ok, err
		}
		if time.Now().After(deadline) {
			return Stop{Tid: tid}, false, nil
		}
		Backoff(i)
	}
}

// PtracePoll reports tid's stop if one is waiting (wait4 with WNOHANG);
// ok is false when there is none.
func PtracePoll(tid int) (s Stop, ok bool, err error) {
	var ws unix.WaitStatus
	for {
		n, err := unix.Wait4(tid, &ws, unix.WALL|unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return Stop{Tid: tid}, false, fmt.Errorf("wait for %d: %w", tid, err)
		}
		if n != tid {
			return Stop{Tid: tid}, false, nil
		}
		return DecodeWaitStatus(tid, ws), true, nil
	}
}

// Backoff waits a little, on the calling OS thread, before the i-th look
// at something that another task is about to do (i from 0): 10 µs, then
// 10 µs more each time, up to 1 ms (time.Sleep rounds anything under a
// millisecond up to one). It sleeps rather than yields: on a busy CPU a
// yield hands the rest of a time slice to whatever else runs there, while
// the end of a sleep is a wakeup the scheduler serves promptly.
func Backoff(i int) {
	ts := unix.NsecToTimespec(int64(min(time.Duration(i+1)*10*time.Microsecond, time.Millisecond)))
	unix.Nanosleep(&ts, nil)
}

// DecodeWaitStatus classifies a wait status of a tracee.
func DecodeWaitStatus(tid int, ws unix.WaitStatus) Stop {
	s := Stop{Tid: tid}
	switch {
	case ws.Exited():
		s.Kind, s.Status = StopExited, ws.ExitStatus()
	case ws.Signaled():
		s.Kind, s.Sig = StopKilled, ws.Signal()
	case ws.Stopped():
		raw := uint32(ws)
		sig := (raw >> 8) & 0xff
		event := int(raw >> 16 & 0xff)
		switch {
		case sig == uint32(unix.SIGTRAP)|0x80:
			s.Kind, s.Sig = StopSyscall, unix.SIGTRAP
		case event != 0:
			s.Kind, s.Sig, s.Event = StopEvent, unix.Signal(sig), event
		default:
			s.Kind, s.Sig = StopSignal, unix.Signal(sig)
		}
	default:
		s.Kind = StopSignal
	}
	return s
}

// PtraceGetRegs reads the general registers of a stopped tracee.
func PtraceGetRegs(tid int) (unix.PtraceRegs, error) {
	var r unix.PtraceRegs
	if err := ptrace(unix.PTRACE_GETREGS, tid, 0, uintptr(unsafe.Pointer(&r))); err != nil {
		return r, fmt.Errorf("ptrace getregs %d: %w", tid, err)
	}
	return r, nil
}

// PtraceSetRegs writes the general registers of a stopped tracee.
func PtraceSetRegs(tid int, r *unix.PtraceRegs) error {
	if err := ptrace(unix.PTRACE_SETREGS, tid, 0, uintptr(unsafe.Pointer(r))); err != nil {
		return fmt.Errorf("ptrace setregs %d: %w", tid, err)
	}
	return nil
}

// Regset notes for PtraceGetRegset.
const (
	NT_PRSTATUS   = unix.NT_PRSTATUS   // struct user_regs_struct
	NT_PRFPREG    = unix.NT_PRFPREG    // struct user_i387_struct (fxsave)
	NT_X86_XSTATE = unix.NT_X86_XSTATE // xsave area, size depends on XCR0
)

// PtraceGetRegset reads register set nt into buf and returns the length the
// kernel filled (PTRACE_GETREGSET, Linux 2.6.34).
func PtraceGetRegset(tid int, nt int, buf []byte) (int, error) {
	if len(buf) == 0 {
		return 0, fmt.Errorf("ptrace getregset %d: empty buffer", tid)
	}
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	if err := ptrace(unix.PTRACE_GETREGSET, tid, uintptr(nt), uintptr(unsafe.Pointer(&iov))); err != nil {
		return 0, fmt.Errorf("ptrace getregset %d nt %#x: %w", tid, nt, err)
	}
	return int(iov.Len), nil
}

// PtraceGetXstate reads tid's xsave area (NT_X86_XSTATE) into buf and
// returns the part of buf it took. An area that fills buf may have been
// cut short, and is refused.
func PtraceGetXstate(tid int, buf []byte) ([]byte, error) {
	n, err := PtraceGetRegset(tid, NT_X86_XSTATE, buf)
	if err != nil {
		return nil, err
	}
	if n >= len(buf) {
		return nil, fmt.Errorf("ptrace getregset %d: xsave area larger than %d bytes", tid, len(buf))
	}
	return buf[:n], nil
}

// PtraceSetRegset writes register set nt from buf.
func PtraceSetRegset(tid int, nt int, buf []byte) error {
	if len(buf) == 0 {
		return fmt.Errorf("ptrace setregset %d: empty buffer", tid)
	}
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	if err := ptrace(unix.PTRACE_SETREGSET, tid, uintptr(nt), uintptr(unsafe.Pointer(&iov))); err != nil {
		return fmt.Errorf("ptrace setregset %d nt %#x: %w", tid, nt, err)
	}
	return nil
}

// PtraceGetSigmask reads the blocked-signal mask (bit n-1 for signal n) of a
// stopped tracee (PTRACE_GETSIGMASK, Linux 3.11).
func PtraceGetSigmask(tid int) (uint64, error) {
	var m uint64
	if err := ptrace(unix.PTRACE_GETSIGMASK, tid, 8, uintptr(unsafe.Pointer(&m))); err != nil {
		return 0, fmt.Errorf("ptrace getsigmask %d: %w", tid, err)
	}
	return m, nil
}

// PtraceStopSignal is the signal of the stop tid sits in
// (PTRACE_GETSIGINFO's si_signo). At a PTRACE_EVENT_STOP it is SIGTRAP,
// or the stop signal when the tracee's process is in a group stop.
func PtraceStopSignal(tid int) (unix.Signal, error) {
	var info [128]byte // siginfo_t, si_signo first
	if err := ptrace(unix.PTRACE_GETSIGINFO, tid, 0, uintptr(unsafe.Pointer(&info))); err != nil {
		return 0, fmt.Errorf("ptrace getsiginfo %d: %w", tid, err)
	}
	return unix.Signal(*(*int32)(unsafe.Pointer(&info[0]))), nil
}

// PtraceSetSigmask sets the blocked-signal mask of a stopped tracee. The
// kernel silently keeps SIGKILL and SIGSTOP unblockable.
func PtraceSetSigmask(tid int, m uint64) error {
	if err := ptrace(unix.PTRACE_SETSIGMASK, tid, 8, uintptr(unsafe.Pointer(&m))); err != nil {
		return fmt.Errorf("ptrace setsigmask %d: %w", tid, err)
	}
	return nil
}

// RseqConfig is struct ptrace_rseq_configuration.
type RseqConfig struct {
	AbiPointer uint64
	AbiSize    uint32
	Signature  uint32
	Flags      uint32
	_          uint32
}

// PtraceGetRseqConfig reads the rseq registration of a stopped tracee
// (PTRACE_GET_RSEQ_CONFIGURATION, Linux 5.13). AbiPointer is 0 when the
// thread registered none.
func PtraceGetRseqConfig(tid int) (RseqConfig, error) {
	var c RseqConfig
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_GET_RSEQ_CONFIGURATION, uintptr(tid), unsafe.Sizeof(c), uintptr(unsafe.Pointer(&c)), 0, 0)
	if e != 0 {
		if e == unix.EIO {
			return c, fmt.Errorf("ptrace get_rseq_configuration %d: %w (needs Linux 5.13)", tid, e)
		}
		return c, fmt.Errorf("ptrace get_rseq_configuration %d: %w", tid, e)
	}
	return c, nil
}
