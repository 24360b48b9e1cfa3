package parasite

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/inject"
	"crpipe/lib/internal/frozen"
	"crpipe/lib/internal/testprog"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// snapshot is what the parasite must leave unchanged in a task.
type snapshot struct {
	regs  unix.PtraceRegs
	mask  uint64
	stack []byte // 8 KiB below rsp
	maps  string // no mapping left behind
}

func takeSnapshot(t *testing.T, pid int) snapshot {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := sys.PtraceSeize(pid, 0); err != nil {
		t.Fatal(err)
	}
	defer sys.PtraceDetach(pid, 0)
	if err := sys.PtraceInterrupt(pid); err != nil {
		t.Fatal(err)
	}
	if st, err := sys.PtraceWait(pid); err != nil || !st.IsEventStop() {
		t.Fatalf("%v %v", st, err)
	}
	var s snapshot
	var err error
	if s.regs, err = sys.PtraceGetRegs(pid); err != nil {
		t.Fatal(err)
	}
	if s.mask, err = sys.PtraceGetSigmask(pid); err != nil {
		t.Fatal(err)
	}
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	s.maps = string(maps)
	s.stack = make([]byte, 8192)
	if err := inject.ReadMem(pid, s.regs.Rsp-uint64(len(s.stack)), s.stack); err != nil {
		t.Fatal(err)
	}
	return s
}

func (a snapshot) check(t *testing.T, b snapshot) {
	t.Helper()
	if a.regs != b.regs {
		t.Fatalf("registers changed:\n%+v\n%+v", a.regs, b.regs)
	}
	if a.mask != b.mask {
		t.Fatalf("sigmask %#x, was %#x", b.mask, a.mask)
	}
	if !bytes.Equal(a.stack, b.stack) {
		t.Fatal("stack below rsp changed")
	}
	if a.maps != b.maps {
		t.Fatalf("mappings changed:\n%s\nwere:\n%s", b.maps, a.maps)
	}
}

func frozenNow(t *testing.T, cg string) bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cg, "cgroup.events"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), "frozen 1")
}

func TestParasite(t *testing.T) {
	tg := frozen.Start(t, "sleep", "3")
	before := takeSnapshot(t, tg.Pid)

	run := func(opt Options) []byte {
		var out bytes.Buffer
		if err := stage.RunFilter(bytes.NewReader(tg.Stream), &out, false, Filter(opt)); err != nil {
			t.Fatal(err)
		}
		return out.Bytes()
	}
	fds := openFds(t)
	first := run(Options{})
	if n := openFds(t); n != fds {
		t.Fatalf("%d open fds after the stage, %d before", n, fds)
	}
	if second := run(Options{}); !bytes.Equal(first, second) {
		t.Fatal("two runs on the same frozen task gave different streams")
	}
	if each := run(Options{OneAtATime: true}); !bytes.Equal(first, each) {
		t.Fatal("the batch and one call at a time gave different streams")
	}
	var states []*pb.TaskState
	for _, f := range frozen.Frames(t, first) {
		if f.Type == image.TypeTaskState {
			s := &pb.TaskState{}
			if err := image.Unmarshal(&f, s); err != nil {
				t.Fatal(err)
			}
			states = append(states, s)
		}
	}
	if len(states) != 1 {
		t.Fatalf("%d task states", len(states))
	}
	s := states[0]
	if s.Pid != uint32(tg.Pid) || s.Tid != uint32(tg.Pid) || s.ClearChildTid != tg.TidAddr {
		t.Fatalf("state %v, tid address want %#x", s, tg.TidAddr)
	}
	acts := map[uint32]*pb.Sigaction{}
	for _, a := range s.Sigactions {
		acts[a.Signo] = a
	}
	usr1 := acts[uint32(unix.SIGUSR1)]
	const saSiginfo, saRestart, saRestorer = 4, 0x10000000, 0x04000000
	if usr1 == nil || usr1.Handler != tg.Handler || usr1.Restorer != tg.Restorer ||
		usr1.Flags != saSiginfo|saRestart|saRestorer || usr1.Mask != 1<<(unix.SIGUSR2-1) {
		t.Fatalf("SIGUSR1 %v; program says handler %#x restorer %#x", usr1, tg.Handler, tg.Restorer)
	}
	if a := acts[uint32(unix.SIGPIPE)]; a == nil || a.Handler != 1 {
		t.Fatalf("SIGPIPE %v, want SIG_IGN", a)
	}
	if a := acts[uint32(unix.SIGTERM)]; a == nil || a.Handler == 0 || a.Handler == 1 {
		t.Fatalf("SIGTERM %v, want a handler", a)
	}
	if a := acts[uint32(unix.SIGUSR2)]; a != nil {
		t.Fatalf("SIGUSR2 %v recorded, it is default", a)
	}

	if !frozenNow(t, tg.Frozen.Cgroup) {
		t.Fatal("cgroup not frozen after the parasite")
	}
	if st, _ := proc.ReadStatus(tg.Pid); st.TracerPid != 0 {
		t.Fatal("still traced")
	}
	before.check(t, takeSnapshot(t, tg.Pid))
	if l := tg.Drain(); l != "" {
		t.Fatalf("target printed %q while frozen", l)
	}
	tg.Thaw(t)
	if l, err := tg.Next(10 * time.Second); err != nil || l != "slept ok" {
		t.Fatalf("target: %q %v", l, err)
	}
}

