// Package inject runs system calls inside a ptrace-stopped task: one at a
// time at a syscall instruction the task already has (Syscall), or many in
// one resume through a stub mapped into the task for the purpose (Stub,
// batch.go).
//
// The task must be seized by the calling OS thread (runtime.LockOSThread)
// and sit in a PTRACE_EVENT_STOP, which the kernel reports from inside
// get_signal. Begin saves its registers and signal mask and blocks every
// signal. Each Syscall points rip at a `syscall` instruction that already
// exists in the task (FindSyscallInsn, usually in the vDSO), loads the
// number and arguments, sets orig_rax to -1, steps the task to the
// syscall-enter stop, and lets the call run on to a stop inside
// get_signal (PTRACE_INTERRUPT, no syscall-exit stop), where the task
// gets its own registers back at once. End restores registers and mask
// at such a stop. A session told its cgroup (FreezeCallsIn) runs its
// calls with the cgroup frozen from their enter stop on, and reaches
// that stop through the restart of its thread's own interrupted syscall
// where it can (frozen.go).
//
// Why orig_rax = -1 and why End goes back to get_signal: on the way out to
// user space the kernel applies its syscall-restart logic to a task whose
// orig_rax is a syscall number. Injected calls must never be restarted or
// rewritten, and the task's own interrupted syscall (say nanosleep returning
// -ERESTART_RESTARTBLOCK) must be restarted exactly as it would have been.
// Putting the original registers back at a syscall-exit stop would skip
// that logic's one chance and the task would see -516. The same holds
// between calls: a tracer killed then lets the task go on with whatever
// registers it holds, so it holds its own, in get_signal, where the
// kernel restarts its syscall as it would after End.
//
// rseq: a task stopped inside a restartable sequence's critical section
// must be aborted when it resumes, which the kernel does on its way back
// to user space, by the rseq_cs pointer in the task's struct rseq. The
// first resume of a session already makes that check, with rip pointing
// at injected code: not inside the section, so the kernel clears the
// pointer, and the task, resumed later at its own rip, would go on inside
// the section as if never preempted. Begin saves the pointer and End puts
// it back.
package inject

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"crpipe/lib/sys"
)

// state is where the task stands between calls.
type state int

const (
	atEventStop state = iota // inside get_signal
	atSyscallEnter
	running   // in a Stub batch
	elsewhere // an unexpected stop; End recovers from it
	gone
)

// Session is an injection session on one stopped thread.
type Session struct {
	tid   int
	insn  uint64
	regs  unix.PtraceRegs // as found at Begin
	mask  uint64          // as found at Begin
	state state
	saved []scratchSave
	ended bool
	sig   int // a SIGSTOP met at an unexpected stop, passed on by End
	// The process is in a group stop (state T): a SIGSTOP still queued
	// for it can only be discarded, by the SIGCONT that ends the stop.
	groupStop bool
	// The rseq_cs field of the thread's struct rseq (0: none registered)
	// and its value at Begin.
	rseqCsAddr, rseqCs uint64
	// Single calls run frozen in this cgroup where they can (frozen.go).
	freezer     *Freezer
	restartable int8   // it sits in a syscall the kernel restarts: 1 yes, -1 no, 0 not looked at
	nonce       uint64 // in r8 while a frozen call is set up
	callKept    uint64 // the rip after the call its record on the cgroup holds (0: no record)
}

type scratchSave struct {
	addr uint64
	data []byte
}

