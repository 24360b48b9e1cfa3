package files

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

var (
	buildOnce sync.Once
	fdtest    string
	buildErr  error
	buildDir  string
)

func fdtestBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "crpipe-files-test")
		if buildErr != nil {
			return
		}
		fdtest = filepath.Join(buildDir, "fdtest")
		if out, err := exec.Command("gcc", "-O2", "-Wall", "-o", fdtest, "testdata/fdtest.c").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("gcc: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return fdtest
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// startFdtest starts fdtest on dir with extras, waits for its report and
// stops it. Its stdin, stdout and stderr are /dev/null.
func startFdtest(t *testing.T, dir string, extras ...string) (pid int, fds map[string]int) {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	cmd := exec.Command(fdtestBinary(t), append([]string{dir}, extras...)...)
	cmd.ExtraFiles = []*os.File{pw}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	fds = map[string]int{}
	sc := bufio.NewScanner(pr)
	ready := false
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 1 && f[0] == "ready" {
			ready = true
			break
		}
		n, err := strconv.Atoi(f[len(f)-1])
		if len(f) != 2 || err != nil {
			t.Fatalf("fdtest said %q", sc.Text())
		}
		fds[f[0]] = n
	}
	if !ready {
		t.Fatal("fdtest did not get ready")
	}
	// fdtest closes its report pipe after "ready": wait for EOF so the fd
	// table is final.
	io.Copy(io.Discard, pr)
	pid = cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if i := bytes.LastIndexByte(b, ')'); i > 0 && len(b) > i+2 && b[i+2] == 'T' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d did not stop", pid)
		}
	}
	return pid, fds
}

func runFilter(t *testing.T, pid int) (*pb.Files, error) {
	t.Helper()
	var files *pb.Files
	var types []image.Type
	err := filterFrames(t, pid, func(f *image.Frame) {
		if f.Type == image.TypeEnd {
			return
		}
		types = append(types, f.Type)
		if f.Type == image.TypeFiles {
			files = new(pb.Files)
			if err := image.Unmarshal(f, files); err != nil {
				t.Fatal(err)
			}
		}
	})
	if err != nil {
		return nil, err
	}
	if len(types) < 2 || types[0] != image.TypeProcess || types[1] != image.TypeFiles {
		t.Fatalf("output frames %v, want [process files ...]", types)
	}
	for _, ty := range types[2:] {
		if ty != image.TypeFileDesc && ty != image.TypeFileData && ty != image.TypeGhostFile {
			t.Fatalf("output frames %v: %v after the files record", types, ty)
		}
	}
	return files, nil
}

// filterFrames runs cr-files' filter on a stream of one process record
// and calls use with each frame it writes (valid until use returns).
func filterFrames(t *testing.T, pid int, use func(*image.Frame)) error {
	t.Helper()
	var in, out bytes.Buffer
	w, _ := image.NewWriter(&in, image.WriterOptions{})
	w.WriteMessage(image.TypeProcess, &pb.Process{Pid: uint32(pid)})
	w.Close()
	if err := stage.RunFilter(&in, &out, false, Filter()); err != nil {
		return err
	}
	r, err := image.NewReader(&out)
	if err != nil {
		t.Fatal(err)
	}
	for {
		f, err := r.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		use(f)
	}
}

func TestFiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pid, fds := startFdtest(t, dir)
	files, err := runFilter(t, pid)
	if err != nil {
		t.Fatal(err)
	}
	if files.Pid != uint32(pid) || files.Cwd != dir || files.Root != "/" || files.Exe != fdtest || files.Umask != 0o027 {
		t.Errorf("files: pid %d cwd %q root %q exe %q umask %#o", files.Pid, files.Cwd, files.Root, files.Exe, files.Umask)
	}
	byFd := map[int32]*pb.Fd{}
	var order []int32
	for _, fd := range files.Fds {
		byFd[fd.Fd] = fd
		order = append(order, fd.Fd)
	}
	want := []int32{0, 1, 2}
	for _, name := range []string{"rw", "append", "ro", "null", "zero", "urandom", "full", "dir", "high"} {
		want = append(want, int32(fds[name]))
	}
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Fatalf("fds %v, want %v", order, want)
	}
	var rw unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, "rw"), &rw); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		fd      int
		kind    pb.FdKind
		path    string
		acc     uint32
		extra   uint32 // flags that must be set besides the access mode
		offset  int64
		cloexec bool
		rdev    uint64
	}{
		{"stdin", 0, pb.FdKind_FD_CHARDEV, "/dev/null", unix.O_RDONLY, 0, 0, false, unix.Mkdev(1, 3)},
		{"stdout", 1, pb.FdKind_FD_CHARDEV, "/dev/null", unix.O_WRONLY, 0, 0, false, unix.Mkdev(1, 3)},
		{"rw", fds["rw"], pb.FdKind_FD_REGULAR, dir + "/rw", unix.O_RDWR, 0, 3, false, 0},
		{"append", fds["append"], pb.FdKind_FD_REGULAR, dir + "/append", unix.O_WRONLY, unix.O_APPEND, 3, true, 0},
		{"ro", fds["ro"], pb.FdKind_FD_REGULAR, dir + "/rw", unix.O_RDONLY, 0, 0, true, 0},
		{"null", fds["null"], pb.FdKind_FD_CHARDEV, "/dev/null", unix.O_RDWR, 0, 0, false, unix.Mkdev(1, 3)},
		{"zero", fds["zero"], pb.FdKind_FD_CHARDEV, "/dev/zero", unix.O_RDONLY, 0, 0, false, unix.Mkdev(1, 5)},
		{"urandom", fds["urandom"], pb.FdKind_FD_CHARDEV, "/dev/urandom", unix.O_RDONLY, unix.O_NONBLOCK, 0, false, unix.Mkdev(1, 9)},
		{"full", fds["full"], pb.FdKind_FD_CHARDEV, "/dev/full", unix.O_WRONLY, 0, 0, false, unix.Mkdev(1, 7)},
		{"dir", fds["dir"], pb.FdKind_FD_DIRECTORY, dir, unix.O_RDONLY, unix.O_DIRECTORY, 0, false, 0},
		{"high", fds["high"], pb.FdKind_FD_REGULAR, dir + "/rw", unix.O_RDWR, 0, 3, false, 0}, // dup2 shares the offset
	} {
		fd := byFd[int32(c.fd)]
		if fd == nil {
			t.Errorf("%s: fd %d missing", c.name, c.fd)
			continue
		}
		if pb.FdKind(fd.Kind) != c.kind || fd.Path != c.path || fd.Flags&unix.O_ACCMODE != c.acc || fd.Flags&c.extra != c.extra ||
			fd.Flags&unix.O_CLOEXEC != 0 || fd.Offset != c.offset || fd.Cloexec != c.cloexec || fd.Rdev != c.rdev {
			t.Errorf("%s: %v\nwant kind %v path %q access %d flags +%#o offset %d cloexec %v rdev %#x", c.name, fd, c.kind, c.path, c.acc, c.extra, c.offset, c.cloexec, c.rdev)
		}
	}
	// Descriptions: numbered from 1 in fd order; dup2 shares one.
	descs := map[uint64]bool{}
	for _, fd := range files.Fds {
		if fd.DescId == 0 {
			t.Errorf("fd %d has no desc_id", fd.Fd)
		}
		descs[fd.DescId] = true
	}
	if rwd, hd := byFd[int32(fds["rw"])].DescId, byFd[int32(fds["high"])].DescId; rwd != hd || len(descs) != len(files.Fds)-1 {
		t.Errorf("rw desc %d, high desc %d, %d descriptions for %d fds: want rw and high to share the only shared one", rwd, hd, len(descs), len(files.Fds))
	}
	if byFd[0].DescId != 1 {
		t.Errorf("fd 0 has desc_id %d, want 1", byFd[0].DescId)
	}
	if fd := byFd[int32(fds["rw"])]; fd.Dev != rw.Dev || fd.Inode != rw.Ino || fd.Mode != rw.Mode {
		t.Errorf("rw: dev %#x inode %d mode %#o, want %#x %d %#o", fd.Dev, fd.Inode, fd.Mode, rw.Dev, rw.Ino, rw.Mode)
	}
}

