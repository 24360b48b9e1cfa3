package freeze

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/internal/testprog"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
)

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (cgroups)")
	}
}

// origCgroup puts p into a cgroup of the test's own, so that thaw has a
// non-root original to restore.
func origCgroup(t *testing.T, p *testprog.Proc) string { return origCgroupNamed(t, p, "") }

// origCgroupNamed is origCgroup with suffix at the end of the cgroup's name.
func origCgroupNamed(t *testing.T, p *testprog.Proc, suffix string) string {
	t.Helper()
	mount, err := proc.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mount, fmt.Sprintf("crtest-%d-%d%s", os.Getpid(), p.Pid, suffix))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Anything still inside goes back to the root before removal.
		if pids, err := readPids(filepath.Join(dir, "cgroup.procs")); err == nil {
			for _, pid := range pids {
				writeFile(filepath.Join(mount, "cgroup.procs"), strconv.Itoa(pid))
			}
		}
		rmdirWait(dir)
	})
	if err := writeFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(p.Pid)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// cleanupFrozen makes sure a test never leaves its target frozen.
func cleanupFrozen(t *testing.T, pid int) {
	t.Cleanup(func() {
		if did, err := ThawPid(pid); did || err != nil {
			t.Logf("cleanup thawed pid %d (%v)", pid, err)
		}
	})
}

func cgroupOf(t *testing.T, pid int) string {
	t.Helper()
	mount, _ := proc.Cgroup2Mount()
	rel, err := proc.Cgroup2Of(pid)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(mount, rel)
}

func TestFreezeThaw(t *testing.T) {
	requireRoot(t)
	for _, viaPid := range []bool{false, true} {
		t.Run(fmt.Sprintf("pid=%v", viaPid), func(t *testing.T) {
			p := testprog.Start(t, "tick")
			orig := origCgroup(t, p)
			cleanupFrozen(t, p.Pid)
			f, err := Freeze(p.Pid, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if got := cgroupOf(t, p.Pid); got != f.Cgroup || filepath.Base(got) != Prefix+strconv.Itoa(p.Pid) {
				t.Fatalf("in cgroup %s, frozen %s", got, f.Cgroup)
			}
			if p.Ticks(300 * time.Millisecond) {
				t.Fatal("ticking while frozen")
			}
			inv, fr, procs := f.Records()
			if inv.RootPid != uint32(p.Pid) || inv.BootId == "" || fr.Original[0].Cgroup2 != orig || len(procs) != 1 {
				t.Fatalf("records %v %v %v", inv, fr, procs)
			}
			st, _ := proc.ReadStat(p.Pid)
			if pr := procs[0]; pr.Pid != uint32(p.Pid) || pr.StartTime != st.StartTime || pr.Comm != "target" ||
				len(pr.Threads) != 1 || pr.Ppid != uint32(os.Getpid()) || pr.Sid != uint32(st.Sid) {
				t.Fatalf("process record %v", pr)
			}
			if viaPid {
				did, err := ThawPid(p.Pid)
				if err != nil || !did {
					t.Fatalf("thaw: %v %v", did, err)
				}
			} else {
				// Through the stream, as cr-freeze thaw does.
				var buf bytes.Buffer
				w, err := image.NewWriter(&buf, image.WriterOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if err := writeRecords(w, f); err != nil {
					t.Fatal(err)
				}
				fr2, procs2, err := ReadRecords(&buf)
				if err != nil {
					t.Fatal(err)
				}
				if err := Thaw(fr2, procs2); err != nil {
					t.Fatal(err)
				}
			}
			if got := cgroupOf(t, p.Pid); got != orig {
				t.Fatalf("back in %s, want %s", got, orig)
			}
			if _, err := os.Stat(f.Cgroup); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("transient cgroup left: %v", err)
			}
			if !p.Ticks(2 * time.Second) {
				t.Fatal("not ticking after thaw")
			}
		})
	}
}

func TestKill(t *testing.T) {
	requireRoot(t)
	p := testprog.Start(t, "tick")
	bystander := testprog.Start(t, "tick")
	cleanupFrozen(t, p.Pid)
	f, err := Freeze(p.Pid, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, fr, procs := f.Records()
	// A record whose start time does not match must not kill anything.
	bad := &pb.Process{Pid: procs[0].Pid, StartTime: procs[0].StartTime + 1}
	if err := Kill(fr, []*pb.Process{bad}); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("kill with a wrong start time: %v", err)
	}
	if p.Exited() {
		t.Fatal("target killed despite identity mismatch")
	}
	if err := Kill(fr, procs); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Wait(5 * time.Second); !ok {
		t.Fatal("target still running")
	}
	if ws := p.Cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("target ended with %v", p.Cmd.ProcessState)
	}
	if _, err := os.Stat(f.Cgroup); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cgroup left: %v", err)
	}
	if !bystander.Ticks(2 * time.Second) {
		t.Fatal("bystander stopped")
	}
	if err := KillPid(p.Pid); !errors.Is(err, ErrNotFrozen) {
		t.Fatalf("kill of a gone pid: %v", err)
	}
}

