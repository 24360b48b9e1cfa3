package restore

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/netlock"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// TCP sockets (cr-tcp, issue 6). The TcpLock record comes first: the lock
// is installed in the namespace cr-restore runs in before anything else of
// TCP happens here, so a peer that already reaches this host (the service
// address moved) meets silence, not a reset. The sockets are all built at
// the first FD_TCP fd (listeners first, so that connections accepted from
// them can share their port), in this process's network namespace; a
// connection is rebuilt in repair mode and leaves it before it is handed
// to its task. Once every task runs, the lock is lifted.

func init() {
	registerRecord(image.TypeTcpLock, recordTCPLock)
	registerRecord(image.TypeTcpSocket, recordTCPSocket)
	registerRecord(image.TypeTcpQueue, recordTCPQueue)
	registerFdKind(pb.FdKind_FD_TCP, openTCP)
	registerFinisher(finishTCP)
	registerAborter(abortTCP)
}

const tcpKey = "tcp"

// tcpState is the TCP part of a restore run.
type tcpState struct {
	socks  map[uint64]*tcpSock
	order  []*tcpSock
	tables []string // lock tables installed or extended here
	built  bool
}

type tcpSock struct {
	rec        *pb.TcpSocket
	recv, send []byte
	file       *os.File
}

func (ts *tcpState) closeFiles() {
	for _, s := range ts.order {
		if s.file != nil {
			s.file.Close()
			s.file = nil
		}
	}
}

func tcpOf(rc *Ctx) *tcpState {
	ts, ok := rc.Shared[tcpKey].(*tcpState)
	if !ok {
		ts = &tcpState{socks: map[uint64]*tcpSock{}}
		rc.Shared[tcpKey] = ts
	}
	return ts
}

func recordTCPLock(rc *Ctx, f *image.Frame) error {
	l := new(pb.TcpLock)
	if err := image.Unmarshal(f, l); err != nil {
		return err
	}
	ts := tcpOf(rc)
	var flows []netlock.Flow
	for _, fl := range l.Flows {
		la, ok1 := netip.AddrFromSlice(fl.LocalAddr)
		pa, ok2 := netip.AddrFromSlice(fl.PeerAddr)
		if !ok1 || !ok2 || fl.LocalPort > 0xffff || fl.PeerPort > 0xffff {
			return fmt.Errorf("frame %d at offset %d: tcp-lock flow with a bad address: %w", f.Index, f.Offset, image.ErrCorrupt)
		}
		flows = append(flows, netlock.Flow{Local: netip.AddrPortFrom(la, uint16(fl.LocalPort)), Peer: netip.AddrPortFrom(pa, uint16(fl.PeerPort))})
	}
	ts.tables = append(ts.tables, l.Table)
	// Restoring where the dump ran: its lock is there already.
	if ino, err := sys.NetnsInode("/proc/self/ns/net"); err == nil && ino == l.Netns {
		stage.Logf("network lock %s: %d connections held since the dump", l.Table, len(flows))
		return nil
	}
	t0 := time.Now()
	if err := netlock.Lock("", l.Table, flows); err != nil {
		return err
	}
	stage.Logf("network lock %s: %d connections held (%v)", l.Table, len(flows), time.Since(t0).Round(time.Microsecond))
	return nil
}

func recordTCPSocket(rc *Ctx, f *image.Frame) error {
	r := new(pb.TcpSocket)
	if err := image.Unmarshal(f, r); err != nil {
		return err
	}
	ts := tcpOf(rc)
	if _, dup := ts.socks[r.Inode]; dup || r.Inode == 0 {
		return fmt.Errorf("frame %d at offset %d: second tcp-socket record for inode %d: %w", f.Index, f.Offset, r.Inode, image.ErrCorrupt)
	}
	if err := checkTCPRecord(r); err != nil {
		return fmt.Errorf("frame %d at offset %d: tcp socket %d: %v: %w", f.Index, f.Offset, r.Inode, err, image.ErrCorrupt)
	}
	s := &tcpSock{rec: r}
	ts.socks[r.Inode] = s
	ts.order = append(ts.order, s)
	return nil
}

