package sys_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/netlock"
	"crpipe/lib/sys"
)

// TestTCPRequeue takes a connection out of a listener's accept queue (as
// cr-tcp does to read it), closes it silently, puts it back with
// TCPRequeue, and checks that the program's accept gets a connection
// that goes on where the peer is: the bytes the peer had sent, the peer's
// FIN, and traffic both ways.
func TestTCPRequeue(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("repair mode and raw sockets need root")
	}
	for _, tool := range []string{"nft", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	for _, c := range []struct {
		name string
		addr string
		data int
		fin  bool
	}{
		{"v4", "127.0.0.1", 5, false},
		{"v4-150KiB", "127.0.0.1", 150 << 10, false},
		{"v4-fin", "127.0.0.1", 1000, true},
		{"v6", "::1", 700, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				runtime.LockOSThread() // never unlocked: the thread dies with its namespace
				done <- requeueIn(c.addr, c.data, c.fin)
			}()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

func requeueIn(addr string, size int, fin bool) error {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return err
	}
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("ip: %v: %s", err, out)
	}
	server := netip.AddrPortFrom(netip.MustParseAddr(addr), 6000)
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: server.Addr().As16(), Port: 6000}
	if server.Addr().Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: server.Addr().As4(), Port: 6000}
	}
	l, _ := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	defer unix.Close(l)
	if err := unix.Bind(l, sa); err != nil {
		return err
	}
	if err := unix.Listen(l, 8); err != nil {
		return err
	}
	c, _ := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	defer unix.Close(c)
	if err := unix.Connect(c, sa); err != nil {
		return err
	}
	sent := make([]byte, size)
	for i := range sent {
		sent[i] = byte(i*7 + i>>9)
	}
	if err := unix.SetNonblock(c, true); err != nil {
		return err
	}
	if n, err := unix.Write(c, sent); err != nil || n != size {
		return fmt.Errorf("the client sent %d of %d bytes before accept: %v", n, size, err)
	}
	if fin {
		unix.Shutdown(c, unix.SHUT_WR)
	}
	time.Sleep(50 * time.Millisecond)
	csa, _ := unix.Getsockname(c)
	var client netip.AddrPort
	switch a := csa.(type) {
	case *unix.SockaddrInet4:
		client = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		client = netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	table := "crpipe-1"
	if err := netlock.Lock("", table, []netlock.Flow{{Local: server, Peer: client}}); err != nil {
		return err
	}
	defer netlock.Unlock("", table)

	// What cr-tcp does: accept, read in repair mode, close without a word.
	k, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		return err
	}
	info, _ := sys.GetTCPInfo(k)
	if err := sys.SetTCPRepair(k, unix.TCP_REPAIR_ON); err != nil {
		return err
	}
	sys.SetTCPRepairQueue(k, sys.TCPSendQueue)
	wseq, _ := sys.TCPQueueSeq(k)
	sys.SetTCPRepairQueue(k, sys.TCPRecvQueue)
	rnxt, _ := sys.TCPQueueSeq(k)
	inq, _ := sys.SockQueueLen(k, sys.SIOCINQ)
	data, err := sys.PeekTCPQueue(k, inq)
	if err != nil {
		return err
	}
	win, _ := sys.GetTCPRepairWindow(k)
	mss, _ := unix.GetsockoptInt(k, unix.IPPROTO_TCP, unix.TCP_MAXSEG)
	unix.Close(k)
	peerISN := rnxt - uint32(inq) - 1
	if fin {
		peerISN--
	}
	p := sys.TCPPending{
		Local: server, Peer: client, ISN: wseq - 1, PeerISN: peerISN, MSS: uint32(mss),
		Wscale: info.Options&sys.TCPIOptWscale != 0, PeerWscale: info.SndWscale, SACK: info.Options&sys.TCPIOptSACK != 0,
		PeerWindow: win.SndWnd, Data: data, Fin: fin, Mark: netlock.Mark,
	}
	// The rest waits in the client's send queue for the window to open.
	if !bytes.Equal(data, sent[:len(data)]) || len(data) == 0 || fin && len(data) != size {
		return fmt.Errorf("the accept queue held %d bytes, the client sent %d", len(data), size)
	}
	if err := sys.TCPRequeue(l, p); err != nil {
		return err
	}
	netlock.Unlock("", table)

	// The program accepts it now.
	k2, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(k2)
	unix.SetsockoptTimeval(k2, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	got := make([]byte, 0, size)
	buf := make([]byte, 64<<10)
	for len(got) < size {
		n, err := unix.Read(k2, buf)
		if err != nil || n == 0 {
			return fmt.Errorf("the requeued connection read %d of %d bytes: %v", len(got), size, err)
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Equal(got, sent) {
		return fmt.Errorf("the requeued connection read other bytes than the client sent")
	}
	if fin {
		if n, err := unix.Read(k2, buf); n != 0 || err != nil {
			return fmt.Errorf("no end of file after the data: %d %v", n, err)
		}
	}
	if _, err := unix.Write(k2, []byte("world")); err != nil {
		return err
	}
	unix.SetNonblock(c, false)
	unix.SetsockoptTimeval(c, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
	n, err := unix.Read(c, buf)
	if err != nil || string(buf[:n]) != "world" {
		return fmt.Errorf("the client reads %q, %v", buf[:max(n, 0)], err)
	}
	if !fin {
		if _, err := unix.Write(c, []byte("more")); err != nil {
			return err
		}
		if n, err := unix.Read(k2, buf); err != nil || string(buf[:n]) != "more" {
			return fmt.Errorf("the requeued connection reads %q, %v", buf[:max(n, 0)], err)
		}
	}
	return nil
}