// TestRefused: each kind cr-files does not support yet fails the dump with
// an error naming the pid, the fd and the kind, and a hint.
func TestRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, c := range []struct{ extra, want string }{
		{"packet", "socket (socket:["},
		{"deldir", "deleted file ("},
		{"userfaultfd", "userfaultfd (anon_inode:[userfaultfd])"},
		{"mqueue", "POSIX message queue (/crpipe-fdtest-"},
		{"console", "console (/dev/console"},
	} {
		t.Run(c.extra, func(t *testing.T) {
			pid, fds := startFdtest(t, t.TempDir(), c.extra)
			_, err := runFilter(t, pid)
			prefix := fmt.Sprintf("pid %d fd %d: %s", pid, fds[c.extra], c.want)
			if err == nil || !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), "is not supported") {
				t.Fatalf("got %v, want %q...", err, prefix)
			}
			var h *stage.HintError
			if !errors.As(err, &h) || h.Hint == "" {
				t.Errorf("no hint with %v", err)
			}
		})
	}
}

// TestCannot: supported kinds in a state a restore could not reproduce are
// refused at dump time, naming the pid, the fd, the kind and why.
func TestCannot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, c := range []struct{ extra, kind, why string }{
		{"scmepoll", "file 1 of queued message 1 (in flight): epoll (anon_inode:[eventpoll])", "cannot be restored in flight"},
		{"scminotify", "file 1 of queued message 1 (in flight): inotify (anon_inode:inotify)", "bytes of events are queued"},
		{"scmflock", "file 1 of queued message 1 (in flight): regular (", "only a queued message holds the file"},
		{"scmcreds", "unix (socket:[", "queued message 1 carries the credentials of pid"},
		{"inotifyq", "inotify (anon_inode:inotify)", "bytes of events are queued"},
		{"epollstale", "epoll (anon_inode:[eventpoll])", "which is no longer open as fd"},
		{"async", "pipe:[", "signal-driven I/O (O_ASYNC) signals process 1, which is not in the dump"},
		{"devttylost", "devtty (/dev/tty)", "has no controlling terminal"},
		{"pidfd", "pidfd (anon_inode:[pidfd])", "which is not in the dump"},
		{"unixfilter", "unix socket with a socket filter (SO_ATTACH_FILTER) (socket:[", "is not supported yet"},
		{"secretfd", "memfd_secret(2) file (its memory no other process can read)", "is not supported yet"},
	} {
		t.Run(c.extra, func(t *testing.T) {
			if c.extra == "secretfd" {
				fd, _, errno := unix.Syscall(unix.SYS_MEMFD_SECRET, unix.O_CLOEXEC, 0, 0)
				if errno != 0 {
					t.Skipf("this kernel has no memfd_secret (%v; secretmem.enable=0?)", errno)
				}
				unix.Close(int(fd))
			}
			pid, fds := startFdtest(t, t.TempDir(), c.extra)
			_, err := runFilter(t, pid)
			prefix := fmt.Sprintf("pid %d fd %d: ", pid, fds[c.extra])
			if err == nil || !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), c.kind) || !strings.Contains(err.Error(), c.why) {
				t.Fatalf("got %v, want %q ... %q ... %q", err, prefix, c.kind, c.why)
			}
			t.Log(err)
		})
	}
}