func checkTCPRecord(r *pb.TcpSocket) error {
	alen := 4
	switch r.Family {
	case unix.AF_INET:
	case unix.AF_INET6:
		alen = 16
	default:
		return fmt.Errorf("family %d", r.Family)
	}
	if r.LocalPort > 0xffff || r.PeerPort > 0xffff {
		return fmt.Errorf("port out of range")
	}
	if len(r.LocalAddr) != alen {
		return fmt.Errorf("local address of %d bytes", len(r.LocalAddr))
	}
	if r.Opts == nil {
		r.Opts = &pb.TcpSockopts{}
	}
	if r.Conn != nil {
		if len(r.PeerAddr) != alen {
			return fmt.Errorf("peer address of %d bytes", len(r.PeerAddr))
		}
		if r.Conn.Window == nil {
			return fmt.Errorf("connection without a window")
		}
		if r.Conn.UnsentLen > r.Conn.SendLen {
			return fmt.Errorf("%d unsent bytes of %d in the send queue", r.Conn.UnsentLen, r.Conn.SendLen)
		}
		if r.Conn.SendLen > 1<<30 || r.Conn.RecvLen > 1<<30 {
			return fmt.Errorf("queues of %d and %d bytes", r.Conn.SendLen, r.Conn.RecvLen)
		}
	}
	return nil
}

func recordTCPQueue(rc *Ctx, f *image.Frame) error {
	q := new(pb.TcpQueue)
	if err := image.Unmarshal(f, q); err != nil {
		return err
	}
	s, ok := tcpOf(rc).socks[q.Inode]
	bad := func(why string) error {
		return fmt.Errorf("frame %d at offset %d: tcp-queue of socket %d: %s: %w", f.Index, f.Offset, q.Inode, why, image.ErrCorrupt)
	}
	if !ok || s.rec.Conn == nil {
		return bad("no connection record before it")
	}
	var dst *[]byte
	var want uint32
	switch q.Queue {
	case sys.TCPRecvQueue:
		dst, want = &s.recv, s.rec.Conn.RecvLen
	case sys.TCPSendQueue:
		dst, want = &s.send, s.rec.Conn.SendLen
	default:
		return bad(fmt.Sprintf("queue %d", q.Queue))
	}
	if int(q.Offset) != len(*dst) || uint64(len(*dst))+uint64(len(q.Data)) > uint64(want) {
		return bad(fmt.Sprintf("%d bytes at %d, %d of %d bytes so far", len(q.Data), q.Offset, len(*dst), want))
	}
	if *dst == nil {
		*dst = make([]byte, 0, want)
	}
	*dst = append(*dst, q.Data...)
	return nil
}

// openTCP returns the socket of fd, building every socket at the first call.
func openTCP(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	ts := tcpOf(rc)
	if !ts.built {
		ts.built = true
		if err := ts.buildAll(); err != nil {
			return nil, err
		}
	}
	s, ok := ts.socks[fd.Inode]
	if !ok || s.file == nil {
		return nil, stage.Hint(fmt.Errorf("pid %d fd %d: the stream has no tcp-socket record for socket %d", t.pid, fd.Fd, fd.Inode),
			"the image must come through cr-tcp: "+dumpPipeline)
	}
	if err := setStatusFlags(s.file, fd.Flags); err != nil {
		return nil, fmt.Errorf("pid %d fd %d: %w", t.pid, fd.Fd, err)
	}
	return dupFile(s.file, t, fd)
}

