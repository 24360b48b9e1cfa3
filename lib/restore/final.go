package restore

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"

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
	ptraceSysgoodOpt   = unix.PTRACE_O_TRACESYSGOOD
	maxSigactionSignal = 64
)

// finish gives the task its per-process state and then its registers.
func (t *task) finish() error {
	if err := t.sealVmas(); err != nil {
		return err
	}
	mm := t.mm
	exe := mm.Exe
	if exe == "" && t.files != nil {
		exe = t.files.Exe
	}
	exeFile, err := os.Open(exe)
	if err != nil {
		return fmt.Errorf("pid %d: exe: %w", t.pid, err)
	}
	defer exeFile.Close()
	remote, err := t.r.sendFds([]*os.File{exeFile})
	if err != nil {
		return err
	}
	exeFd := uint64(remote[0])

	s := scratchWriter{base: t.scratch}
	var calls []call
	if t.files != nil {
		calls = append(calls, sc("umask", unix.SYS_UMASK, uint64(t.files.Umask)))
	}
	if st := t.state; st != nil {
		for _, a := range st.Sigactions {
			if a.Signo == 0 || a.Signo > maxSigactionSignal || a.Signo == uint32(unix.SIGKILL) || a.Signo == uint32(unix.SIGSTOP) {
				return fmt.Errorf("pid %d: sigaction for signal %d in the image", t.pid, a.Signo)
			}
			addr := s.putU64s(a.Handler, a.Flags, a.Restorer, a.Mask)
			calls = append(calls, sc(fmt.Sprintf("sigaction %d", a.Signo), unix.SYS_RT_SIGACTION, uint64(a.Signo), addr, 0, 8))
		}
		calls = append(calls, sc("set_tid_address", unix.SYS_SET_TID_ADDRESS, st.ClearChildTid))
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
	if rs := t.core.Rseq; rs != nil && rs.AbiPointer != 0 {
		calls = append(calls, sc("rseq", sysRseq, rs.AbiPointer, uint64(rs.AbiSize), 0, uint64(rs.Signature)))
	}
	if err := t.flushScratch(&s); err != nil {
		return err
	}
	if _, err := t.r.run(calls...); err != nil {
		return err
	}
	return t.resume()
}

// resume unmaps the restorer and puts the dumped registers in place. The
// restorer sits in recvmsg; a PTRACE_INTERRUPT stops it inside get_signal.
// The last two syscalls (close the control socket, unmap the restorer) are
// injected at the restorer's own syscall instruction: the syscall-exit stop
// comes before the task could execute the unmapped code after it.
func (t *task) resume() error {
	regs, err := t.regsFor()
	if err != nil {
		return err
	}
	// The restart_block of the interrupted syscall stayed with the dumped
	// task; restart the syscall itself instead of restart_syscall(2).
	if int64(regs.Orig_rax) >= 0 && int64(regs.Rax) == -errRestartBlock {
		noIntr := int64(-errRestartNoIntr)
		regs.Rax = uint64(noIntr)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pid := t.pid
	if err := sys.PtraceSeize(pid, ptraceSysgoodOpt); err != nil {
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	detached := false
	defer func() {
		if !detached {
			sys.PtraceDetach(pid, 0)
		}
	}()
	if err := sys.PtraceInterrupt(pid); err != nil {
		return err
	}
	if err := waitEventStop(pid); err != nil {
		return err
	}
	if err := sys.PtraceSetSigmask(pid, allSignalsBlocked); err != nil {
		return err
	}
	insn := t.hole + t.r.layout.SyscallInsn
	if err := injectSyscall(pid, insn, unix.SYS_CLOSE, uint64(t.ctlFd)); err != nil {
		return fmt.Errorf("pid %d: close control socket: %w", pid, err)
	}
	if err := injectSyscall(pid, insn, unix.SYS_MUNMAP, t.hole, t.holeSize); err != nil {
		return fmt.Errorf("pid %d: unmap restorer: %w", pid, err)
	}
	// Back to a stop inside get_signal, so that the kernel's syscall
	// restart logic applies to the dumped registers.
	if err := sys.PtraceInterrupt(pid); err != nil {
		return err
	}
	if err := sys.PtraceCont(pid, 0); err != nil {
		return err
	}
	if err := waitEventStop(pid); err != nil {
		return err
	}
	if err := sys.PtraceSetRegs(pid, &regs); err != nil {
		return fmt.Errorf("pid %d: set registers: %w", pid, err)
	}
	if len(t.core.Xsave) > 0 {
		if err := sys.PtraceSetRegset(pid, sys.NT_X86_XSTATE, t.core.Xsave); err != nil {
			return fmt.Errorf("pid %d: set FPU/xsave state: %w", pid, err)
		}
	}
	if err := sys.PtraceSetSigmask(pid, t.core.Sigmask); err != nil {
		return fmt.Errorf("pid %d: set signal mask: %w", pid, err)
	}
	if err := sys.PtraceDetach(pid, 0); err != nil {
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	detached = true
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

// injectSyscall runs one syscall in a task stopped under ptrace, stepping
// from syscall-enter to syscall-exit stop. orig_rax = -1 keeps the kernel's
// restart logic away from the injected call.
func injectSyscall(pid int, insn uint64, nr uintptr, args ...uint64) error {
	regs, err := sys.PtraceGetRegs(pid)
	if err != nil {
		return err
	}
	var a [6]uint64
	copy(a[:], args)
	regs.Rip, regs.Rax, regs.Orig_rax = insn, uint64(nr), ^uint64(0)
	regs.Rdi, regs.Rsi, regs.Rdx, regs.R10, regs.R8, regs.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
	if err := sys.PtraceSetRegs(pid, &regs); err != nil {
		return err
	}
	for i := 0; i < 2; i++ { // enter, then exit
		if err := sys.PtraceSyscall(pid, 0); err != nil {
			return err
		}
		st, err := sys.PtraceWait(pid)
		if err != nil {
			return err
		}
		if st.Kind != sys.StopSyscall {
			return fmt.Errorf("expected a syscall stop, got %v", st)
		}
	}
	out, err := sys.PtraceGetRegs(pid)
	if err != nil {
		return err
	}
	if ret := int64(out.Rax); ret < 0 && ret > -4096 {
		return unix.Errno(-ret)
	}
	return nil
}
