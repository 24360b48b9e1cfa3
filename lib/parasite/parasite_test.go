package parasite

import (
	"bytes"
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

	run := func() []byte {
		var out bytes.Buffer
		if err := stage.RunFilter(bytes.NewReader(tg.Stream), &out, false, Filter()); err != nil {
			t.Fatal(err)
		}
		return out.Bytes()
	}
	fds := openFds(t)
	first := run()
	if n := openFds(t); n != fds {
		t.Fatalf("%d open fds after the stage, %d before", n, fds)
	}
	second := run()
	if !bytes.Equal(first, second) {
		t.Fatal("two runs on the same frozen task gave different streams")
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

// TestThreadFailure makes an injection fail (rip on a non-executable
// address): the task gets its registers back and runs on undisturbed.
func TestThreadFailure(t *testing.T) {
	tg := frozen.Start(t, "sleep", "2")
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
		_, err := Thread(tg.Pid, tg.Pid, before.regs.Rsp-4096, true)
		if err == nil {
			t.Fatal("injection at a non-executable address succeeded")
		}
		t.Logf("expected failure: %v", err)
	}()
	before.check(t, takeSnapshot(t, tg.Pid))
	tg.Thaw(t)
	if l, err := tg.Next(10 * time.Second); err != nil || l != "slept ok" {
		t.Fatalf("target: %q %v", l, err)
	}
}

func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
