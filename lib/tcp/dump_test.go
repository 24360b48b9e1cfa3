package tcp

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/netlock"
	"crpipe/lib/pb"
	"crpipe/lib/sys"
)

func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// inNewNetns runs fn on a thread of its own in a new network namespace
// with loopback up: sockets fn creates live there, and so does the lock.
func inNewNetns(t *testing.T, fn func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("unshare: %w", err)
			return
		}
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			done <- fmt.Errorf("ip link set lo up: %v: %s", err, out)
			return
		}
		done <- fn()
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestDumpAndRelease dumps this process's own connection (both ends) in a
// namespace of its own, checks the records, then does what cr-freeze thaw
// does, and checks the connection works again and no fd leaked.
func TestDumpAndRelease(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("repair mode and pidfd_getfd need root")
	}
	for _, tool := range []string{"nft", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	before := openFds(t)
	var ln, a, b int
	inNewNetns(t, func() error {
		var err error
		if ln, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.Bind(ln, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 7777}); err != nil {
			return err
		}
		if err := unix.Listen(ln, 5); err != nil {
			return err
		}
		if a, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.Connect(a, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 7777}); err != nil {
			return err
		}
		b, _, err = unix.Accept4(ln, unix.SOCK_CLOEXEC)
		return err
	})
	defer unix.Close(ln)
	defer unix.Close(a)
	defer unix.Close(b)
	// Unread data on both ends.
	if _, err := unix.Write(a, []byte("to b, unread")); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(b, []byte("to a")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)

	var out bytes.Buffer
	w, err := image.NewWriter(&out, image.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pid := os.Getpid()
	if err := Dump(pid, []int{pid}, w); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for _, fd := range []int{a, b} {
		if on, err := sys.TCPRepairMode(fd); err != nil || !on {
			t.Errorf("fd %d is not in repair mode after the dump (%v)", fd, err)
		}
	}
	r, err := image.NewReader(&out)
	if err != nil {
		t.Fatal(err)
	}
	var locks []*pb.TcpLock
	socks := map[int32]*pb.TcpSocket{}
	queued := map[uint64][]byte{}
	for {
		f, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch f.Type {
		case image.TypeTcpLock:
			l := new(pb.TcpLock)
			image.Unmarshal(f, l)
			locks = append(locks, l)
		case image.TypeTcpSocket:
			s := new(pb.TcpSocket)
			image.Unmarshal(f, s)
			socks[s.Fd] = s
		case image.TypeTcpQueue:
			q := new(pb.TcpQueue)
			image.Unmarshal(f, q)
			queued[q.Inode] = append(queued[q.Inode], q.Data...)
		}
	}
	if len(locks) != 1 || len(locks[0].Flows) != 2 || locks[0].Table != netlock.TableName(pid) {
		t.Fatalf("lock records: %v", locks)
	}
	if s := socks[int32(ln)]; s == nil || s.State != sys.TCPListen || s.Backlog != 5 || s.LocalPort != 7777 || s.Conn != nil {
		t.Errorf("listener: %v", s)
	}
	for fd, unread := range map[int]string{a: "to a", b: "to b, unread"} {
		s := socks[int32(fd)]
		if s == nil || s.State != sys.TCPEstablished || s.Conn == nil {
			t.Fatalf("fd %d: %v", fd, s)
		}
		c := s.Conn
		if c.RecvLen != uint32(len(unread)) || string(queued[s.Inode]) != unread || c.SendLen != 0 {
			t.Errorf("fd %d: receive queue %d bytes %q, send queue %d bytes; want %q", fd, c.RecvLen, queued[s.Inode], c.SendLen, unread)
		}
		if c.Mss == 0 || !c.Timestamps || !c.Sack || c.Window == nil || c.Window.RcvWnd == 0 {
			t.Errorf("fd %d: negotiated state %v", fd, c)
		}
	}

	// What cr-freeze thaw does after a failed or --leave-running dump.
	n, err := netlock.Release(netlock.TableName(pid), []int{pid})
	if err != nil || n != 2 {
		t.Fatalf("release: %d sockets, %v", n, err)
	}
	nsfd, err := unix.IoctlRetInt(a, unix.SIOCGSKNS)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := netlock.Tables(fmt.Sprintf("/proc/self/fd/%d", nsfd))
	unix.Close(nsfd)
	if err != nil || len(tables) != 0 {
		t.Errorf("tables after release: %v %v", tables, err)
	}
	if _, err := unix.Write(a, []byte("!")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	unix.SetsockoptTimeval(b, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	got := 0
	for got < 13 {
		m, err := unix.Read(b, buf[got:])
		if err != nil {
			t.Fatalf("read after release: %v", err)
		}
		got += m
	}
	if string(buf[:got]) != "to b, unread!" {
		t.Errorf("after release b reads %q", buf[:got])
	}
	if after := openFds(t); after != before+3 {
		t.Errorf("%d fds open, want %d (the 3 sockets of the test): a leak", after, before+3)
	}
}
