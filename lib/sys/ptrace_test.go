package sys

import (
	"os/exec"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// seizedSleeper starts /bin/sleep, seizes it with opts from this thread
// (the caller has it locked) and interrupts it; it returns the process
// and the stop.
func seizedSleeper(t *testing.T, opts int) (*exec.Cmd, Stop) {
	t.Helper()
	cmd := exec.Command("/bin/sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := PtraceSeize(pid, opts); err != nil {
		t.Fatal(err)
	}
	if err := PtraceInterrupt(pid); err != nil {
		t.Fatal(err)
	}
	st, err := PtraceWait(pid)
	if err != nil {
		t.Fatal(err)
	}
	return cmd, st
}

func TestPtraceSeizeInterrupt(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd, st := seizedSleeper(t, unix.PTRACE_O_TRACESYSGOOD)
	pid := cmd.Process.Pid
	if !st.IsInterrupt() {
		t.Fatalf("got %v, want an interrupt event stop", st)
	}
	regs, err := PtraceGetRegs(pid)
	if err != nil {
		t.Fatal(err)
	}
	if regs.Rip == 0 || regs.Rsp == 0 {
		t.Fatalf("implausible registers %+v", regs)
	}
	buf := make([]byte, 16<<10)
	n, err := PtraceGetRegset(pid, NT_X86_XSTATE, buf)
	if err != nil {
		t.Fatal(err)
	}
	if n < 576 || n >= len(buf) {
		t.Fatalf("xsave area of %d bytes", n)
	}
	if err := PtraceSetRegset(pid, NT_X86_XSTATE, buf[:n]); err != nil {
		t.Fatal(err)
	}
	prs := make([]byte, 27*8)
	if n, err := PtraceGetRegset(pid, NT_PRSTATUS, prs); err != nil || n != len(prs) {
		t.Fatalf("NT_PRSTATUS: %d bytes, %v", n, err)
	}
	m, err := PtraceGetSigmask(pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := PtraceSetSigmask(pid, m|1<<(unix.SIGUSR1-1)); err != nil {
		t.Fatal(err)
	}
	if m2, _ := PtraceGetSigmask(pid); m2 != m|1<<(unix.SIGUSR1-1) {
		t.Fatalf("sigmask %#x after set", m2)
	}
	if err := PtraceSetSigmask(pid, m); err != nil {
		t.Fatal(err)
	}
	if _, err := PtraceGetRseqConfig(pid); err != nil {
		t.Fatal(err)
	}
	if err := PtraceSetRegs(pid, &regs); err != nil {
		t.Fatal(err)
	}
	if err := PtraceDetach(pid, 0); err != nil {
		t.Fatal(err)
	}
	// The task runs on after detach: a SIGTERM now kills it normally.
	cmd.Process.Signal(unix.SIGTERM)
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(interface{ Signal() unix.Signal }); !ok || ws.Signal() != unix.SIGTERM {
		t.Fatalf("child ended with %v, want SIGTERM", err)
	}
}

func TestDecodeWaitStatus(t *testing.T) {
	cases := []struct {
		ws   uint32
		kind StopKind
	}{
		{0x857f, StopSyscall},          // SIGTRAP|0x80 stopped
		{0x80<<16 | 0x057f, StopEvent}, // PTRACE_EVENT_STOP, SIGTRAP
		{0x0a7f, StopSignal},           // SIGUSR1
		{0x0100, StopExited},           // exit(1)
		{0x0009, StopKilled},           // SIGKILL
	}
	for _, c := range cases {
		if s := DecodeWaitStatus(1, unix.WaitStatus(c.ws)); s.Kind != c.kind {
			t.Errorf("status %#x: got %v, want %v", c.ws, s.Kind, c.kind)
		}
	}
}

// TestPtraceStackMoves: what ptrace writes into the caller's variables
// reaches them even when the call grows (moves) the goroutine's stack:
// the calls are made at every depth of a recursion that crosses the
// stack's growth points, the stack shrunk again by a collection after
// each. (Without go:uintptrescapes on ptrace, registers came back as
// zeros and an xsave area the size of its buffer where a growth hit the
// call.)
func TestPtraceStackMoves(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd, _ := seizedSleeper(t, 0)
	pid := cmd.Process.Pid
	buf := make([]byte, 16<<10)
	const depths = 600
	bad := 0
	for depth := range depths {
		var regs unix.PtraceRegs
		var err error
		atDepth(depth, func() {
			if regs, err = PtraceGetRegs(pid); err == nil {
				_, err = PtraceGetXstate(pid, buf)
			}
		})
		if err != nil || regs.Rip == 0 || regs.Rsp == 0 {
			if bad++; bad < 4 {
				t.Errorf("at depth %d: rip %#x rsp %#x, %v", depth, regs.Rip, regs.Rsp, err)
			}
		}
		runtime.GC() // shrinks the stack again
	}
	if bad > 0 {
		t.Errorf("%d of %d calls read wrong", bad, depths)
	}
}

// atDepth calls f depth frames down.
//
//go:noinline
func atDepth(depth int, f func()) {
	var pad [24]byte
	if depth > 0 {
		atDepth(depth-1, f)
		pad[depth%len(pad)]++
		runtime.KeepAlive(pad)
		return
	}
	f()
}

// TestSeizeStoppedAgain: a stopped process seized, detached and seized
// again at once, as one stage hands it to the next. Detached, the task
// goes back to its group stop on its own; a seize meeting it on the way
// must not leave a second trap pending, which would stop its first
// resume before the syscall-enter stop an injection steps to.
func TestSeizeStoppedAgain(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd := exec.Command("/bin/sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, unix.WUNTRACED, nil); err != nil || !ws.Stopped() {
		t.Fatalf("sleep did not stop: %v %v", ws, err)
	}
	for i := 0; i < 300; i++ {
		if err := PtraceSeizeStop(pid, unix.PTRACE_O_TRACESYSGOOD); err != nil {
			t.Fatal(err)
		}
		st, ok, err := PtraceWaitSeized(pid, 10*time.Second)
		if err != nil || !ok || !st.IsEventStop() || st.Sig != unix.SIGSTOP {
			t.Fatalf("round %d: %v %v %v, want the group stop's event stop", i, st, ok, err)
		}
		// Resumed, the task restarts its nanosleep: the next stop is
		// that syscall's enter stop.
		if err := PtraceSyscall(pid, 0); err != nil {
			t.Fatal(err)
		}
		if st, err = PtraceWait(pid); err != nil || st.Kind != StopSyscall {
			t.Fatalf("round %d: %v %v after the first resume, want a syscall stop", i, st, err)
		}
		if err := PtraceDetach(pid, 0); err != nil {
			t.Fatal(err)
		}
	}
}
