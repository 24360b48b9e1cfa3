package inject

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/internal/testprog"
	"crpipe/lib/sys"
)

// stopped is what a batch must leave unchanged in a task.
type stopped struct {
	regs  unix.PtraceRegs
	mask  uint64
	maps  string
	stack []byte
}

func look(t *testing.T, pid int) stopped {
	t.Helper()
	var s stopped
	var err error
	if s.regs, err = sys.PtraceGetRegs(pid); err != nil {
		t.Fatal(err)
	}
	if s.mask, err = sys.PtraceGetSigmask(pid); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	s.maps = string(b)
	s.stack = make([]byte, 4096)
	if err := ReadMem(pid, s.regs.Rsp-uint64(len(s.stack)), s.stack); err != nil {
		t.Fatal(err)
	}
	return s
}

func (a stopped) check(t *testing.T, b stopped) {
	t.Helper()
	if a.regs != b.regs {
		t.Errorf("registers changed:\n%+v\n%+v", a.regs, b.regs)
	}
	if a.mask != b.mask {
		t.Errorf("sigmask %#x, was %#x", b.mask, a.mask)
	}
	if a.maps != b.maps {
		t.Errorf("mappings changed:\n%s\nwere:\n%s", b.maps, a.maps)
	}
	if !bytes.Equal(a.stack, b.stack) {
		t.Error("stack below rsp changed")
	}
}

// batch is a test batch: results known from outside, a failing call, and
// enough calls to need several runs of the stub.
func batch(n int) []Call {
	calls := []Call{
		{Nr: unix.SYS_GETPID},
		{Nr: unix.SYS_RT_SIGACTION, Args: [6]uint64{uint64(unix.SIGUSR1), 0, 0, 8}, Out: 32, OutArg: 2},
		{Nr: unix.SYS_PRCTL, Args: [6]uint64{unix.PR_GET_TID_ADDRESS}, Out: 8, OutArg: 1},
		{Nr: unix.SYS_CLOSE, Args: [6]uint64{1 << 20}},
	}
	for i := 0; i < n; i++ {
		calls = append(calls, Call{Nr: unix.SYS_GETPPID})
	}
	return calls
}

// TestStub runs a batch through the stub in a task interrupted in
// nanosleep and under MDWE: the same results as one call at a time, nothing left mapped
// or changed, and the nanosleep restarted after detach.
func TestStub(t *testing.T) {
	p, insn := seizedSleeper(t)
	before := look(t, p.Pid)

	s, err := Begin(p.Pid, insn)
	if err != nil {
		t.Fatal(err)
	}
	// Memory-deny-write-execute (Linux 6.3; it cannot be undone, but the
	// target is ours): the stub never asks for a writable executable
	// mapping, nor makes one executable.
	const prSetMDWE, mdweRefuseExecGain = 65, 1
	if ret, err := s.Syscall(unix.SYS_PRCTL, prSetMDWE, mdweRefuseExecGain); err != nil {
		t.Fatal(err)
	} else if err := Errno(ret); err != nil {
		t.Logf("no MDWE here: %v", err)
	}
	st, err := MapStub(s, []*Session{s})
	if err != nil {
		t.Fatal(err)
	}
	// 1500 entries of 64 bytes do not fit the stub's 60 KiB at once.
	stub, each := batch(1500), batch(1500)
	if err := st.Run(s, stub); err != nil {
		t.Fatal(err)
	}
	if err := s.RunEach(each); err != nil {
		t.Fatal(err)
	}
	if err := st.Unmap(s); err != nil {
		t.Fatal(err)
	}
	if err := s.End(nil); err != nil {
		t.Fatal(err)
	}
	for i := range stub {
		if stub[i].Ret != each[i].Ret || !bytes.Equal(stub[i].Result, each[i].Result) {
			t.Fatalf("call %d (nr %d): stub %d % x, one at a time %d % x", i, stub[i].Nr, stub[i].Ret, stub[i].Result, each[i].Ret, each[i].Result)
		}
	}
	le := binary.LittleEndian
	ppid := int64(os.Getpid())
	if stub[0].Ret != int64(p.Pid) || le.Uint64(stub[1].Result) != p.Handler || le.Uint64(stub[2].Result) != p.TidAddr ||
		Errno(stub[3].Ret) != unix.EBADF || stub[len(stub)-1].Ret != ppid {
		t.Fatalf("getpid %d, SIGUSR1 handler % x, tid address % x, close %d, getppid %d; want %d %#x %#x EBADF %d",
			stub[0].Ret, stub[1].Result, stub[2].Result, stub[3].Ret, stub[len(stub)-1].Ret, p.Pid, p.Handler, p.TidAddr, ppid)
	}
	before.check(t, look(t, p.Pid))
	if err := sys.PtraceDetach(p.Pid, 0); err != nil {
		t.Fatal(err)
	}
	if line, err := p.Next(5 * time.Second); err != nil || line != "slept ok" {
		t.Fatalf("target: %q, %v", line, err)
	}
}

// TestStubFault: the stub faults (its code unmapped under it). The fault
// is never delivered to the task, which gets everything back.
func TestStubFault(t *testing.T) {
	p, insn := seizedSleeper(t)
	before := look(t, p.Pid)
	s, err := Begin(p.Pid, insn)
	if err != nil {
		t.Fatal(err)
	}
	st, err := MapStub(s, []*Session{s})
	if err != nil {
		t.Fatal(err)
	}
	if ret, err := s.Syscall(unix.SYS_MUNMAP, st.base, stubCodeSize); err != nil || ret != 0 {
		t.Fatalf("munmap: %d %v", ret, err)
	}
	err = st.Run(s, batch(1))
	if !errors.Is(err, ErrUnexpectedStop) {
		t.Fatalf("stub without code: %v, want an unexpected stop", err)
	}
	t.Logf("expected failure: %v", err)
	if err := st.Unmap(s); err != nil {
		t.Fatal(err)
	}
	if err := s.End(nil); err != nil {
		t.Fatal(err)
	}
	before.check(t, look(t, p.Pid))
	if err := sys.PtraceDetach(p.Pid, 0); err != nil {
		t.Fatal(err)
	}
	if line, err := p.Next(5 * time.Second); err != nil || line != "slept ok" {
		t.Fatalf("target: %q, %v (was the SIGSEGV delivered?)", line, err)
	}
}