// TestThreadFailure makes an injection fail (the syscall instruction it
// is given on a non-executable address), with the stub and one call at a
// time: the task gets its registers back and runs on undisturbed. The
// stub's calls go through that instruction only in a thread that runs
// its own code (busy); a thread asleep in a syscall carries them frozen,
// through its own instruction (lib/inject/frozen.go), and only the calls
// of more than four arguments of one at a time meet the bad address.
func TestThreadFailure(t *testing.T) {
	busy := frozen.Start(t, "busy", "3")
	failInjection(t, busy, Options{})
	busy.Thaw(t)
	busy.CheckBusy(t, 3)
	sleeper := frozen.Start(t, "sleep", "2")
	failInjection(t, sleeper, Options{OneAtATime: true})
	sleeper.Thaw(t)
	if l, err := sleeper.Next(10 * time.Second); err != nil || l != "slept ok" {
		t.Fatalf("target: %q %v", l, err)
	}
}

// failInjection injects into tg's one thread with opt at a bad syscall
// instruction, and checks that it fails and leaves the task as it was.
func failInjection(t *testing.T, tg *frozen.Target, opt Options) {
	t.Helper()
	before := takeSnapshot(t, tg.Pid)
	func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := sys.PtraceSeize(tg.Pid, unix.PTRACE_O_TRACESYSGOOD); err != nil {
			t.Fatal(err)
		}
		defer sys.PtraceDetach(tg.Pid, 0)
		sys.PtraceInterrupt(tg.Pid)
		if err := waitInterrupt(tg.Pid, tg.Pid); err != nil {
			t.Fatal(err)
		}
		if err := sys.CgroupFreeze(tg.Frozen.Cgroup, false, 0); err != nil {
			t.Fatal(err)
		}
		defer sys.CgroupFreeze(tg.Frozen.Cgroup, true, FreezeTimeout)
		// The stack is not executable: the "syscall" faults.
		_, err := Process(tg.Pid, []int{tg.Pid}, before.regs.Rsp-4096, tg.Frozen.Cgroup, opt, []int{0})
		if err == nil {
			t.Fatalf("injection (%+v) at a non-executable address succeeded", opt)
		}
		t.Logf("expected failure (%+v): %v", opt, err)
	}()
	// Every thread ended: nothing for a thaw to put back.
	if n, _ := unix.Listxattr(tg.Frozen.Cgroup, make([]byte, 4096)); n > 0 {
		b := make([]byte, n)
		unix.Listxattr(tg.Frozen.Cgroup, b)
		if strings.Contains(string(b), "crpipe.masks") || strings.Contains(string(b), "crpipe.call") {
			t.Errorf("a record of a session is left on %s: %q", tg.Frozen.Cgroup, b)
		}
	}
	before.check(t, takeSnapshot(t, tg.Pid))
}

