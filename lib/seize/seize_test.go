package seize

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/arch"
	"crpipe/lib/image"
	"crpipe/lib/internal/frozen"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// procSyscall parses /proc/PID/syscall: nr, six args, sp, pc.
func procSyscall(t *testing.T, pid int) []uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) != 9 {
		t.Fatalf("/proc/%d/syscall: %q", pid, b)
	}
	var v []uint64
	for i, s := range f {
		var n uint64
		if i == 0 {
			x, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			n = uint64(x)
		} else if n, err = strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64); err != nil {
			t.Fatal(err)
		}
		v = append(v, n)
	}
	return v
}

func TestSeize(t *testing.T) {
	tg := frozen.StartAsleep(t, "sleep", "3")
	sc := procSyscall(t, tg.Pid)

	fds := openFds(t)
	var out bytes.Buffer
	if err := stage.RunFilter(bytes.NewReader(tg.Stream), &out, false, Filter()); err != nil {
		t.Fatal(err)
	}
	if n := openFds(t); n != fds {
		t.Fatalf("%d open fds after the stage, %d before", n, fds)
	}
	frames := frozen.Frames(t, out.Bytes())
	// Pass-through: the input frames come first, unchanged.
	in := frozen.Frames(t, tg.Stream)
	for i := range in[:len(in)-1] {
		if frames[i].Type != in[i].Type || !bytes.Equal(frames[i].Payload, in[i].Payload) {
			t.Fatalf("frame %d changed", i)
		}
	}
	var cores []*pb.ThreadCore
	for _, f := range frames {
		if f.Type == image.TypeThreadCore {
			c := &pb.ThreadCore{}
			if err := image.Unmarshal(&f, c); err != nil {
				t.Fatal(err)
			}
			cores = append(cores, c)
		}
	}
	if len(cores) != 1 {
		t.Fatalf("%d thread cores", len(cores))
	}
	c := cores[0]
	r := c.Regs
	if c.Pid != uint32(tg.Pid) || c.Tid != uint32(tg.Pid) {
		t.Fatalf("pid/tid %d/%d", c.Pid, c.Tid)
	}
	// The frozen task was stopped in its nanosleep: what /proc says about
	// the syscall is what the registers say.
	want := []uint64{r.OrigRax, r.Rdi, r.Rsi, r.Rdx, r.R10, r.R8, r.R9, r.Rsp, r.Rip}
	for i := range want {
		if sc[i] != want[i] {
			t.Fatalf("/proc/PID/syscall %x, registers %x", sc, want)
		}
	}
	if int64(r.Rax) != -516 {
		t.Errorf("rax %d, want -ERESTART_RESTARTBLOCK", int64(r.Rax))
	}
	if r.FsBase == 0 {
		t.Error("fs_base is 0 (glibc sets up TLS)")
	}
	x, err := arch.ParseXsave(c.Xsave)
	if err != nil {
		t.Fatal(err)
	}
	if x.XCR0&3 != 3 {
		t.Errorf("xsave features %#x lack x87/SSE", x.XCR0)
	}
	st, _ := proc.ReadStatus(tg.Pid)
	if c.Sigmask != st.SigBlk {
		t.Errorf("sigmask %#x, /proc says %#x", c.Sigmask, st.SigBlk)
	}
	if c.Rseq == nil || c.Rseq.Signature != 0x53053053 || c.Rseq.AbiSize < 32 {
		t.Errorf("rseq %v, want glibc's registration", c.Rseq)
	}
	// Detached and still frozen.
	if st.TracerPid != 0 {
		t.Fatalf("still traced by %d", st.TracerPid)
	}
	if line := tg.Drain(); line != "" {
		t.Fatalf("target printed %q while frozen", line)
	}
	// Thawed, the nanosleep goes on undisturbed.
	tg.Thaw(t)
	line, err := tg.Next(10 * time.Second)
	if err != nil || line != "slept ok" {
		t.Fatalf("target: %q %v", line, err)
	}
}