// Begin starts a session on tid, which the caller's locked OS thread has
// seized and which sits in a PTRACE_EVENT_STOP. insn is the address of a
// `syscall` instruction (0f 05) mapped executable in the task.
func Begin(tid int, syscallInsn uint64) (*Session, error) {
	regs, err := sys.PtraceGetRegs(tid)
	if err != nil {
		return nil, err
	}
	mask, err := sys.PtraceGetSigmask(tid)
	if err != nil {
		return nil, err
	}
	stopSig, err := sys.PtraceStopSignal(tid)
	if err != nil {
		return nil, err
	}
	s := &Session{tid: tid, insn: syscallInsn, regs: regs, mask: mask, groupStop: stopSig != unix.SIGTRAP}
	// Kernels before 5.13 cannot tell; they have no way to restore it either.
	if rs, err := sys.PtraceGetRseqConfig(tid); err == nil && rs.AbiPointer != 0 {
		s.rseqCsAddr = RseqCsAddr(rs.AbiPointer)
		if s.rseqCs, err = ReadRseqCs(tid, s.rseqCsAddr); err != nil {
			return nil, err
		}
	}
	// Signals arriving meanwhile stay pending and are delivered after End,
	// once the task's own mask is back.
	if err := sys.PtraceSetSigmask(tid, ^uint64(0)); err != nil {
		return nil, err
	}
	return s, nil
}

// RseqCsAddr is the address of the rseq_cs field of the struct rseq at
// abi (offsetof(struct rseq, rseq_cs) is 8).
func RseqCsAddr(abi uint64) uint64 { return abi + 8 }

