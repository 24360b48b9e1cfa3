package inject

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/internal/testprog"
	"crpipe/lib/proc"
	"crpipe/lib/sys"
)

// seizedSleeper starts a task sleeping in nanosleep, finds its syscall
// instruction, locks the test's goroutine to its thread until the test's
// end (ptrace requests come from the tracer thread) and seizes the task at
// an interrupt stop.
func seizedSleeper(t *testing.T) (*testprog.Proc, uint64) {
	t.Helper()
	p := testprog.Start(t, "sleep", "2")
	time.Sleep(200 * time.Millisecond) // let it enter nanosleep
	insn, err := FindSyscallInsn(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	seizeStop(t, p.Pid)
	return p, insn
}

// seizeStop seizes pid from the locked test thread and waits for the
// interrupt stop. The caller has called runtime.LockOSThread.
// seizeBegin seizes pid, stops it and begins a session injecting at insn.
func seizeBegin(t *testing.T, pid int, insn uint64) *Session {
	t.Helper()
	seizeStop(t, pid)
	s, err := Begin(pid, insn)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func seizeStop(t *testing.T, pid int) {
	t.Helper()
	if err := sys.PtraceSeize(pid, unix.PTRACE_O_TRACESYSGOOD); err != nil {
		t.Fatal(err)
	}
	if err := sys.PtraceInterrupt(pid); err != nil {
		t.Fatal(err)
	}
	st, err := sys.PtraceWait(pid)
	if err != nil {
		t.Fatal(err)
	}
	if !st.IsEventStop() {
		t.Fatalf("pid %d: %v, want an event stop", pid, st)
	}
}

// TestFindSyscallInsn: both ways of finding the instruction, the vDSO
// looked up through auxv and PROCMAP_QUERY, and the scan of the maps,
// find one in the process's [vdso].
func TestFindSyscallInsn(t *testing.T) {
	p := testprog.Start(t, "pause")
	maps, err := proc.ReadMaps(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	var vdso *proc.Mapping
	for i := range maps {
		if maps[i].Path == "[vdso]" {
			vdso = &maps[i]
		}
	}
	if vdso == nil {
		t.Fatal("no [vdso] in the maps")
	}
	fast, ok := vdsoSyscallInsn(p.Pid)
	if !ok {
		t.Fatal("not found through auxv and PROCMAP_QUERY")
	}
	scanned, err := scanSyscallInsn(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	found, err := FindSyscallInsn(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []uint64{fast, scanned, found} {
		if addr < vdso.Start || addr+2 > vdso.End {
			t.Errorf("%#x is not in the [vdso] at %#x-%#x", addr, vdso.Start, vdso.End)
		}
		b := make([]byte, 2)
		if err := ReadMem(p.Pid, addr, b); err != nil || !bytes.Equal(b, []byte{0x0f, 0x05}) {
			t.Errorf("at %#x: % x, %v", addr, b, err)
		}
	}
}

// TestInjectSleeping injects into a task interrupted in nanosleep: the
// injected calls see the task's state, and after detach the nanosleep is
// restarted rather than failing with EINTR or -516.
func TestInjectSleeping(t *testing.T) {
	p, insn := seizedSleeper(t)
	before, err := sys.PtraceGetRegs(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if int64(before.Rax) != -516 { // -ERESTART_RESTARTBLOCK
		t.Logf("rax at the stop is %d (task not in nanosleep?)", int64(before.Rax))
	}
	mask, _ := sys.PtraceGetSigmask(p.Pid)
	stack := make([]byte, 4096)
	if err := ReadMem(p.Pid, before.Rsp-uint64(len(stack)), stack); err != nil {
		t.Fatal(err)
	}

	s, err := Begin(p.Pid, insn)
	if err != nil {
		t.Fatal(err)
	}
	ret, err := s.Syscall(unix.SYS_GETPID)
	if err != nil || ret != int64(p.Pid) {
		t.Fatalf("getpid: %d, %v", ret, err)
	}
	act, err := s.Scratch(32)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WriteMem(act, bytes.Repeat([]byte{0xaa}, 32)); err != nil {
		t.Fatal(err)
	}
	ret, err = s.Syscall(unix.SYS_RT_SIGACTION, uint64(unix.SIGUSR1), 0, act, 8)
	if err != nil || Errno(ret) != nil {
		t.Fatalf("rt_sigaction: %d, %v", ret, err)
	}
	k := make([]byte, 32)
	if err := s.ReadMem(act, k); err != nil {
		t.Fatal(err)
	}
	if h := binary.LittleEndian.Uint64(k); h != p.Handler {
		t.Fatalf("handler %#x, target says %#x", h, p.Handler)
	}
	if m := binary.LittleEndian.Uint64(k[24:]); m != 1<<(unix.SIGUSR2-1) {
		t.Fatalf("sa_mask %#x", m)
	}
	tidp, err := s.Scratch(8)
	if err != nil {
		t.Fatal(err)
	}
	if ret, err = s.Syscall(unix.SYS_PRCTL, unix.PR_GET_TID_ADDRESS, tidp); err != nil || ret != 0 {
		t.Fatalf("prctl: %d, %v", ret, err)
	}
	if err := s.ReadMem(tidp, k[:8]); err != nil || binary.LittleEndian.Uint64(k) != p.TidAddr {
		t.Fatalf("tid address %#x, target says %#x (%v)", binary.LittleEndian.Uint64(k), p.TidAddr, err)
	}
	// An injected failure is a return value, not a Go error.
	if ret, err = s.Syscall(unix.SYS_CLOSE, 1<<20); err != nil || Errno(ret) != unix.EBADF {
		t.Fatalf("close(bad): %d, %v", ret, err)
	}
	if err := s.End(nil); err != nil {
		t.Fatal(err)
	}
	after, _ := sys.PtraceGetRegs(p.Pid)
	if after != before {
		t.Fatalf("registers changed:\n%+v\n%+v", before, after)
	}
	if m, _ := sys.PtraceGetSigmask(p.Pid); m != mask {
		t.Fatalf("sigmask %#x, was %#x", m, mask)
	}
	stack2 := make([]byte, len(stack))
	ReadMem(p.Pid, before.Rsp-uint64(len(stack)), stack2)
	if !bytes.Equal(stack, stack2) {
		t.Fatal("stack below rsp changed")
	}
	if err := sys.PtraceDetach(p.Pid, 0); err != nil {
		t.Fatal(err)
	}
	line, err := p.Next(5 * time.Second)
	if err != nil || line != "slept ok" {
		t.Fatalf("target: %q, %v", line, err)
	}
}

// TestInjectBusy interrupts a task computing in registers several times:
// it must end with the same result as an undisturbed run.
func TestInjectBusy(t *testing.T) {
	const rounds = 3
	p := testprog.Start(t, "busy", "20")
	insn, err := FindSyscallInsn(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < rounds; i++ {
		time.Sleep(50 * time.Millisecond)
		func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			s := seizeBegin(t, p.Pid, insn)
			for j := 0; j < 10; j++ {
				if ret, err := s.Syscall(unix.SYS_GETPID); err != nil || ret != int64(p.Pid) {
					t.Fatalf("getpid: %d, %v", ret, err)
				}
			}
			if _, err := s.Scratch(64); err != nil {
				t.Fatal(err)
			}
			if err := s.End(nil); err != nil {
				t.Fatal(err)
			}
			if err := sys.PtraceDetach(p.Pid, 0); err != nil {
				t.Fatal(err)
			}
		}()
	}
	p.CheckBusy(t, 20)
}

// TestEndWithRegs sets other registers at End: the task resumes there.
func TestEndWithRegs(t *testing.T) {
	p := testprog.Start(t, "tick")
	insn, err := FindSyscallInsn(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	s := seizeBegin(t, p.Pid, insn)
	if _, err := s.Syscall(unix.SYS_GETPID); err != nil {
		t.Fatal(err)
	}
	// Resume at the syscall instruction as exit_group(7), with no pending
	// syscall to restart.
	r := s.Regs()
	r.Rip, r.Rax, r.Rdi, r.Orig_rax = insn, unix.SYS_EXIT_GROUP, 7, ^uint64(0)
	if err := s.End(&r); err != nil {
		t.Fatal(err)
	}
	if err := sys.PtraceDetach(p.Pid, 0); err != nil {
		t.Fatal(err)
	}
	werr, ok := p.Wait(5 * time.Second)
	if !ok || p.Cmd.ProcessState.ExitCode() != 7 {
		t.Fatalf("target did not exit 7: %v", werr)
	}
}

// TestTracerGoneBetweenCalls: the tracer lets go of the thread (as its
// death does) at the stop after an injected call, without End. The
// thread holds its own registers there (holdOwn), so it goes on with
// its own code: the interrupted nanosleep restarts and sleeps its full
// time, and a computation in registers ends with the undisturbed result.
// (With the borrowed registers it would run on after the vDSO's syscall
// instruction and crash.)
func TestTracerGoneBetweenCalls(t *testing.T) {
	t.Run("sleeping", func(t *testing.T) {
		p, insn := seizedSleeper(t)
		s, err := Begin(p.Pid, insn)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if ret, err := s.Syscall(unix.SYS_GETPID); err != nil || ret != int64(p.Pid) {
				t.Fatalf("getpid: %d, %v", ret, err)
			}
		}
		if err := sys.PtraceDetach(p.Pid, 0); err != nil {
			t.Fatal(err)
		}
		line, err := p.Next(5 * time.Second)
		if err != nil || line != "slept ok" {
			t.Fatalf("target: %q, %v", line, err)
		}
	})
	t.Run("busy", func(t *testing.T) {
		p := testprog.Start(t, "busy", "5")
		insn, err := FindSyscallInsn(p.Pid)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		s := seizeBegin(t, p.Pid, insn)
		if ret, err := s.Syscall(unix.SYS_GETPPID); err != nil || ret <= 0 {
			t.Fatalf("getppid: %d, %v", ret, err)
		}
		if err := sys.PtraceDetach(p.Pid, 0); err != nil {
			t.Fatal(err)
		}
		p.CheckBusy(t, 5)
	})
}

// frozenTarget starts testprog with args (a sleeper or busy), seized at
// an interrupt stop in a cgroup of its own, and begins a session on it
// whose calls run frozen in that cgroup.
func frozenTarget(t *testing.T, args ...string) (*testprog.Proc, *Session, string) {
	t.Helper()
	p := testprog.Start(t, args...)
	time.Sleep(200 * time.Millisecond) // asleep, or computing
	insn, err := FindSyscallInsn(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	cg := p.OwnCgroup(t)
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	s := seizeBegin(t, p.Pid, insn)
	s.FreezeCallsIn(cg)
	return p, s, cg
}

// checkFrozenTarget checks what the target says once it ran on: a
// sleeper slept its full time, busy computed the undisturbed result.
func checkFrozenTarget(t *testing.T, p *testprog.Proc, args []string) {
	t.Helper()
	if args[0] == "busy" {
		n, _ := strconv.ParseUint(args[1], 10, 64)
		p.CheckBusy(t, n)
		return
	}
	if line, err := p.Next(5 * time.Second); err != nil || line != "slept ok" {
		t.Fatalf("target: %q, %v", line, err)
	}
}

var frozenTargets = [][]string{{"sleep", "2"}, {"busy", "5"}}

// TestFrozenCall: calls run frozen (frozen.go), in a thread asleep in
// nanosleep in place of its restart, in a busy thread from the vDSO's
// instruction, with a record of its registers on the cgroup while the
// session lasts. They return what they should, the cgroup is thawed
// between and after them, End leaves the registers as they were and
// removes the record, and the target then runs on undisturbed.
func TestFrozenCall(t *testing.T) {
	for _, args := range frozenTargets {
		t.Run(args[0], func(t *testing.T) {
			p, s, cg := frozenTarget(t, args...)
			before := s.Regs()
			if s.carriesFrozen() != (args[0] == "sleep") {
				t.Fatalf("rax %d orig_rax %d: carries frozen calls through its own syscall: %v", int64(before.Rax), int64(before.Orig_rax), s.carriesFrozen())
			}
			if ret, err := s.Syscall(unix.SYS_GETPID); err != nil || ret != int64(p.Pid) {
				t.Fatalf("getpid: %d, %v", ret, err)
			}
			if names, err := recordNames(cg, callXattr); err != nil || len(names) != 1 || names[0] != callName(p.Pid) {
				t.Fatalf("records on the cgroup %v, %v; want %s", names, err, callName(p.Pid))
			}
			addr, err := s.Syscall(unix.SYS_MMAP, 0, 4096, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
			if err != nil || Errno(addr) != nil {
				t.Fatalf("mmap: %d, %v", addr, err)
			}
			if ret, err := s.Syscall(unix.SYS_MUNMAP, uint64(addr), 4096); err != nil || ret != 0 {
				t.Fatalf("munmap: %d, %v", ret, err)
			}
			if b, err := os.ReadFile(filepath.Join(cg, "cgroup.freeze")); err != nil || string(b) != "0\n" {
				t.Fatalf("cgroup.freeze %q, %v after the calls", b, err)
			}
			if err := s.End(nil); err != nil {
				t.Fatal(err)
			}
			if after, _ := sys.PtraceGetRegs(p.Pid); after != before {
				t.Fatalf("registers changed:\n%+v\n%+v", before, after)
			}
			if names, err := recordNames(cg, callXattr); err != nil || len(names) != 0 {
				t.Fatalf("records left on the cgroup: %v, %v", names, err)
			}
			if err := sys.PtraceDetach(p.Pid, 0); err != nil {
				t.Fatal(err)
			}
			checkFrozenTarget(t, p, args)
		})
	}
}

// TestFrozenCallTracerGone: the tracer lets go of the thread (as its
// death does) at the enter stop of the call, the cgroup frozen. The call
// runs and the freezer traps the thread on its way out, the call's result
// in rax (and, busy, rip in the vDSO); PutBackCalls finds it by its
// record and gives it its own registers back before the thaw, and the
// target runs on undisturbed. (Let go without PutBackCalls, the sleeper's
// nanosleep returned getpid's result.)
func TestFrozenCallTracerGone(t *testing.T) {
	for _, args := range frozenTargets {
		t.Run(args[0], func(t *testing.T) {
			p, s, cg := frozenTarget(t, args...)
			frozenSwapped = func() { sys.PtraceDetach(p.Pid, 0) }
			t.Cleanup(func() { frozenSwapped = nil })
			if _, err := s.Syscall(unix.SYS_GETPID); err == nil {
				t.Fatal("the call went on after the tracer let go")
			}
			if b, err := os.ReadFile(filepath.Join(cg, "cgroup.freeze")); err != nil || string(b) != "1\n" {
				t.Fatalf("cgroup.freeze %q, %v with a thread left in a call", b, err)
			}
			if err := sys.CgroupWaitEvent(cg, "frozen", "1", 5*time.Second); err != nil {
				t.Fatal(err)
			}
			fixed, err := PutBackCalls(cg)
			if err != nil || len(fixed) != 1 || fixed[0] != p.Pid {
				t.Fatalf("PutBackCalls: %v, %v; want [%d]", fixed, err, p.Pid)
			}
			if err := sys.CgroupFreeze(cg, false, 0); err != nil {
				t.Fatal(err)
			}
			checkFrozenTarget(t, p, args)
		})
	}
}

// TestRestarts: a thread asleep in nanosleep sits in a syscall the
// kernel restarts, and can carry frozen calls; a thread computing in
// registers does not.
func TestRestarts(t *testing.T) {
	p, _ := seizedSleeper(t)
	if !Restarts(p.Pid) {
		t.Error("a thread asleep in nanosleep: not in a restartable syscall")
	}
	busy := testprog.Start(t, "busy", "1")
	time.Sleep(50 * time.Millisecond)
	seizeStop(t, busy.Pid)
	if Restarts(busy.Pid) {
		t.Error("a thread computing in registers: in a restartable syscall")
	}
	for _, pid := range []int{p.Pid, busy.Pid} {
		if err := sys.PtraceDetach(pid, 0); err != nil {
			t.Fatal(err)
		}
	}
	busy.CheckBusy(t, 1)
	if line, err := p.Next(5 * time.Second); err != nil || line != "slept ok" {
		t.Fatalf("target: %q, %v", line, err)
	}
}