// TestKillReapsOrphans: kill returns only once the processes killed with
// their parent are reaped. The test is their subreaper and reaps the
// child 300 ms late; until then the child's pid, and the root's as its
// process group, stay in use, and a restore would find them taken.
func TestKillReapsOrphans(t *testing.T) {
	requireRoot(t)
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	p := testprog.Start(t, "child")
	cleanupFrozen(t, p.Pid)
	f, err := Freeze(p.Pid, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Procs) != 2 {
		t.Fatalf("records %v: want the root and its child", f.Procs)
	}
	child := int(f.Procs[1].Pid)
	reaped := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		var ws unix.WaitStatus
		_, err := unix.Wait4(child, &ws, 0, nil)
		reaped <- err
	}()
	_, fr, procs := f.Records()
	if err := Kill(fr, procs); err != nil {
		t.Fatal(err)
	}
	if st, err := proc.ReadStat(child); err == nil {
		t.Fatalf("kill returned with the child %d still there (state %c)", child, st.State)
	}
	if err := <-reaped; err != nil {
		t.Fatalf("reaping the child: %v", err)
	}
}

// TestExitingChild: a child killed as its tree freezes goes on exiting
// (the freezer leaves an exiting task be): it leaves its cgroup, then
// becomes a zombie that its frozen parent cannot reap. It is recorded as
// a zombie, where the freeze failed on a process of the tree outside the
// cgroup. The child has 1 GiB to free, so its exit overlaps the freeze.
func TestExitingChild(t *testing.T) {
	requireRoot(t)
	for attempt := 1; ; attempt++ {
		p := testprog.Start(t, "child", "1024")
		cleanupFrozen(t, p.Pid)
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", p.Child)); err == nil {
				var size, rss uint64
				if fmt.Sscan(string(b), &size, &rss); rss*4096 >= 1000<<20 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("child %d did not touch its 1 GiB", p.Child)
			}
		}
		syscall.Kill(p.Child, syscall.SIGKILL)
		exiting := waitExiting(p.Child)
		f, err := Freeze(p.Pid, Options{})
		if err != nil {
			t.Fatalf("freeze with child %d exiting (%v at the start): %v", p.Child, exiting, err)
		}
		if len(f.Procs) != 2 || f.Procs[1].Pid != uint32(p.Child) || f.Procs[1].State != "Z" {
			t.Fatalf("records %v: want the root and its child as a zombie", f.Procs)
		}
		if did, err := ThawPid(p.Pid); !did || err != nil {
			t.Fatalf("thaw: %v %v", did, err)
		}
		if exiting {
			t.Logf("child seen exiting at attempt %d", attempt)
			return
		}
		if attempt == 10 {
			t.Fatal("in 10 attempts the child was never seen exiting before the freeze")
		}
	}
}

// waitExiting reports whether pid, just sent SIGKILL, is seen in its exit
// (PF_EXITING, not yet a zombie). The kill only queues the signal: on a
// busy machine the child may not have run yet when stat is first read.
func waitExiting(pid int) bool {
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		st, err := proc.ReadStat(pid)
		if err != nil || st.State == 'Z' {
			return false
		}
		if st.Flags&pfExiting != 0 {
			return true
		}
	}
	return false
}

func TestKillPid(t *testing.T) {
	requireRoot(t)
	p := testprog.Start(t, "tick")
	cleanupFrozen(t, p.Pid)
	if _, err := Freeze(p.Pid, Options{}); err != nil {
		t.Fatal(err)
	}
	if err := KillPid(p.Pid); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Wait(5 * time.Second); !ok {
		t.Fatal("target still running")
	}
}

