package restore

import (
	"os"
	"strconv"
	"strings"
	"testing"

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