func TestSeizeRefusesThawed(t *testing.T) {
	tg := frozen.Start(t, "tick")
	tg.Thaw(t)
	err := stage.RunFilter(bytes.NewReader(tg.Stream), &bytes.Buffer{}, false, Filter())
	if err == nil || !strings.Contains(err.Error(), "not in the frozen") {
		t.Fatalf("got %v", err)
	}
	if !tg.Ticks(2 * time.Second) {
		t.Fatal("target stopped")
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

// TestStateRecords: what is set from outside on a frozen target (nice,
// affinity, a resource limit) shows in its ThreadState and ProcessState.
func TestStateRecords(t *testing.T) {
	tg := frozen.Start(t, "tick")
	if err := unix.Setpriority(unix.PRIO_PROCESS, tg.Pid, 5); err != nil {
		t.Fatal(err)
	}
	var cpus unix.CPUSet
	cpus.Set(0)
	if err := unix.SchedSetaffinity(tg.Pid, &cpus); err != nil {
		t.Fatal(err)
	}
	if err := unix.Prlimit(tg.Pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 100, Max: 200}, nil); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := stage.RunFilter(bytes.NewReader(tg.Stream), &out, false, Filter()); err != nil {
		t.Fatal(err)
	}
	var ts *pb.ThreadState
	var ps *pb.ProcessState
	for _, f := range frozen.Frames(t, out.Bytes()) {
		switch f.Type {
		case image.TypeThreadState:
			ts = &pb.ThreadState{}
			if err := image.Unmarshal(&f, ts); err != nil {
				t.Fatal(err)
			}
		case image.TypeProcessState:
			ps = &pb.ProcessState{}
			if err := image.Unmarshal(&f, ps); err != nil {
				t.Fatal(err)
			}
		}
	}
	if ts == nil || ps == nil {
		t.Fatalf("thread state %v, process state %v", ts, ps)
	}
	if ts.Tid != uint32(tg.Pid) || ts.Sched.GetNice() != 5 || ts.Sched.GetPolicy() != 0 {
		t.Errorf("thread state: tid %d sched %v, want %d nice 5 SCHED_OTHER", ts.Tid, ts.Sched, tg.Pid)
	}
	if len(ts.Affinity) != 8 || ts.Affinity[0] != 1 {
		t.Errorf("affinity %x, want CPU 0 only", ts.Affinity)
	}
	if ts.RobustList == 0 || ts.RobustListLen != sys.RobustListHeadSize {
		t.Errorf("robust list %#x/%d: glibc registers one for every thread", ts.RobustList, ts.RobustListLen)
	}
	if c := ts.Creds; c == nil || len(c.Uids) != 4 || c.Uids[1] != uint32(os.Geteuid()) || c.CapEff == 0 {
		t.Errorf("creds %v", ts.Creds)
	}
	if ts.Comm != "target" || ts.SeccompMode != 0 {
		t.Errorf("comm %q seccomp %d", ts.Comm, ts.SeccompMode)
	}
	if len(ps.Rlimits) != rlimitCount || ps.Rlimits[unix.RLIMIT_NOFILE].Cur != 100 || ps.Rlimits[unix.RLIMIT_NOFILE].Max != 200 {
		t.Errorf("rlimits %v", ps.Rlimits)
	}
}

// TestRefuseTraced: a thread that another tracer holds (here: this test,
// attached after the freeze) is refused with a message naming the tracer.
func TestRefuseTraced(t *testing.T) {
	tg := frozen.Start(t, "tick")
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := sys.PtraceSeize(tg.Pid, 0); err != nil {
		t.Fatal(err)
	}
	defer func() {
		sys.PtraceInterrupt(tg.Pid)
		sys.PtraceWait(tg.Pid)
		sys.PtraceDetach(tg.Pid, 0)
	}()
	err := stage.RunFilter(bytes.NewReader(tg.Stream), &bytes.Buffer{}, false, Filter())
	want := fmt.Sprintf("pid %d tid %d is traced by pid %d", tg.Pid, tg.Pid, os.Getpid())
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want an error with %q", err, want)
	}
}

func TestNotifies(t *testing.T) {
	insn := func(code uint16, k uint32) []byte {
		b := make([]byte, 8)
		b[0], b[1] = byte(code), byte(code>>8)
		b[4], b[5], b[6], b[7] = byte(k), byte(k>>8), byte(k>>16), byte(k>>24)
		return b
	}
	allow := append(insn(0x20, 0), insn(0x06, 0x7fff0000)...)
	if notifies(allow) {
		t.Error("an allow-all filter notifies")
	}
	if !notifies(append(allow, insn(0x06, 0x7fc00000)...)) {
		t.Error("a filter returning SECCOMP_RET_USER_NOTIF does not notify")
	}
	if notifies(append(allow, insn(0x15, 0x7fc00000)...)) {
		t.Error("a comparison with the constant is not a return")
	}
}