// TestMemfdMapped: a memfd that its process maps too is recorded without
// its contents, which are the mapping's pages (cr-pages), and names the
// mapped object for the restore.
func TestMemfdMapped(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	pid, fds := startFdtest(t, t.TempDir(), "memfdmap")
	var got *pb.FileDesc
	err := filterFrames(t, pid, func(f *image.Frame) {
		if f.Type == image.TypeFileData {
			t.Errorf("a file-data record: the mapped memfd's contents were dumped by cr-files")
		}
		d := new(pb.FileDesc)
		if f.Type == image.TypeFileDesc && image.Unmarshal(f, d) == nil && d.Memfd != nil {
			got = d
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/fd/%d", pid, fds["memfdmap"]), &st); err != nil {
		t.Fatal(err)
	}
	if got == nil || !got.Memfd.Mapped || got.Memfd.Dev != st.Dev || got.Inode != st.Ino || got.Memfd.Name != "mapped" || got.Memfd.Size != 4096 {
		t.Fatalf("memfd record %v, want mapped, dev %d inode %d, name \"mapped\", 4096 bytes", got, st.Dev, st.Ino)
	}
}

// TestPipeHeldOutside: a pipe whose other end another process holds (here
// the test itself) is refused, naming that process.
func TestPipeHeldOutside(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	cmd := exec.Command("sleep", "100")
	cmd.Stdout = pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	_, err = runFilter(t, cmd.Process.Pid)
	want := fmt.Sprintf("pid %d fd 1: pipe (pipe:[", cmd.Process.Pid)
	if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), fmt.Sprintf("of pid %d (", os.Getpid())) {
		t.Fatalf("got %v, want %q... naming pid %d", err, want, os.Getpid())
	}
}

// TestUnixPeerOutside: a connected unix socket whose peer another process
// holds (here the test) is refused, naming the peer and its holder.
func TestUnixPeerOutside(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "ours"), os.NewFile(uintptr(fds[1]), "theirs")
	defer ours.Close()
	cmd := exec.Command("sleep", "100")
	cmd.Stdout = theirs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	var st unix.Stat_t
	if err := unix.Fstat(int(ours.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	_, err = runFilter(t, cmd.Process.Pid)
	want := fmt.Sprintf("pid %d fd 1: unix (socket:[", cmd.Process.Pid)
	peer := fmt.Sprintf("its peer socket:[%d], held by pid %d (", st.Ino, os.Getpid())
	if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), peer) {
		t.Fatalf("got %v, want %q... %q", err, want, peer)
	}
}

func TestGone(t *testing.T) {
	pid, _ := startFdtest(t, t.TempDir())
	syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 1000; i++ {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/fd", pid)); err != nil {
			break
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if bytes.Contains(b, []byte(") Z")) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	_, err := runFilter(t, pid)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", pid)) {
		t.Fatalf("dump of a dead process: %v", err)
	}
}