// TestTreeAndThreads: a target with a thread is recorded with both tids; a
// target with a child is frozen with its child (both in the transient
// cgroup, both recorded, the root first), and thaw puts both back.
func TestTreeAndThreads(t *testing.T) {
	requireRoot(t)
	for _, mode := range []string{"thread", "child"} {
		t.Run(mode, func(t *testing.T) {
			p := testprog.Start(t, mode)
			origCgroup(t, p)
			cleanupFrozen(t, p.Pid)
			before := map[int]string{p.Pid: cgroupOf(t, p.Pid)}
			if kids, _ := proc.Children(p.Pid); len(kids) > 0 {
				before[kids[0]] = cgroupOf(t, kids[0])
			}
			f, err := Freeze(p.Pid, Options{})
			if err != nil {
				t.Fatal(err)
			}
			switch mode {
			case "thread":
				if len(f.Procs) != 1 || len(f.Procs[0].Threads) != 2 {
					t.Fatalf("records %v: want one process with two threads", f.Procs)
				}
			case "child":
				if len(f.Procs) != 2 || f.Procs[0].Pid != uint32(p.Pid) || f.Procs[1].Ppid != uint32(p.Pid) {
					t.Fatalf("records %v: want the root, then its child", f.Procs)
				}
				if got := cgroupOf(t, int(f.Procs[1].Pid)); got != f.Cgroup {
					t.Fatalf("child in %s, want the frozen %s", got, f.Cgroup)
				}
			}
			_, fr, procs := f.Records()
			if err := Thaw(fr, procs); err != nil {
				t.Fatal(err)
			}
			for _, rec := range f.Procs {
				if got := cgroupOf(t, int(rec.Pid)); got != before[int(rec.Pid)] {
					t.Fatalf("pid %d in %s after thaw, want %s", rec.Pid, got, before[int(rec.Pid)])
				}
			}
			if !p.Ticks(2 * time.Second) {
				t.Fatal("not running after thaw")
			}
		})
	}
}

