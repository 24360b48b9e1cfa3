package sys

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// TCPPending is a connection that waited in a listener's accept queue
// (its handshake done, not yet accepted), to be put back into one.
type TCPPending struct {
	Local, Peer netip.AddrPort
	ISN         uint32 // our initial sequence number
	PeerISN     uint32
	MSS         uint32 // mss_clamp, the MSS option the peer had sent
	Wscale      bool   // window scaling negotiated
	PeerWscale  uint8  // the peer's shift (our snd_wscale)
	SACK        bool
	PeerWindow  uint32 // the peer's window in bytes (our snd_wnd)
	Data        []byte // what the peer had sent: the receive queue
	Fin         bool   // and the peer's FIN after it
	Mark        uint32 // fwmark of the segments written here (passes the lock)
}

// TCPRequeue puts p back into the accept queue of listener, with its
// sequence numbers: the kernel cannot be given an established socket for
// an accept queue, and it chooses a new connection's initial sequence
// number itself, except in one case: a SYN that reopens a connection in
// TIME_WAIT gets the ISN tw_snd_nxt + 65537 (RFC 1122 4.2.2.13, so that
// old duplicates fall out of the new window). So a socket of the same
// 4-tuple is built in repair mode with the right snd_nxt, walked into
// TIME_WAIT (its FIN counted as sent, the peer's FIN and ACK written
// here), and the peer's SYN, ACK and data are written again, all from
// the peer's address through loopback. The listener answers them with the
// old ISN; its SYN-ACK and ACKs go nowhere (the caller holds the network
// lock, which these segments pass by their mark).
//
// Limits: the new connection has no TCP timestamps (a Linux peer goes on
// without them), takes its own window scale from the listener as any new
// connection (the same as before when the listener and sysctls are), and
// keeps a fixed receive buffer large enough for what it had received;
// Local must be an address of this network namespace. The caller runs in
// the listener's network namespace, as root.
func TCPRequeue(listener int, p TCPPending) error {
	if p.Local.Addr().Is4() != p.Peer.Addr().Is4() {
		return fmt.Errorf("requeue: %v -> %v mixes address families", p.Local, p.Peer)
	}
	info, err := GetTCPInfo(listener)
	if err != nil {
		return err
	}
	queued := info.Unacked
	// The new connection inherits the listener's receive buffer; the bytes
	// written here take more room than the peer's own segments did, so
	// the listener lends it more for the moment (the connection keeps it).
	rcvbuf, err := unix.GetsockoptInt(listener, unix.SOL_SOCKET, unix.SO_RCVBUF)
	if err != nil {
		return fmt.Errorf("SO_RCVBUF: %w", err)
	}
	if need := 4*len(p.Data) + 256<<10; rcvbuf < need {
		lock, lockErr := unix.GetsockoptInt(listener, unix.SOL_SOCKET, unix.SO_BUF_LOCK)
		if err := unix.SetsockoptInt(listener, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, need); err != nil {
			return fmt.Errorf("SO_RCVBUFFORCE: %w", err)
		}
		defer func() {
			unix.SetsockoptInt(listener, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf/2)
			if lockErr == nil {
				unix.SetsockoptInt(listener, unix.SOL_SOCKET, unix.SO_BUF_LOCK, lock)
			}
		}()
	}
	if err := tcpTimeWait(p); err != nil {
		return fmt.Errorf("requeue %v: %w", p.Peer, err)
	}
	seg := TCPSegment{Src: p.Peer, Dst: p.Local}
	// The peer's SYN again, with the options that were negotiated.
	seg.Seq, seg.Flags, seg.Window = p.PeerISN, TCPFlagSYN, uint16(min(p.PeerWindow, 0xffff))
	opts := []byte{2, 4, 0, 0}
	binary.BigEndian.PutUint16(opts[2:], uint16(min(p.MSS, 0xffff)))
	if p.SACK {
		opts = append(opts, 1, 1, 4, 2)
	}
	if p.Wscale {
		opts = append(opts, 1, 3, 3, min(p.PeerWscale, 14))
	}
	seg.Options = opts
	if err := SendTCPSegment(seg, p.Mark); err != nil {
		return fmt.Errorf("requeue %v: SYN: %w", p.Peer, err)
	}
	// Its ACK, then what it had sent, a piece at a time: the new
	// connection starts with the listener's initial window and opens it as
	// data arrives (its ACKs, dropped by the lock, still count), and its
	// receive queue (/proc/net/tcp rx_queue) says what it took.
	win := p.PeerWindow
	if p.Wscale {
		win >>= min(p.PeerWscale, 14)
	}
	seg.Options = nil
	seg.Flags, seg.Window, seg.Ack = TCPFlagACK, uint16(min(win, 0xffff)), p.ISN+1
	seg.Seq, seg.Payload = p.PeerISN+1, nil
	if err := SendTCPSegment(seg, p.Mark); err != nil {
		return fmt.Errorf("requeue %v: ACK: %w", p.Peer, err)
	}
	if _, err := waitTuple(p, func(st uint8, _ int) bool { return st == TCPEstablished }); err != nil {
		return fmt.Errorf("requeue %v: handshake: %w", p.Peer, err)
	}
	chunk := int(min(max(p.MSS, 536), 16384))
	for held, tries := 0, 0; held < len(p.Data); {
		n := min(chunk, len(p.Data)-held)
		seg.Seq, seg.Payload, seg.Flags = p.PeerISN+1+uint32(held), p.Data[held:held+n], TCPFlagACK|TCPFlagPSH
		if err := SendTCPSegment(seg, p.Mark); err != nil {
			return fmt.Errorf("requeue %v: data: %w", p.Peer, err)
		}
		rx, err := waitTuple(p, func(_ uint8, rx int) bool { return rx > held })
		if err != nil {
			// Out of the window for now: wait for it to open, then again.
			if tries++; tries > 50 {
				return fmt.Errorf("requeue %v: %d of %d bytes taken back: %w", p.Peer, held, len(p.Data), err)
			}
			continue
		}
		held, tries = rx, 0
	}
	if p.Fin {
		seg.Seq, seg.Payload, seg.Flags = p.PeerISN+1+uint32(len(p.Data)), nil, TCPFlagFIN|TCPFlagACK
		if err := SendTCPSegment(seg, p.Mark); err != nil {
			return fmt.Errorf("requeue %v: FIN: %w", p.Peer, err)
		}
		if _, err := waitTuple(p, func(st uint8, _ int) bool { return st == TCPCloseWait }); err != nil {
			return fmt.Errorf("requeue %v: FIN: %w", p.Peer, err)
		}
	}
	for deadline := time.Now().Add(time.Second); ; {
		info, err := GetTCPInfo(listener)
		if err != nil {
			return err
		}
		if info.Unacked > queued {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("requeue %v: the listener did not take the connection back", p.Peer)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitTuple waits (up to 20 ms: the segments written here are delivered
// at once through loopback) until the socket of p's 4-tuple satisfies ok,
// and returns its receive queue length.
func waitTuple(p TCPPending, ok func(state uint8, rxQueue int) bool) (int, error) {
	deadline := time.Now().Add(20 * time.Millisecond)
	for {
		st, rx, err := tcpTuple(p.Local, p.Peer)
		if err != nil {
			return 0, err
		}
		if ok(st, rx) {
			return rx, nil
		}
		if time.Now().After(deadline) {
			return rx, fmt.Errorf("the connection is %s with %d bytes received", TCPStateName(uint32(st)), rx)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// tcpTimeWait leaves a TIME_WAIT socket for the 4-tuple whose snd_nxt is
// p.ISN - 65537 and whose rcv_nxt is well before p.PeerISN.
func tcpTimeWait(p TCPPending) error {
	family := unix.AF_INET6
	if p.Local.Addr().Is4() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	closed := false
	defer func() {
		if !closed {
			unix.Close(fd)
		}
	}()
	if err := SetTCPRepair(fd, unix.TCP_REPAIR_ON); err != nil {
		return err
	}
	if err := unix.Bind(fd, sockaddr(p.Local)); err != nil {
		return fmt.Errorf("bind %v: %w", p.Local, err)
	}
	rcv := p.PeerISN - 1<<28
	snd := p.ISN - 65537 - 1 // our FIN takes one
	for _, q := range []struct {
		queue int
		seq   uint32
	}{{TCPRecvQueue, rcv}, {TCPSendQueue, snd}} {
		if err := SetTCPRepairQueue(fd, q.queue); err != nil {
			return err
		}
		if err := SetTCPQueueSeq(fd, q.seq); err != nil {
			return err
		}
	}
	if err := unix.Connect(fd, sockaddr(p.Peer)); err != nil {
		return fmt.Errorf("repair connect: %w", err)
	}
	if err := SetTCPRepairOptions(fd, []TCPRepairOpt{{Code: TCPOptMSS, Val: max(p.MSS, 536)}}); err != nil {
		return err
	}
	if err := SetTCPRepairWindow(fd, TCPRepairWindow{SndWl1: rcv, SndWnd: 65535, MaxWindow: 65535, RcvWnd: 65535, RcvWup: rcv}); err != nil {
		return err
	}
	// The FIN counts as sent only with the send queue selected.
	if err := SetTCPRepairQueue(fd, TCPSendQueue); err != nil {
		return err
	}
	if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := SetTCPRepairQueue(fd, TCPNoQueue); err != nil {
		return err
	}
	if err := SetTCPRepair(fd, unix.TCP_REPAIR_OFF_NO_WP); err != nil {
		return err
	}
	closed = true
	if err := unix.Close(fd); err != nil { // FIN_WAIT1, orphaned
		return fmt.Errorf("close: %w", err)
	}
	// The peer acknowledges our FIN and sends its own: TIME_WAIT.
	fin := TCPSegment{Src: p.Peer, Dst: p.Local, Seq: rcv, Ack: snd + 1, Flags: TCPFlagFIN | TCPFlagACK, Window: 65535}
	if err := SendTCPSegment(fin, p.Mark); err != nil {
		return fmt.Errorf("FIN: %w", err)
	}
	_, err = waitTuple(p, func(st uint8, _ int) bool { return st == TCPTimeWait })
	return err
}

func sockaddr(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	}
	return &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
}

// tcpTuple finds the state and receive queue length of the socket with
// this 4-tuple in the calling thread's network namespace
// (/proc/thread-self/net/tcp[6]); state 0 when there is none.
func tcpTuple(local, peer netip.AddrPort) (state uint8, rxQueue int, err error) {
	file := "/proc/thread-self/net/tcp"
	if local.Addr().Is6() {
		file += "6"
	}
	f, err := os.Open(file)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	l, r := procNetAddr(local), procNetAddr(peer)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || fields[1] != l || fields[2] != r {
			continue
		}
		var tx, rx uint32
		if _, err := fmt.Sscanf(fields[3]+" "+fields[4], "%X %X:%X", &state, &tx, &rx); err != nil {
			return 0, 0, fmt.Errorf("%s: %q: %w", file, sc.Text(), err)
		}
		return state, int(rx), nil
	}
	return 0, 0, sc.Err()
}

// procNetAddr formats an address as /proc/net/tcp does: each 32-bit word
// of the address in host byte order, in hex, then the port.
func procNetAddr(a netip.AddrPort) string {
	b := a.Addr().AsSlice()
	var s strings.Builder
	for i := 0; i < len(b); i += 4 {
		fmt.Fprintf(&s, "%08X", binary.LittleEndian.Uint32(b[i:]))
	}
	fmt.Fprintf(&s, ":%04X", a.Port())
	return s.String()
}