// ReadRseqCs reads the rseq_cs pointer at addr (RseqCsAddr) in tid's memory.
func ReadRseqCs(tid int, addr uint64) (uint64, error) {
	var b [8]byte
	if err := ReadMem(tid, addr, b[:]); err != nil {
		return 0, fmt.Errorf("rseq area: %w", err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// PutRseqCs makes the rseq_cs pointer at addr cs again, if the kernel
// cleared it (or anything else changed it).
func PutRseqCs(tid int, addr, cs uint64) error {
	now, err := ReadRseqCs(tid, addr)
	if err != nil || now == cs {
		return err
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], cs)
	if err := WriteMem(tid, addr, b[:]); err != nil {
		return fmt.Errorf("rseq area: %w", err)
	}
	return nil
}

// Tid is the thread the session injects into.
func (s *Session) Tid() int { return s.tid }

// Regs returns the registers saved at Begin.
func (s *Session) Regs() unix.PtraceRegs { return s.regs }

// Sigmask returns the signal mask saved at Begin.
func (s *Session) Sigmask() uint64 { return s.mask }

// ErrUnexpectedStop is wrapped when the task stops somewhere a session did
// not lead it (a signal, an exit).
var ErrUnexpectedStop = errors.New("unexpected stop")

// ErrSigstop is wrapped, beside ErrUnexpectedStop, when the unexpected
// stop is a SIGSTOP someone sent the task meanwhile (End passes it on).
var ErrSigstop = errors.New("SIGSTOP sent during the injection")

// Syscall runs syscall nr with up to six arguments in the task and returns
// the raw rax (a negative errno on failure; see Errno).
func (s *Session) Syscall(nr uintptr, args ...uint64) (int64, error) {
	if s.ended {
		return 0, errors.New("inject: session already ended")
	}
	if len(args) > 6 {
		return 0, fmt.Errorf("inject: %d syscall arguments, at most 6", len(args))
	}
	if s.state != atEventStop {
		return 0, fmt.Errorf("inject: tid %d is not at a stop where a syscall can start", s.tid)
	}
	var a [6]uint64
	copy(a[:], args)
	if s.frozenRoute(nr, len(args), a) {
		return s.frozenSyscall(nr, a)
	}
	if err := s.enterAtInsn(nr, a); err != nil {
		return 0, err
	}
	return s.runFromEnter(nr)
}

// runFromEnter lets the call set up at the enter stop run. The task stops
// on its way out, inside get_signal: the interrupt is pending and
// PTRACE_CONT traces no syscall exit. There it gets its own registers
// back (holdOwn), before the kernel's restart logic, which comes after
// get_signal, looks at them. It returns the call's rax.
func (s *Session) runFromEnter(nr uintptr) (int64, error) {
	if err := sys.PtraceInterrupt(s.tid); err != nil {
		s.state = elsewhere
		return 0, err
	}
	if err := s.step(atEventStop); err != nil {
		return 0, fmt.Errorf("inject syscall %d: %w", nr, err)
	}
	got, err := sys.PtraceGetRegs(s.tid)
	if err != nil {
		return 0, err
	}
	return int64(got.Rax), s.holdOwn()
}

// enterAtInsn steps the task from its event stop to the syscall-enter
// stop of nr with arguments a at the syscall instruction insn, on
// borrowed registers.
func (s *Session) enterAtInsn(nr uintptr, a [6]uint64) error {
	r := s.regs
	r.Rip = s.insn
	r.Rax = uint64(nr)
	r.Orig_rax = ^uint64(0)
	r.Rdi, r.Rsi, r.Rdx, r.R10, r.R8, r.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
	if err := sys.PtraceSetRegs(s.tid, &r); err != nil {
		return err
	}
	if err := s.step(atSyscallEnter); err != nil {
		return fmt.Errorf("inject syscall %d: %w", nr, err)
	}
	got, err := sys.PtraceGetRegs(s.tid)
	if err != nil {
		return err
	}
	if got.Orig_rax != uint64(nr) || got.Rip != s.insn+2 {
		s.state = elsewhere
		return fmt.Errorf("inject syscall %d: tid %d entered syscall %d at %#x, not at %#x: %w", nr, s.tid, int64(got.Orig_rax), got.Rip-2, s.insn, ErrUnexpectedStop)
	}
	return nil
}

// step resumes the task to its next syscall stop or, want atEventStop,
// to the event stop of an interrupt already asked for.
func (s *Session) step(want state) error {
	resume := sys.PtraceSyscall
	if want == atEventStop {
		resume = sys.PtraceCont
	}
	var st sys.Stop
	for {
		if err := resume(s.tid, 0); err != nil {
			s.state = elsewhere
			return err
		}
		var err error
		if st, err = sys.PtraceWait(s.tid); err != nil {
			s.state = elsewhere
			return err
		}
		// A stopped process's queued SIGSTOP (kill -STOP sent twice)
		// meets the first resume; discarded, as SIGCONT would.
		if !(s.groupStop && st.Kind == sys.StopSignal && st.Sig == unix.SIGSTOP) {
			break
		}
	}
	if want == atEventStop && st.IsEventStop() || want != atEventStop && st.Kind == sys.StopSyscall {
		s.state = want
		return nil
	}
	return s.stopped(st)
}

// stopped records a stop that was not the one due and returns the error
// that says so.
func (s *Session) stopped(st sys.Stop) error {
	switch st.Kind {
	case sys.StopExited, sys.StopKilled:
		s.state = gone
		return fmt.Errorf("tid %d %v: %w", s.tid, st, sys.ErrGone)
	case sys.StopSignal:
		s.sig = passOn(st.Sig)
	}
	s.state = elsewhere
	if st.IsEventStop() {
		s.state = atEventStop
	}
	if s.sig == int(unix.SIGSTOP) {
		return fmt.Errorf("tid %d: %v where a syscall stop was due: %w: %w", s.tid, st, ErrUnexpectedStop, ErrSigstop)
	}
	return fmt.Errorf("tid %d: %v where a syscall stop was due: %w", s.tid, st, ErrUnexpectedStop)
}

// passOn is the signal to resume a signal-delivery stop with. Every
// signal is blocked during a session, so such a stop is a SIGSTOP someone
// sent, passed on (a group stop, as without the session), or a fault of
// injected code, which the task must never see: discarded.
func passOn(sig unix.Signal) int {
	if sig == unix.SIGSTOP {
		return int(sig)
	}
	return 0
}

// Errno turns a raw syscall return into an error (nil for success).
func Errno(ret int64) error {
	if ret < 0 && ret >= -4095 {
		return unix.Errno(-ret)
	}
	return nil
}

// End returns the task to a stop inside get_signal, writes back scratch
// memory, sets its registers (nil: those saved at Begin) and restores the
// signal mask saved at Begin. The task stays seized and stopped; the
// caller detaches it. End is safe to call after a failed Syscall.
func (s *Session) End(regs *unix.PtraceRegs) error {
	if s.ended {
		return errors.New("inject: session already ended")
	}
	s.ended = true
	if s.state == gone {
		return fmt.Errorf("tid %d: %w", s.tid, sys.ErrGone)
	}
	if err := s.toEventStop(); err != nil {
		return err
	}
	var errs []error
	for i := len(s.saved) - 1; i >= 0; i-- {
		if err := WriteMem(s.tid, s.saved[i].addr, s.saved[i].data); err != nil {
			errs = append(errs, fmt.Errorf("restore scratch memory: %w", err))
		}
	}
	s.saved = nil
	if s.rseqCsAddr != 0 {
		if err := PutRseqCs(s.tid, s.rseqCsAddr, s.rseqCs); err != nil {
			errs = append(errs, fmt.Errorf("restore rseq_cs: %w", err))
		}
	}
	if regs == nil {
		regs = &s.regs
	}
	if err := sys.PtraceSetRegs(s.tid, regs); err != nil {
		errs = append(errs, err)
	}
	if err := sys.PtraceSetSigmask(s.tid, s.mask); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 { // else the record serves the thaw
		errs = append(errs, s.dropCall())
	}
	return errors.Join(errs...)
}

// holdOwn gives the thread, back at an event stop from a batch, its own
// registers and rseq_cs while it waits for the next batch or End: a
// tracer that dies meanwhile lets it go on in its own code, as End would
// but with every signal still blocked (KeepMasks), instead of in a stub
// that may be gone by then.
func (s *Session) holdOwn() error {
	if s.rseqCsAddr != 0 {
		if err := PutRseqCs(s.tid, s.rseqCsAddr, s.rseqCs); err != nil {
			return err
		}
	}
	return sys.PtraceSetRegs(s.tid, &s.regs)
}

// toEventStop leads the task back into get_signal.
func (s *Session) toEventStop() error {
	if s.state == atEventStop {
		return nil
	}
	if s.state == atSyscallEnter {
		// Cancel the pending injected call rather than run it on the way out.
		r, err := sys.PtraceGetRegs(s.tid)
		if err != nil {
			return err
		}
		r.Orig_rax = ^uint64(0)
		if err := sys.PtraceSetRegs(s.tid, &r); err != nil {
			return err
		}
	}
	if err := sys.PtraceInterrupt(s.tid); err != nil {
		return err
	}
	// On its way out to user space the task meets the pending interrupt in
	// get_signal, before any syscall-restart logic looks at its registers.
	// A running stub meets it on leaving pause(2).
	if s.state != running {
		sig := s.sig
		s.sig = 0
		if err := sys.PtraceCont(s.tid, sig); err != nil {
			return err
		}
	}
	for i := 0; ; i++ {
		st, err := sys.PtraceWait(s.tid)
		if err != nil {
			return err
		}
		switch {
		case st.IsEventStop():
			s.state = atEventStop
			return nil
		case st.Kind == sys.StopExited || st.Kind == sys.StopKilled:
			s.state = gone
			return fmt.Errorf("tid %d %v: %w", s.tid, st, sys.ErrGone)
		case i > 16:
			return fmt.Errorf("tid %d: no event stop after interrupt (last %v): %w", s.tid, st, ErrUnexpectedStop)
		case st.Kind == sys.StopSignal:
			// Only SIGSTOP or a synchronous fault gets past the full
			// mask. SIGSTOP ends in a group-stop, itself an event stop
			// in get_signal.
			if err := sys.PtraceCont(s.tid, passOn(st.Sig)); err != nil {
				return err
			}
		default:
			if err := sys.PtraceCont(s.tid, 0); err != nil {
				return err
			}
		}
	}
}