func TestParseFdinfo(t *testing.T) {
	fi, err := parseFdinfo([]byte("pos:\t12345\nflags:\t02100002\nmnt_id:\t29\nino:\t7\n"))
	if err != nil || fi.pos != 12345 || fi.flags != 0o2100002 || fi.mntID != 29 || fi.ino != 7 {
		t.Errorf("%+v %v", fi, err)
	}
	for _, bad := range []string{"", "pos:\t1\n", "pos: x\nflags: 0\n", "pos: 1\nflags: 9\n"} {
		if _, err := parseFdinfo([]byte(bad)); !errors.Is(err, errFdinfoSyntax) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if u, err := parseUmask([]byte("Name:\tx\nUmask:\t0022\nState:\tS\n")); err != nil || u != 0o22 {
		t.Errorf("umask %#o %v", u, err)
	}
	if _, err := parseUmask([]byte("Name:\tx\n")); err == nil {
		t.Error("no Umask line accepted")
	}
}

func FuzzParseFdinfo(f *testing.F) {
	f.Add([]byte("pos:\t0\nflags:\t02\nmnt_id:\t1\nino:\t2\n"))
	f.Fuzz(func(t *testing.T, b []byte) { parseFdinfo(b); parseUmask(b) })
}

// TestNoFdLeak: a dump of every kind cr-files handles leaves no fd of its
// own open (pidfds, copies taken with pidfd_getfd, private pipes, sock_diag).
func TestNoFdLeak(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	pid, _ := startFdtest(t, t.TempDir(), "pipe", "socket", "eventfd", "scmrights")
	count := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	before := count()
	for i := 0; i < 3; i++ {
		if _, err := runFilter(t, pid); err != nil {
			t.Fatal(err)
		}
	}
	if after := count(); after != before {
		t.Errorf("%d fds open before the dumps, %d after", before, after)
	}
}

func FuzzParseKindLines(f *testing.F) {
	f.Add([]byte("pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\ntfd:        3 events: 80000019 data:             1234  pos:0 ino:16821 sdev:f\n"))
	f.Add([]byte("inotify wd:2 ino:12400a sdev:fe00000 mask:2 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:0a401200f5a3664c\n"))
	f.Add([]byte("clockid: 1\nticks: 0\nsettime flags: 00\nit_value: (9, 999980714)\nit_interval: (1, 500)\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseEpoll(b)
		parseInotify(b)
		e := &entry{info: b, pfd: &pb.Fd{}}
		dumpTimerfd(e, &pb.FileDesc{})
		dumpEventfd(e, &pb.FileDesc{})
		dumpSignalfd(e, &pb.FileDesc{})
	})
}

func TestParseKindLines(t *testing.T) {
	ws, err := parseEpoll([]byte("pos:\t0\ntfd:        3 events: 80000019 data:             1234  pos:0 ino:16821 sdev:f\ntfd:       14 events:       1c data:  2222222222  pos:0 ino:9 sdev:f\n"))
	if err != nil || len(ws) != 2 || ws[0].tfd != 3 || ws[0].events != 0x80000019 || ws[0].data != 0x1234 || ws[1].tfd != 14 || ws[1].data != 0x2222222222 {
		t.Errorf("epoll: %+v %v", ws, err)
	}
	in, err := parseInotify([]byte("inotify wd:2 ino:12400a sdev:fe00000 mask:2 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:0a401200f5a3664c\ninotify wd:1 ino:3c4a3 sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a3c4030000000000\n"))
	if err != nil || len(in) != 2 || in[0].wd != 1 || in[0].mask != 0x300 || in[1].ino != 0x12400a || in[1].sdev != unix.Mkdev(0xfe, 0) || len(in[1].handle) != 8 {
		t.Errorf("inotify: %+v %v", in, err)
	}
	e := &entry{info: []byte("clockid: 1\nticks: 4\nsettime flags: 01\nit_value: (9, 999980714)\nit_interval: (1, 500)\n"), pfd: &pb.Fd{}}
	var rec pb.FileDesc
	if err := dumpTimerfd(e, &rec); err != nil || rec.Timerfd.Clockid != 1 || rec.Timerfd.Ticks != 4 || rec.Timerfd.SettimeFlags != 1 ||
		rec.Timerfd.ValueNsec != 9999980714 || rec.Timerfd.IntervalNsec != 1000000500 {
		t.Errorf("timerfd: %v %v", rec.Timerfd, err)
	}
	for _, bad := range []string{"tfd: x events: 1 data: 1\n", "tfd: 3 events: 1\n"} {
		if _, err := parseEpoll([]byte(bad)); !errors.Is(err, errFdinfoSyntax) {
			t.Errorf("epoll %q: %v", bad, err)
		}
	}
	if _, err := parseInotify([]byte("inotify wd:1 ino:2\n")); !errors.Is(err, errFdinfoSyntax) {
		t.Errorf("inotify without handle: %v", err)
	}
}

// listingAll lists again while a socket of the dump is missing from the
// listing, three times at most, and stops at the first whole one.
func TestListingAll(t *testing.T) {
	want := map[uint64]bool{7: true, 9: true}
	for _, c := range []struct {
		name      string
		listings  []map[uint64]*sys.UnixDiag
		calls, of int // calls made; sockets of want in the result
	}{
		{"whole at once", []map[uint64]*sys.UnixDiag{{7: {}, 9: {}, 11: {}}}, 1, 2},
		{"one missed once", []map[uint64]*sys.UnixDiag{{7: {}}, {7: {}, 9: {}}}, 2, 2},
		{"missed every time", []map[uint64]*sys.UnixDiag{{7: {}}, {7: {}}, {7: {}}, {7: {}, 9: {}}}, 3, 1},
	} {
		calls := 0
		all, err := listingAll(func() (map[uint64]*sys.UnixDiag, error) {
			calls++
			return c.listings[calls-1], nil
		}, want)
		of := 0
		for ino := range want {
			if all[ino] != nil {
				of++
			}
		}
		if err != nil || calls != c.calls || of != c.of {
			t.Errorf("%s: %d listings, %d of 2 sockets, %v; want %d listings, %d", c.name, calls, of, err, c.calls, c.of)
		}
	}
}