// TestStubRefused: a process that refuses the stub refuses it with
// ErrNoStub, the caller's cue to fall back to RunEach, and is left as it
// was: one that may not map more memory (RLIMIT_AS leaves no room: the
// mmap fails) and one that may map it but not make it writable
// (RLIMIT_DATA at what it has: the first call of the stub's first batch,
// the mprotect of its data pages, fails; the stub stores nothing then,
// so nothing faults).
func TestStubRefused(t *testing.T) {
	for _, c := range []struct {
		name     string
		resource int
		limit    func(pid int) uint64
		call     string
	}{
		{"mmap", unix.RLIMIT_AS, func(pid int) uint64 {
			var vm uint64
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid)); err == nil {
				fmt.Sscan(string(b), &vm)
			}
			return vm * uint64(os.Getpagesize())
		}, "mmap"},
		{"mprotect", unix.RLIMIT_DATA, func(pid int) uint64 {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if err != nil {
				t.Fatal(err)
			}
			var kb uint64
			if m := regexp.MustCompile(`(?m)^VmData:\s*(\d+) kB`).FindSubmatch(b); m != nil {
				kb, _ = strconv.ParseUint(string(m[1]), 10, 64)
			}
			if kb == 0 {
				t.Fatalf("no VmData in the status of pid %d", pid)
			}
			return kb << 10
		}, "mprotect"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := testprog.Start(t, "sleep", "2")
			insn, err := FindSyscallInsn(p.Pid)
			if err != nil {
				t.Fatal(err)
			}
			var old unix.Rlimit
			lim := unix.Rlimit{Cur: c.limit(p.Pid), Max: unix.RLIM_INFINITY}
			if err := unix.Prlimit(p.Pid, c.resource, &lim, &old); err != nil {
				t.Fatal(err)
			}
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			seizeStop(t, p.Pid)
			before := look(t, p.Pid)
			s, err := Begin(p.Pid, insn)
			if err != nil {
				t.Fatal(err)
			}
			st, err := MapStub(s, []*Session{s})
			if err == nil {
				// Refused by its first batch (the mprotect), or not at all.
				err = st.Run(s, batch(3))
				if uerr := st.Unmap(s); uerr != nil {
					t.Fatal(uerr)
				}
			}
			if err == nil && c.resource == unix.RLIMIT_DATA {
				s.End(nil)
				t.Skip("the kernel does not enforce RLIMIT_DATA (booted with ignore_rlimit_data)")
			}
			if !errors.Is(err, ErrNoStub) || !strings.Contains(err.Error(), c.call) {
				t.Fatalf("MapStub: %v, want ErrNoStub from %s", err, c.call)
			}
			t.Logf("refused as expected: %v", err)
			calls := batch(3)
			if err := s.RunEach(calls); err != nil || calls[0].Ret != int64(p.Pid) {
				t.Fatalf("RunEach: %v, getpid %d", err, calls[0].Ret)
			}
			if err := s.End(nil); err != nil {
				t.Fatal(err)
			}
			before.check(t, look(t, p.Pid))
			if err := unix.Prlimit(p.Pid, c.resource, &old, nil); err != nil {
				t.Fatal(err)
			}
			if err := sys.PtraceDetach(p.Pid, 0); err != nil {
				t.Fatal(err)
			}
			if line, err := p.Next(5 * time.Second); err != nil || line != "slept ok" {
				t.Fatalf("target: %q, %v", line, err)
			}
		})
	}
}

// TestStubCode checks the hand-assembled stub against the assembler, where
// there is one.
func TestStubCode(t *testing.T) {
	as, err := exec.LookPath("as")
	if err != nil {
		t.Skip("no assembler")
	}
	dir := t.TempDir()
	src := `	.intel_syntax noprefix
loop:	cmp rbx, r12
	jae done
	mov rax, [rbx]
	mov rdi, [rbx+8]
	mov rsi, [rbx+16]
	mov rdx, [rbx+24]
	mov r10, [rbx+32]
	mov r8, [rbx+40]
	mov r9, [rbx+48]
	syscall
	cmp rbx, r14
	jne store
	test rax, rax
	js fail
store:	mov [rbx+56], rax
	add rbx, 64
	jmp loop
fail:	mov [r13], rax
	jmp park
done:	mov qword ptr [r13], 1
park:	mov eax, 34
	syscall
	jmp park
`
	if err := os.WriteFile(filepath.Join(dir, "stub.s"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	obj, bin := filepath.Join(dir, "stub.o"), filepath.Join(dir, "stub.bin")
	if out, err := exec.Command(as, "-o", obj, filepath.Join(dir, "stub.s")).CombinedOutput(); err != nil {
		t.Fatalf("as: %v\n%s", err, out)
	}
	if out, err := exec.Command("objcopy", "-O", "binary", "-j", ".text", obj, bin).CombinedOutput(); err != nil {
		t.Skipf("objcopy: %v\n%s", err, out)
	}
	want, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stubCode, want) {
		t.Fatalf("stubCode\n% x\nassembler\n% x", stubCode, want)
	}
}
