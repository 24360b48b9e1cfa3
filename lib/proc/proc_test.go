package proc

import (
	"errors"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	in := "4242 (a) b (c)) S 1 4242 4242 0 -1 4194304 102 0 1 0 0 0 0 0 20 0 3 0 74299 3133440 361 18446744073709551615\n"
	s, err := ParseStat([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := &Stat{Pid: 4242, Comm: "a) b (c)", State: 'S', Ppid: 1, Pgid: 4242, Sid: 4242, Tpgid: -1, Flags: 4194304, NumThreads: 3, StartTime: 74299}
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("got %+v\nwant %+v", s, want)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2", "x (y) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"} {
		if _, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseStatus(t *testing.T) {
	in := "Name:\tsleep\nState:\tS (sleeping)\nTgid:\t10\nPid:\t10\nPPid:\t1\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t1\t2\t3\t4\nThreads:\t1\nNSpid:\t10\t1\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\nSigBlk:\t0000000000010000\nSigIgn:\t0000000000000006\nSigCgt:\t0000000180000000\n"
	s, err := ParseStatus([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "sleep" || s.State != 'S' || s.Pid != 10 || s.PPid != 1 || s.Gid != [4]int{1, 2, 3, 4} ||
		!reflect.DeepEqual(s.NSpid, []int{10, 1}) || s.ShdPnd != 0x100 || s.SigBlk != 0x10000 || s.SigCgt != 0x180000000 {
		t.Fatalf("got %+v", s)
	}
	if _, err := ParseStatus([]byte("Name: x\nPid: zz\n")); err == nil {
		t.Fatal("bad pid accepted")
	}
}

func TestCgroupParsers(t *testing.T) {
	mi := "24 1 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n41 31 0:38 / /sys/fs/cgroup/un\\040ified rw,relatime - cgroup2 cgroup2 rw\n"
	if m, err := ParseCgroup2Mount([]byte(mi)); err != nil || m != "/sys/fs/cgroup/un ified" {
		t.Fatalf("got %q, %v", m, err)
	}
	if _, err := ParseCgroup2Mount([]byte("24 1 0:22 / /x rw - tmpfs tmpfs rw\n")); err != ErrNoCgroup2 {
		t.Fatalf("got %v", err)
	}
	if p, err := ParseCgroup2Line([]byte("4:memory:/x\n0::/a/b (deleted)\n")); err != nil || p != "/a/b" {
		t.Fatalf("got %q, %v", p, err)
	}
}

func TestLive(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", "sleep 100 & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		if kids, err := Children(pid); err == nil {
			for _, k := range kids {
				if p, err := os.FindProcess(k); err == nil {
					p.Kill()
				}
			}
		}
		cmd.Process.Kill()
		cmd.Wait()
	})
	// The child is sh's fork until it has exec'd sleep: wait for both.
	var kids []int
	for i := 0; i < 200; i++ {
		kids, _ = Children(pid)
		if len(kids) == 1 {
			if st, err := ReadStat(kids[0]); err == nil && st.Comm == "sleep" {
				break
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(kids) != 1 {
		t.Fatalf("children of sh: %v", kids)
	}
	if scan, _ := childrenByScan(pid); !reflect.DeepEqual(scan, kids) {
		t.Fatalf("scan %v, children file %v", scan, kids)
	}
	st, err := ReadStat(kids[0])
	if err != nil {
		t.Fatal(err)
	}
	if st.Ppid != pid || st.Comm != "sleep" || st.StartTime == 0 {
		t.Fatalf("stat %+v", st)
	}
	if tids, err := Threads(pid); err != nil || !reflect.DeepEqual(tids, []int{pid}) {
		t.Fatalf("threads %v %v", tids, err)
	}
	if _, err := Cgroup2Of(pid); err != nil {
		t.Fatal(err)
	}
	if _, err := Cgroup2Mount(); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadStat(1 << 30); err == nil {
		t.Fatal("stat of a nonexistent pid")
	}
	if id, err := BootID(); err != nil || len(id) != 36 {
		t.Fatalf("boot id %q %v", id, err)
	}
}

func TestParseSysvShm(t *testing.T) {
	text := `       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
  10084832         16   600                    56 32746 32750      0   101   104   101   104 1795695893 1795695897 1795695891                  4096                     0
         0      32769  3644               1048576   811   811      2     0     0     0     0          0          0 1795695891               1048576                     0
`
	segs, err := ParseSysvShm(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	want := []SysvShm{
		{Key: 10084832, ID: 16, Mode: 0o600, Size: 56, Nattch: 0, UID: 101, GID: 104},
		{Key: 0, ID: 32769, Mode: 0o644 | ShmDest | ShmLocked, Size: 1 << 20, Nattch: 2},
	}
	if !reflect.DeepEqual(segs, want) {
		t.Errorf("got %+v, want %+v", segs, want)
	}
	for _, bad := range []string{"", "garbage\n", "key shmid\n 1 2 3\n", "key\n 1 2 9 4 5 6 7 8 9\n", "key\n x 2 600 4 5 6 7 8 9\n"} {
		if _, err := ParseSysvShm(strings.NewReader(bad)); !errors.Is(err, ErrMapsSyntax) {
			t.Errorf("%q: %v, want ErrMapsSyntax", bad, err)
		}
	}
	if _, err := ReadSysvShm(); err != nil {
		t.Errorf("ReadSysvShm: %v", err)
	}
}