func (ts *tcpState) buildAll() error {
	t0 := time.Now()
	conns := 0
	// Listeners first: connections accepted from them share their port;
	// then the connections that waited in their accept queues go back.
	children := map[uint64][]*tcpSock{}
	for _, s := range ts.order {
		if c := s.rec.Conn; c != nil && c.Listener != 0 {
			children[c.Listener] = append(children[c.Listener], s)
		}
	}
	for pass := 0; pass < 3; pass++ {
		for _, s := range ts.order {
			kind := 2
			switch {
			case s.rec.State == sys.TCPListen:
				kind = 0
			case s.rec.Conn == nil:
				kind = 1
			case s.rec.Conn.Listener != 0:
				kind = 3 // with its listener
			}
			if kind != pass {
				continue
			}
			if err := s.build(); err != nil {
				return fmt.Errorf("tcp socket %d (pid %d fd %d, %s): %w", s.rec.Inode, s.rec.Pid, s.rec.Fd, s.describe(), err)
			}
			if kind == 2 {
				conns++
			}
			for _, c := range children[s.rec.Inode] {
				if err := c.requeue(s); err != nil {
					return fmt.Errorf("tcp socket %d (pid %d fd %d, %s, not yet accepted): %w", c.rec.Inode, c.rec.Pid, c.rec.Fd, c.describe(), err)
				}
				conns++
			}
			delete(children, s.rec.Inode)
		}
	}
	for l, cs := range children {
		return fmt.Errorf("tcp socket %d: in the accept queue of socket %d, which the stream does not have: %w", cs[0].rec.Inode, l, image.ErrCorrupt)
	}
	stage.Logf("%d TCP sockets (%d connections) rebuilt in %v", len(ts.order), conns, time.Since(t0).Round(time.Microsecond))
	return nil
}

func (s *tcpSock) describe() string {
	r := s.rec
	l := addrPortOf(r.LocalAddr, r.LocalPort)
	if r.Conn != nil {
		return fmt.Sprintf("%s %v -> %v", sys.TCPStateName(r.State), l, addrPortOf(r.PeerAddr, r.PeerPort))
	}
	return fmt.Sprintf("%s %v", sys.TCPStateName(r.State), l)
}

func addrPortOf(a []byte, port uint32) netip.AddrPort {
	ad, _ := netip.AddrFromSlice(a)
	return netip.AddrPortFrom(ad, uint16(port))
}

func sockaddrOf(family uint32, a []byte, port, scope uint32) unix.Sockaddr {
	if family == unix.AF_INET {
		sa := &unix.SockaddrInet4{Port: int(port)}
		copy(sa.Addr[:], a)
		return sa
	}
	sa := &unix.SockaddrInet6{Port: int(port), ZoneId: scope}
	copy(sa.Addr[:], a)
	return sa
}

// finishTCP lifts the lock once every task runs again.
func finishTCP(rc *Ctx) error {
	ts, ok := rc.Shared[tcpKey].(*tcpState)
	if !ok {
		return nil
	}
	ts.closeFiles()
	for _, table := range ts.tables {
		t0 := time.Now()
		if err := netlock.Unlock("", table); err != nil {
			return stage.Hint(err, fmt.Sprintf("the restored tree runs, but its connections stay held until the lock goes: nft delete table inet %s", table))
		}
		stage.Logf("network lock %s lifted (%v)", table, time.Since(t0).Round(time.Microsecond))
	}
	return nil
}

// abortTCP keeps the lock of a failed restore: the dumped tree is gone,
// and its peers, held in silence, still wait for it. Another restore can
// take them over; releasing them resets them.
func abortTCP(rc *Ctx, err error) error {
	ts, ok := rc.Shared[tcpKey].(*tcpState)
	if !ok {
		return err
	}
	ts.closeFiles()
	var h *stage.HintError
	if len(ts.tables) == 0 || errors.As(err, &h) {
		return err
	}
	pid := strings.TrimPrefix(ts.tables[0], "crpipe-")
	return stage.Hint(err, fmt.Sprintf("the TCP connections stay held (nft table inet %s) so that their peers see no reset: restore again, or give them up with cr-tcp unlock %s", ts.tables[0], pid))
}
