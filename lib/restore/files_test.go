package restore

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// The soft limit of open files is raised for the fds to install, up to the
// hard limit; past it, the restore says which limit to raise.
func TestRaiseNofile(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	lim := unix.Rlimit{Cur: 100, Max: 5000}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		t.Fatal(err)
	}
	if err := raiseNofile(pid, 3000); err != nil {
		t.Fatal(err)
	}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &lim); err != nil || lim.Cur != 3000 || lim.Max != 5000 {
		t.Fatalf("after raising to 3000: %+v, %v", lim, err)
	}
	err := raiseNofile(pid, 6000)
	var h *stage.HintError
	if err == nil || !errors.As(err, &h) || !strings.Contains(err.Error(), "above the hard limit of 5000") {
		t.Fatalf("past the hard limit: %v", err)
	}
}

// The holding area of a batch is the lowest run of free numbers long
// enough, below the table where there is one.
func TestHoldingArea(t *testing.T) {
	valgrind := []int32{0, 1, 2, 3, 251, 19990, 19991, 19992, 19993, 19994}
	dense := make([]int32, 1000)
	for i := range dense {
		dense[i] = int32(i)
	}
	for _, c := range []struct {
		name    string
		targets []int32
		ctl     int
		want    uint64
	}{
		{"valgrind's fds under the limit", valgrind, 19995, 252},
		{"none", nil, 3, 4},
		{"a dense table", dense, 1000, 1001},
		{"a gap just large enough", []int32{0, 1 + holdingSize, 2 + holdingSize}, 5000, 1},
		{"a gap one too small", []int32{0, holdingSize, 2000}, 5000, holdingSize + 1},
	} {
		if got := holdingArea(c.targets, c.ctl); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}

// TestStaleSocketFile: a socket file is stale only once its socket is
// closed, whatever the type bound there, and the check leaves a live
// listener without a connection to accept.
func TestStaleSocketFile(t *testing.T) {
	dir := t.TempDir()
	for _, typ := range []struct {
		name string
		typ  int
	}{{"stream", unix.SOCK_STREAM}, {"seqpacket", unix.SOCK_SEQPACKET}, {"dgram", unix.SOCK_DGRAM}} {
		t.Run(typ.name, func(t *testing.T) {
			name := []byte(typ.name + ".sock")
			fd, err := unix.Socket(unix.AF_UNIX, typ.typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			closed := false
			defer func() {
				if !closed {
					unix.Close(fd)
				}
			}()
			if err := fromDir(dir, name, func() error { return unix.Bind(fd, sockaddr(name)) }); err != nil {
				t.Fatal(err)
			}
			if typ.typ != unix.SOCK_DGRAM {
				if err := unix.Listen(fd, 5); err != nil {
					t.Fatal(err)
				}
			}
			if staleSocketFile(dir, name) {
				t.Errorf("a bound %s socket's file is called stale", typ.name)
			}
			if typ.typ != unix.SOCK_DGRAM {
				if _, _, err := unix.Accept(fd); !errors.Is(err, unix.EAGAIN) {
					t.Errorf("accept after the check: %v, want EAGAIN (no connection made)", err)
				}
			}
			unix.Close(fd)
			closed = true
			if !staleSocketFile(dir, name) {
				t.Errorf("the file of a closed %s socket is not called stale", typ.name)
			}
		})
	}
	if staleSocketFile(dir, []byte("missing.sock")) {
		t.Errorf("a missing file is called stale")
	}
}

// TestCheckUnix: the types and states a dump records pass; others, which
// restored as another socket, are refused.
func TestCheckUnix(t *testing.T) {
	for _, c := range []struct {
		typ, state uint32
		ok         bool
	}{
		{unix.SOCK_STREAM, sockListen, true},
		{unix.SOCK_STREAM, sockEstablished, true},
		{unix.SOCK_SEQPACKET, sockClose, true},
		{unix.SOCK_DGRAM, sockEstablished, true},
		{unix.SOCK_DGRAM, sockListen, false},
		{unix.SOCK_RAW, sockClose, false},
		{1<<31 - 1, sockClose, false},
		{unix.SOCK_STREAM, 2, false},
		{unix.SOCK_STREAM, 1<<31 - 1, false},
	} {
		if err := checkUnix(&pb.UnixSocket{Type: c.typ, State: c.state}); (err == nil) != c.ok {
			t.Errorf("type %d state %d: %v, want ok %v", c.typ, c.state, err, c.ok)
		}
	}
}

// TestMulticastGroupLength: a group address of the wrong length (an
// edited image) is refused by its length, for both families.
func TestMulticastGroupLength(t *testing.T) {
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		for _, group := range [][]byte{nil, {224, 0, 0}, make([]byte, 20)} {
			in := &pb.InetSocket{Family: uint32(family), Mcast: []*pb.McastMembership{{Device: "lo", Group: group}}}
			err := setMulticast(fd, in)
			want := fmt.Sprintf("a group address of %d bytes", len(group))
			if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "<nil>") {
				t.Errorf("family %d, group of %d bytes: %v (want %q)", family, len(group), err, want)
			}
		}
	}
}