func TestNoSuchProcess(t *testing.T) {
	p := testprog.Start(t, "pause")
	pid := p.Pid
	syscall.Kill(pid, syscall.SIGKILL)
	p.Wait(5 * time.Second)
	_, err := Freeze(pid, Options{})
	var h *stage.HintError
	if err == nil || !errors.As(err, &h) || !strings.Contains(err.Error(), "no such process") {
		t.Fatalf("got %v", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Fatalf("multi-line error %q", err)
	}
}

// TestFreezeStopped: a stopped process freezes, its record says so (the
// restore stops it again), and the thaw leaves it stopped as it was.
func TestFreezeStopped(t *testing.T) {
	requireRoot(t)
	p := testprog.Start(t, "tick")
	orig := origCgroup(t, p)
	cleanupFrozen(t, p.Pid)
	syscall.Kill(p.Pid, syscall.SIGSTOP)
	for i := 0; i < 200; i++ {
		if st, _ := proc.ReadStat(p.Pid); st != nil && st.State == 'T' {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	f, err := Freeze(p.Pid, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, fr, procs := f.Records()
	if len(procs) != 1 || procs[0].State != "T" {
		t.Fatalf("process records %v, want one in state T", procs)
	}
	if err := Thaw(fr, procs); err != nil {
		t.Fatal(err)
	}
	if got := cgroupOf(t, p.Pid); got != orig {
		t.Fatalf("back in %s, want %s", got, orig)
	}
	if st, _ := proc.ReadStat(p.Pid); st == nil || st.State != 'T' {
		t.Fatalf("state %v after the thaw, want still stopped (T)", st)
	}
	if p.Ticks(300 * time.Millisecond) {
		t.Fatal("ticking after the thaw: it was continued")
	}
	syscall.Kill(p.Pid, syscall.SIGCONT)
	if !p.Ticks(2 * time.Second) {
		t.Fatal("not running after SIGCONT")
	}
}

// TestThawLeftover: a transient cgroup without state (cr-freeze killed
// right after mkdir) is removed by thaw --pid when empty.
func TestThawLeftover(t *testing.T) {
	requireRoot(t)
	mount, _ := proc.Cgroup2Mount()
	pid := 1<<22 + os.Getpid() // beyond pid_max: no real process
	dir := cgroupDir(mount, pid)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	did, err := ThawPid(pid)
	if err != nil || !did {
		t.Fatalf("thaw: %v %v", did, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("leftover not removed")
	}
	if err := KillPid(pid); !errors.Is(err, ErrNotFrozen) {
		t.Fatalf("kill: %v", err)
	}
}

// TestStaleCgroup: the transient cgroup an earlier process with the same
// pid left (killed while frozen) is removed by the next freeze; one
// recorded for this very process is not (its checkpoint may be under way).
func TestStaleCgroup(t *testing.T) {
	requireRoot(t)
	p := testprog.Start(t, "tick")
	cleanupFrozen(t, p.Pid)
	mount, _ := proc.Cgroup2Mount()
	dir := cgroupDir(mount, p.Pid)
	st, err := proc.ReadStat(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		start uint64
		stale bool
	}{{st.StartTime, false}, {st.StartTime - 1, true}} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(dir) })
		if err := setState(dir, []Task{{Pid: p.Pid, StartTime: c.start}}); err != nil {
			t.Fatal(err)
		}
		_, err := Freeze(p.Pid, Options{})
		if !c.stale {
			if err == nil || !strings.Contains(err.Error(), "already exists") {
				t.Fatalf("a cgroup recorded for this process: %v, want a refusal", err)
			}
			os.Remove(dir)
			continue
		}
		if err != nil {
			t.Fatalf("a stale cgroup: %v", err)
		}
		if did, err := ThawPid(p.Pid); !did || err != nil {
			t.Fatalf("thaw: %v %v", did, err)
		}
	}
	if !p.Ticks(2 * time.Second) {
		t.Fatal("not ticking after the thaw")
	}
}

// TestNamespaces: a tree a restore would bring back in the wrong
// namespaces is refused after the freeze, naming the process or thread
// and the namespace, and left running as it was; a root in a network
// namespace of its own (the "host" it lives in) is frozen.
func TestNamespaces(t *testing.T) {
	requireRoot(t)
	for _, c := range []struct{ kind, want string }{
		{"net", ""},
		{"user", `^pid \d+ \(target\) is in a user namespace of its own \(user:\[\d+\]; cr-freeze is in user:\[\d+\]\)`},
		{"pidnext", `^pid \d+ \(target\): its next children would be born in another pid namespace`},
		{"childnet", `^pid \d+ \(target\) is in another net namespace \(net:\[\d+\]\) than the root, pid \d+`},
		{"threadnet", `^thread \d+ of pid \d+ \(target\) is in another net namespace \(net:\[\d+\]\) than the root`},
	} {
		t.Run(c.kind, func(t *testing.T) {
			p := testprog.Start(t, "unshare", c.kind)
			cleanupFrozen(t, p.Pid)
			before := cgroupOf(t, p.Pid)
			f, err := Freeze(p.Pid, Options{})
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				_, fr, procs := f.Records()
				if err := Thaw(fr, procs); err != nil {
					t.Fatal(err)
				}
			} else if !errors.Is(err, ErrRefused) || !regexp.MustCompile(c.want).MatchString(err.Error()) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
			if now := cgroupOf(t, p.Pid); now != before {
				t.Errorf("in cgroup %s after, was %s", now, before)
			}
			p.Drain()
			if !p.Ticks(2 * time.Second) {
				t.Fatal("not running after")
			}
		})
	}
}

// TestState: the state a transient cgroup carries round-trips, names each
// cgroup once, takes 2,000 processes, refuses clearly what does not fit
// an xattr, reads the layout before it, and rejects a malformed one.
func TestState(t *testing.T) {
	var tasks []Task
	for i := range 2000 {
		tasks = append(tasks, Task{Pid: 4000000 + i, StartTime: 9876543210 + uint64(i), Cgroup2: fmt.Sprintf("/sys/fs/cgroup/system.slice/service-%d.scope", i%3)})
	}
	b, err := encodeState(tasks)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "service-0.scope"); n != 1 {
		t.Errorf("a cgroup named %d times in the state", n)
	}
	got, err := decodeState(b)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(tasks) {
		t.Fatalf("state did not round-trip (%d tasks back)", len(got))
	}
	for range 2000 {
		tasks = append(tasks, tasks[0])
	}
	if _, err := encodeState(tasks); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "4000 processes") {
		t.Fatalf("4000 tasks: %v, want a refusal naming them", err)
	}
	old, err := decodeState([]byte(`[{"pid":12,"start_time":34,"cgroup2":"/a"}]`))
	if err != nil || len(old) != 1 || old[0] != (Task{Pid: 12, StartTime: 34, Cgroup2: "/a"}) {
		t.Errorf("the layout before: %v, %v", old, err)
	}
	for _, bad := range []string{`{"cgroups":["/a"],"tasks":[[12,34,1]]}`, `{"cgroups":["/a"],"tasks":[[0,34,0]]}`, `[{"pid":1,"x":2}]`, `{"tasks":[[1,2,0]],"x":1}`} {
		if _, err := decodeState([]byte(bad)); err == nil {
			t.Errorf("%s: decoded", bad)
		}
	}
}

