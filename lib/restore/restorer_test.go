package restore

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// freePid finds a PID that no task uses right now.
func freePid(t *testing.T) int {
	t.Helper()
	for p := 20000; p < 32000; p += 7 {
		if _, err := os.Stat("/proc/" + itoa(p)); os.IsNotExist(err) {
			return p
		}
	}
	t.Fatal("no free pid")
	return 0
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestRestorerCloneRelocateSyscalls(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: clone3 with set_tid needs CAP_SYS_ADMIN")
	}
	r, helper, err := startHelper(false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.sock.Close()
	want := freePid(t)
	pid, err := r.clone(cloneReq{flags: unix.CLONE_PARENT, tid: want, exitParent: true, childCtl: -1})
	if err != nil {
		t.Fatal(err)
	}
	helper.Wait()
	t.Cleanup(func() {
		unix.Kill(pid, unix.SIGKILL)
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, 0, nil)
	})
	got, err := r.run(sc("getpid", unix.SYS_GETPID))
	if err != nil || got[0] != int64(want) {
		t.Fatalf("getpid in restored task = %v, %v; want %d", got, err, want)
	}
	hole := uint64(0x200000000)
	size := uint64(1 << 20)
	if _, err := r.run(sc("map hole", unix.SYS_MMAP, hole, size, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0)); err != nil {
		t.Fatal(err)
	}
	if err := r.relocate(hole, hole+size); err != nil {
		t.Fatal(err)
	}
	maps, _ := os.ReadFile("/proc/" + itoa(pid) + "/maps")
	t.Logf("maps after relocate:\n%s", maps)
	// Unmap the original image: the relocated copy must keep working.
	for _, line := range strings.Split(string(maps), "\n") {
		if strings.Contains(line, "crpipe-restorer") {
			var lo, hi uint64
			parseRange(line, &lo, &hi)
			if _, err := r.run(sc("unmap old image", unix.SYS_MUNMAP, lo, hi-lo)); err != nil {
				t.Fatal(err)
			}
		}
	}
	got, err = r.run(sc("getppid", unix.SYS_GETPPID))
	if err != nil || got[0] != int64(os.Getpid()) {
		t.Fatalf("getppid = %v, %v; want %d (CLONE_PARENT)", got, err, os.Getpid())
	}
	if _, err := r.run(sc("bad", unix.SYS_CLOSE, 999)); err == nil {
		t.Fatal("close(999) succeeded")
	} else if !strings.Contains(err.Error(), "bad: bad file descriptor") {
		t.Fatalf("error = %v", err)
	}
}

// TestRestorerCloneWaitsForGroupPid: a PID no process has, but a zombie
// still holds as its process group, is cloned once the zombie is reaped
// (300 ms later), not refused as in use.
func TestRestorerCloneWaitsForGroupPid(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: clone3 with set_tid needs CAP_SYS_ADMIN")
	}
	leader := exec.Command("sleep", "30")
	leader.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	want := leader.Process.Pid
	member := exec.Command("sleep", "30")
	member.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pgid: want}
	if err := member.Start(); err != nil {
		leader.Process.Kill()
		leader.Wait()
		t.Fatal(err)
	}
	leader.Process.Kill()
	leader.Wait()
	member.Process.Kill() // a zombie until reaped, in group want
	reaped := make(chan struct{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		member.Wait()
		close(reaped)
	}()
	defer func() { <-reaped }()
	r, helper, err := startHelper(false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.sock.Close()
	pid, err := r.clone(cloneReq{flags: unix.CLONE_PARENT, tid: want, exitParent: true, childCtl: -1})
	if err != nil {
		t.Fatalf("clone with pid %d: %v", want, err)
	}
	helper.Wait()
	unix.Kill(pid, unix.SIGKILL)
	var ws unix.WaitStatus
	unix.Wait4(pid, &ws, 0, nil)
	select {
	case <-reaped:
	default:
		t.Fatal("cloned before the zombie holding the pid was reaped")
	}
}

// TestNewSharedAnon: the object that stands for shared anonymous memory
// shows in maps as the kernel's own ("/dev/zero (deleted)", which a next
// dump takes as shared anonymous memory), grows, and is one object
// through every mapping of it.
func TestNewSharedAnon(t *testing.T) {
	f, err := newSharedAnon(2 * pageSize)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Ftruncate(int(f.Fd()), 4*pageSize); err != nil {
		t.Fatalf("grow: %v", err)
	}
	a, err := unix.Mmap(int(f.Fd()), 0, 4*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(a)
	b, err := unix.Mmap(int(f.Fd()), 2*pageSize, 2*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(b)
	a[3*pageSize+5] = 42
	if b[pageSize+5] != 42 {
		t.Error("a write through one mapping is not seen through the other")
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	start := fmt.Sprintf("%x-", uintptr(unsafe.Pointer(&a[0])))
	for _, l := range strings.Split(string(maps), "\n") {
		if strings.HasPrefix(l, start) {
			if !strings.HasSuffix(l, " /dev/zero (deleted)") || !strings.Contains(l, " rw-s ") {
				t.Errorf("maps shows %q, want a shared /dev/zero (deleted)", l)
			}
			return
		}
	}
	t.Errorf("no line for %s in /proc/self/maps", start)
}

// The root's helper, started with the restore: taken once (it answers),
// then a second root would get a fresh one; one never taken ends and is
// reaped when the restore ends.
func TestEarlyHelper(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the helper is the restorer blob, which runs as a restore does")
	}
	rc := &Ctx{early: startEarly(nil)}
	r, helper, err := rc.rootHelper()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := r.run(sc("getpid", unix.SYS_GETPID)); err != nil || got[0] != int64(helper.Process.Pid) {
		t.Errorf("the early helper's getpid: %v, %v; want %d", got, err, helper.Process.Pid)
	}
	r.sock.Close()
	helper.Wait()
	if rc.early != nil {
		t.Error("the early helper is still there once taken")
	}

	unused := startEarly(nil)
	<-unused.done
	if unused.err != nil {
		t.Fatal(unused.err)
	}
	pid := unused.helper.Process.Pid
	unused.drop()
	if err := unix.Kill(pid, 0); err != unix.ESRCH {
		t.Errorf("the helper never taken, pid %d, is left after drop (kill 0: %v)", pid, err)
	}
}