func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestRseq: a task frozen inside an rseq critical section keeps its
// rseq_cs pointer through the parasite (the kernel clears it when the
// injected code resumes outside the section), so that on thaw the kernel
// aborts the section as it must after a preemption.
func TestRseq(t *testing.T) {
	p := testprog.Start(t, "rseq")
	time.Sleep(100 * time.Millisecond) // into the critical section
	// It spins there, but each abort (a preemption, on a busy machine
	// often) takes it out to print a line: freeze again until it is in.
	var tg *frozen.Target
	var before snapshot
	for try := 1; ; try++ {
		tg = frozen.Freeze(t, p)
		before = takeSnapshot(t, tg.Pid)
		r := before.regs.Rip
		if r >= p.RseqStart && r < p.RseqEnd {
			break
		}
		if try == 50 {
			t.Fatalf("frozen 50 times outside the critical section [%#x, %#x), last at %#x", p.RseqStart, p.RseqEnd, r)
		}
		tg.Thaw(t)
		time.Sleep(time.Duration(try) * time.Millisecond)
	}
	cs := func() uint64 {
		var b [8]byte
		if err := inject.ReadMem(tg.Pid, p.RseqCs, b[:]); err != nil {
			t.Fatal(err)
		}
		return binary.LittleEndian.Uint64(b[:])
	}
	was := cs()
	if was == 0 {
		t.Fatal("rseq_cs is 0 inside the critical section")
	}
	for _, opt := range []Options{{}, {OneAtATime: true}} {
		var out bytes.Buffer
		if err := stage.RunFilter(bytes.NewReader(tg.Stream), &out, false, Filter(opt)); err != nil {
			t.Fatal(err)
		}
		if now := cs(); now != was {
			t.Fatalf("%+v: rseq_cs %#x after the parasite, was %#x", opt, now, was)
		}
	}
	before.check(t, takeSnapshot(t, tg.Pid))
	tg.Drain()
	tg.Thaw(t)
	if l, err := tg.Next(5 * time.Second); err != nil || !strings.HasPrefix(l, "rseq abort") {
		t.Fatalf("target: %q %v; want the section aborted on thaw", l, err)
	}
}

// TestNoRoomForStub: a process that cannot map the stub (RLIMIT_AS leaves
// no room) gets its calls one at a time, with the same records.
func TestNoRoomForStub(t *testing.T) {
	p := testprog.Start(t, "sleep", "3")
	var vm uint64
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", p.Pid)); err == nil {
		fmt.Sscan(string(b), &vm)
	}
	lim := unix.Rlimit{Cur: vm * uint64(os.Getpagesize()), Max: unix.RLIM_INFINITY}
	if err := unix.Prlimit(p.Pid, unix.RLIMIT_AS, &lim, nil); err != nil {
		t.Fatal(err)
	}
	tg := frozen.Freeze(t, p)
	before := takeSnapshot(t, tg.Pid)
	var outs [2]bytes.Buffer
	for i, opt := range []Options{{}, {OneAtATime: true}} {
		if err := stage.RunFilter(bytes.NewReader(tg.Stream), &outs[i], false, Filter(opt)); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(outs[0].Bytes(), outs[1].Bytes()) {
		t.Fatal("the fallback and one call at a time gave different streams")
	}
	before.check(t, takeSnapshot(t, tg.Pid))
	tg.Thaw(t)
	if l, err := tg.Next(10 * time.Second); err != nil || l != "slept ok" {
		t.Fatalf("target: %q %v", l, err)
	}
}