// TestInPlaceDir: --cgroup takes a cgroup v2 directory under the mount
// cr-freeze uses, and says which rule a refused one breaks.
func TestInPlaceDir(t *testing.T) {
	requireRoot(t)
	mount, err := proc.Cgroup2Mount()
	if err != nil {
		t.Skipf("no cgroup2 mount: %v", err)
	}
	own := filepath.Join(mount, fmt.Sprintf("crtest-%d-inplace", os.Getpid()))
	if err := os.Mkdir(own, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rmdirWait(own) })
	transient := cgroupDir(mount, os.Getpid())
	if err := os.Mkdir(transient, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rmdirWait(transient) })
	if got, err := inPlaceDir(mount, own+"/"); err != nil || got != own {
		t.Errorf("inPlaceDir(%s/) = %q, %v; want %s", own, got, err, own)
	}
	for _, c := range []struct{ dir, want string }{
		{"/tmp", "not a cgroup v2 directory"},
		{mount, "the root cgroup cannot be frozen"},
		{transient, "a transient cgroup of cr-freeze's"},
		{own + "/missing", "not a cgroup v2 directory"},
	} {
		if _, err := inPlaceDir(mount, c.dir); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("inPlaceDir(%s): %v; want an error saying %q", c.dir, err, c.want)
		}
	}
	// Another cgroup2 mount than the one cr-freeze uses.
	other := t.TempDir()
	if err := unix.Mount("none", other, "cgroup2", 0, ""); err != nil {
		t.Logf("no second cgroup2 mount (%v): that case left out", err)
		return
	}
	t.Cleanup(func() { unix.Unmount(other, unix.MNT_DETACH) })
	if _, err := inPlaceDir(mount, filepath.Join(other, filepath.Base(own))); err == nil || !strings.Contains(err.Error(), "not under the cgroup2 mount") {
		t.Errorf("a cgroup under another mount: %v", err)
	}
}

// TestPrepare: the mount Prepare finds is the one a freeze finds, and a
// freeze uses the one it is given (a wrong one fails it, the target
// untouched).
func TestPrepare(t *testing.T) {
	requireRoot(t)
	mount, err := Prepare()
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := proc.Cgroup2Mount(); mount != want {
		t.Fatalf("Prepare found %q, want %q", mount, want)
	}
	p := testprog.Start(t, "tick")
	cleanupFrozen(t, p.Pid)
	before := cgroupOf(t, p.Pid)
	wrong := t.TempDir()
	if _, err = Freeze(p.Pid, Options{Mount: wrong}); err == nil || !strings.Contains(err.Error(), wrong) {
		t.Fatalf("a freeze given the mount %s: %v", wrong, err)
	}
	if _, err := os.Stat(cgroupDir(wrong, p.Pid)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the failed freeze left %s: %v", cgroupDir(wrong, p.Pid), err)
	}
	if got := cgroupOf(t, p.Pid); got != before || !p.Ticks(2*time.Second) {
		t.Fatalf("after the failed freeze: in %s (was %s), or not ticking", got, before)
	}
	f, err := Freeze(p.Pid, Options{Mount: mount})
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(f.Cgroup) != mount {
		t.Fatalf("frozen in %s, not under %s", f.Cgroup, mount)
	}
	if did, err := ThawPid(p.Pid); !did || err != nil {
		t.Fatalf("thaw: %v %v", did, err)
	}
}

// TestCgroupNotUTF8: a process in a cgroup whose name is not UTF-8 is
// refused before it is moved or frozen: the state cr-freeze keeps to put
// it back is JSON, which would have changed the name (U+FFFD for each bad
// byte), and the thaw would have had nowhere to put it.
func TestCgroupNotUTF8(t *testing.T) {
	requireRoot(t)
	p := testprog.Start(t, "tick")
	dir := origCgroupNamed(t, p, "-\xff")
	cleanupFrozen(t, p.Pid)
	_, err := Freeze(p.Pid, Options{})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "not valid UTF-8") || !strings.Contains(err.Error(), strconv.Itoa(p.Pid)) {
		t.Fatalf("Freeze: %v, want a refusal naming the pid and the cgroup", err)
	}
	if got := cgroupOf(t, p.Pid); got != dir || !p.Ticks(300*time.Millisecond) {
		t.Fatalf("in %q after the refusal (want %q), or not ticking", got, dir)
	}
	if _, err := os.Stat(cgroupDir(filepath.Dir(dir), p.Pid)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the transient cgroup is left: %v", err)
	}
}
