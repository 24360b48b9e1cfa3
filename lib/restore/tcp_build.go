package restore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	"crpipe/lib/netlock"
	"crpipe/lib/pb"
	"crpipe/lib/sys"
)

// build creates the socket in this process's network namespace.
func (s *tcpSock) build() (err error) {
	r := s.rec
	fd, err := unix.Socket(int(r.Family), unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("tcp socket %d", r.Inode))
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	o := r.Opts
	fresh, err := defaultsOf(fd, int(r.Family))
	if err != nil {
		return err
	}
	conn := r.Conn
	if err := s.setBindOptions(fd, fresh); err != nil {
		return err
	}
	if conn != nil {
		// After SO_REUSEADDR, which would overwrite the forced reuse.
		if err := sys.SetTCPRepair(fd, unix.TCP_REPAIR_ON); err != nil {
			return fmt.Errorf("%w (repair mode needs CAP_NET_ADMIN)", err)
		}
	}
	if r.Bound || conn != nil {
		// Bind and connect even from an address this host does not have
		// (yet): the service address of a migrated server may come after
		// it. IP_TRANSPARENT allows both (FREEBIND only the bind).
		if err := setTransparent(fd, int(r.Family), true); err != nil {
			return err
		}
		// A repair-mode socket binds to a port in use (SK_FORCE_REUSE):
		// that is how accepted connections share their listener's port.
		if err := unix.Bind(fd, sockaddrOf(r.Family, r.LocalAddr, r.LocalPort, r.ScopeId)); err != nil {
			return fmt.Errorf("bind %v: %w", addrPortOf(r.LocalAddr, r.LocalPort), err)
		}
	}
	switch {
	case r.State == sys.TCPListen:
		if err := unix.Listen(fd, int(r.Backlog)); err != nil {
			return fmt.Errorf("listen: %w", err)
		}
	case conn != nil:
		if err := s.repairConnect(fd); err != nil {
			return err
		}
		// The receive queue is back: the receive buffer and window clamp
		// as they were, before the socket offers a window it could not
		// honour later (a peer whose MSS outgrows the window stalls).
		if err := setTCPBuffers(fd, 0, o.Rcvbuf/2, o.BufLock|sndbufLock); err != nil {
			return err
		}
		if o.WindowClamp != 0 {
			if err := setInt(fd, unix.IPPROTO_TCP, unix.TCP_WINDOW_CLAMP, "TCP_WINDOW_CLAMP", int(o.WindowClamp)); err != nil {
				return err
			}
		}
	}
	if err := setOptions(fd, int(r.Family), r.State, o, fresh); err != nil {
		return err
	}
	if conn != nil {
		if err := s.goLive(fd); err != nil {
			return err
		}
		if err := setTCPBuffers(fd, o.Sndbuf/2, o.Rcvbuf/2, o.BufLock); err != nil {
			return err
		}
	}
	// Until here (the repair connect routes from the local address), the
	// address need not be this host's; now the program's setting again.
	// Should the address still be missing when the route is looked up
	// again, transmissions fail softly (and are retried) until it comes.
	if (r.Bound || conn != nil) && !o.Transparent {
		if err := setTransparent(fd, int(r.Family), false); err != nil {
			return err
		}
	}
	s.file = f
	return nil
}

func setTransparent(fd, family int, on bool) error {
	v := 0
	if on {
		v = 1
	}
	if family == unix.AF_INET6 {
		return setInt(fd, unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT", v)
	}
	return setInt(fd, unix.IPPROTO_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT", v)
}

// defaults are option values of a fresh socket here: an option the dump
// found at its default is left alone (so it keeps following sysctls).
type defaults struct {
	keepidle, keepintvl, keepcnt int
	congestion                   string
	rcvlowat                     int
}

func defaultsOf(fd, family int) (defaults, error) {
	var d defaults
	var err error
	if d.keepidle, err = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE); err != nil {
		return d, fmt.Errorf("TCP_KEEPIDLE: %w", err)
	}
	d.keepintvl, _ = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
	d.keepcnt, _ = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
	d.congestion, _ = unix.GetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION)
	d.rcvlowat, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT)
	return d, nil
}

func setInt(fd, level, opt int, name string, v int) error {
	if err := unix.SetsockoptInt(fd, level, opt, v); err != nil {
		return fmt.Errorf("%s %d: %w", name, v, err)
	}
	return nil
}

// setBindOptions sets what must be there before bind or before data: the
// address reuse rules, the device, buffer sizes (a receive queue to put
// back needs its room).
func (s *tcpSock) setBindOptions(fd int, _ defaults) error {
	r, o := s.rec, s.rec.Opts
	if o.Reuseaddr {
		if err := setInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR", 1); err != nil {
			return err
		}
	}
	if o.Reuseport {
		if err := setInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, "SO_REUSEPORT", 1); err != nil {
			return err
		}
	}
	if r.Family == unix.AF_INET6 {
		v := 0
		if o.V6Only {
			v = 1
		}
		if err := setInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, "IPV6_V6ONLY", v); err != nil {
			return err
		}
	}
	if o.BindDevice != "" {
		if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, o.BindDevice); err != nil {
			return fmt.Errorf("SO_BINDTODEVICE %s: %w", o.BindDevice, err)
		}
	}
	if o.Mark != 0 {
		if err := setInt(fd, unix.SOL_SOCKET, unix.SO_MARK, "SO_MARK", int(o.Mark)); err != nil {
			return err
		}
	}
	if o.Maxseg != 0 && r.Conn == nil {
		if err := setInt(fd, unix.IPPROTO_TCP, unix.TCP_MAXSEG, "TCP_MAXSEG", int(o.Maxseg)); err != nil {
			return err
		}
	}
	// getsockopt reports twice the size asked for; the FORCE variants pass
	// rmem_max/wmem_max, as the original may have been set by a privileged
	// program or grown by autotuning. SO_BUF_LOCK then says whether the
	// program had fixed them (Linux 5.14), so that autotuning goes on
	// where it went on before.
	//
	// A connection's queues go back in smaller pieces than the kernel had
	// them in (more per-buffer overhead): until they are back (the receive
	// queue) or until it is live (the send queue, unsent data written
	// after repair mode), it gets room to spare, then its own sizes.
	snd, rcv := o.Sndbuf/2, o.Rcvbuf/2
	if c := r.Conn; c != nil {
		snd = max(snd, 4*c.SendLen+256<<10)
		rcv = max(rcv, 2*c.RecvLen+256<<10)
	}
	return setTCPBuffers(fd, snd, rcv, o.BufLock)
}

// sndbufLock keeps the lent send buffer fixed until the socket is live.
const sndbufLock = 1 // SOCK_SNDBUF_LOCK

// setTCPBuffers sets SO_SNDBUF and SO_RCVBUF to twice snd and rcv (0: leave
// it), then the locks.
func setTCPBuffers(fd int, snd, rcv, lock uint32) error {
	if snd != 0 {
		if err := setInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, "SO_SNDBUFFORCE", int(snd)); err != nil {
			return err
		}
	}
	if rcv != 0 {
		if err := setInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, "SO_RCVBUFFORCE", int(rcv)); err != nil {
			return err
		}
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BUF_LOCK, int(lock&3)); err != nil && !errors.Is(err, unix.ENOPROTOOPT) {
		return fmt.Errorf("SO_BUF_LOCK: %w", err)
	}
	return nil
}

// repairConnect rebuilds a connection's state in repair mode: sequence
// numbers, the connection itself (no packet is sent), negotiated options,
// timestamps, queues and window.
func (s *tcpSock) repairConnect(fd int) error {
	r, c := s.rec, s.rec.Conn
	if len(s.recv) != int(c.RecvLen) || len(s.send) != int(c.SendLen) {
		return fmt.Errorf("the stream holds %d of %d receive queue bytes and %d of %d send queue bytes", len(s.recv), c.RecvLen, len(s.send), c.SendLen)
	}
	for _, q := range []struct {
		queue int
		seq   uint32
	}{{sys.TCPRecvQueue, c.RcvSeq}, {sys.TCPSendQueue, c.SndSeq}} {
		if err := sys.SetTCPRepairQueue(fd, q.queue); err != nil {
			return err
		}
		if err := sys.SetTCPQueueSeq(fd, q.seq); err != nil {
			return err
		}
	}
	if err := unix.Connect(fd, sockaddrOf(r.Family, r.PeerAddr, r.PeerPort, r.ScopeId)); err != nil {
		return fmt.Errorf("repair connect to %v: %w", addrPortOf(r.PeerAddr, r.PeerPort), err)
	}
	opts := []sys.TCPRepairOpt{{Code: sys.TCPOptMSS, Val: c.Mss}}
	if c.Wscale {
		opts = append(opts, sys.TCPRepairOpt{Code: sys.TCPOptWindow, Val: c.SndWscale | c.RcvWscale<<16})
	}
	if c.Sack {
		opts = append(opts, sys.TCPRepairOpt{Code: sys.TCPOptSACKPerm})
	}
	if c.Timestamps {
		opts = append(opts, sys.TCPRepairOpt{Code: sys.TCPOptTimestamp})
	}
	if err := sys.SetTCPRepairOptions(fd, opts); err != nil {
		return err
	}
	if c.Timestamps {
		// Our timestamps go on from where the peer last saw them (PAWS).
		if err := sys.SetTCPTimestamp(fd, c.Timestamp); err != nil {
			return err
		}
	}
	if err := sys.SetTCPRepairQueue(fd, sys.TCPRecvQueue); err != nil {
		return err
	}
	if err := sys.WriteTCPQueue(fd, s.recv); err != nil {
		return fmt.Errorf("receive queue: %w", err)
	}
	// Sent data goes back as sent (the retransmit timer will resend what
	// the peer lacks); unsent data is written once the socket is live.
	if err := sys.SetTCPRepairQueue(fd, sys.TCPSendQueue); err != nil {
		return err
	}
	if err := sys.WriteTCPQueue(fd, s.send[:c.SendLen-c.UnsentLen]); err != nil {
		return fmt.Errorf("send queue: %w", err)
	}
	if c.FinSent && c.UnsentLen == 0 && r.State != sys.TCPLastAck {
		if err := shutdownSent(fd); err != nil {
			return err
		}
	}
	if err := sys.SetTCPRepairQueue(fd, sys.TCPNoQueue); err != nil {
		return err
	}
	w := c.Window
	rw := sys.TCPRepairWindow{SndWl1: w.SndWl1, SndWnd: w.SndWnd, MaxWindow: w.MaxWindow, RcvWnd: w.RcvWnd, RcvWup: w.RcvWup}
	if c.FinReceived {
		// The dumped rcv_nxt counted the peer's FIN, which comes back only
		// later (goLive): the kernel wants rcv_wup <= rcv_nxt and snd_wl1
		// <= rcv_nxt + rcv_wnd meanwhile.
		rcvNxt := c.RcvSeq + c.RecvLen
		if int32(rw.RcvWup-rcvNxt) > 0 {
			rw.RcvWup = rcvNxt
		}
		if int32(rw.SndWl1-(rcvNxt+rw.RcvWnd)) > 0 {
			rw.SndWl1 = rcvNxt
		}
	}
	if err := sys.SetTCPRepairWindow(fd, rw); err != nil {
		return err
	}
	return nil
}

// shutdownSent queues our FIN as sent (repair mode): it is resent on the
// retransmit timer until the peer acknowledges it (again). Only with the
// send queue selected does the kernel count what it queues as sent.
func shutdownSent(fd int) error {
	if err := sys.SetTCPRepairQueue(fd, sys.TCPSendQueue); err != nil {
		return err
	}
	if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
		return fmt.Errorf("shutdown (FIN sent): %w", err)
	}
	return sys.SetTCPRepairQueue(fd, sys.TCPNoQueue)
}

// goLive takes the connection out of repair mode, then replays what
// repair mode cannot express: the peer's FIN, unsent data, a FIN not sent.
func (s *tcpSock) goLive(fd int) error {
	c := s.rec.Conn
	// No window probe: the lock would drop it anyway.
	if err := sys.SetTCPRepair(fd, unix.TCP_REPAIR_OFF_NO_WP); err != nil {
		return err
	}
	r := s.rec
	// Repair mode forced address reuse on; give back the program's setting.
	reuse := 0
	if r.Opts.Reuseaddr {
		reuse = 1
	}
	if err := setInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR", reuse); err != nil {
		return err
	}
	if c.FinReceived {
		if err := s.inject(fd, sys.TCPFlagFIN|sys.TCPFlagACK, c.SndSeq); err != nil {
			return fmt.Errorf("the peer's FIN: %w", err)
		}
		want := uint8(sys.TCPCloseWait)
		if r.State == sys.TCPClosing {
			want = sys.TCPClosing
		}
		if err := waitState(fd, want); err != nil {
			return fmt.Errorf("the peer's FIN: %w", err)
		}
		if r.State == sys.TCPLastAck && c.UnsentLen == 0 {
			// Our FIN came after the peer's (and after what we sent: unsent
			// data goes first, then the FIN, below).
			if err := sys.SetTCPRepair(fd, unix.TCP_REPAIR_ON); err != nil {
				return err
			}
			if err := shutdownSent(fd); err != nil {
				return err
			}
			if err := sys.SetTCPRepair(fd, unix.TCP_REPAIR_OFF_NO_WP); err != nil {
				return err
			}
		}
	}
	if c.FinAcked {
		// The peer acknowledged our FIN (and with it every byte we sent).
		if err := s.inject(fd, sys.TCPFlagACK, c.SndSeq+1); err != nil {
			return fmt.Errorf("the ACK of our FIN: %w", err)
		}
		if err := waitState(fd, sys.TCPFinWait2); err != nil {
			return fmt.Errorf("the ACK of our FIN: %w", err)
		}
	}
	if c.UnsentLen > 0 {
		if err := s.writeUnsent(fd); err != nil {
			return err
		}
		if c.FinSent {
			if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
				return fmt.Errorf("shutdown (FIN not sent yet): %w", err)
			}
		}
	}
	return nil
}

// writeUnsent queues the bytes the dumped socket had not sent yet, as a
// program's write would. What does not fit now (the peer's window is
// closed and the lock holds everything) goes in as sent data.
func (s *tcpSock) writeUnsent(fd int) error {
	c := s.rec.Conn
	data := s.send[c.SendLen-c.UnsentLen:]
	for len(data) > 0 {
		n, err := unix.SendmsgN(fd, data, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN || err == unix.ENOBUFS {
			break
		}
		if err != nil {
			return fmt.Errorf("unsent data: %w", err)
		}
		data = data[n:]
	}
	if len(data) == 0 {
		return nil
	}
	if err := sys.SetTCPRepair(fd, unix.TCP_REPAIR_ON); err != nil {
		return err
	}
	if err := sys.SetTCPRepairQueue(fd, sys.TCPSendQueue); err != nil {
		return err
	}
	if err := sys.WriteTCPQueue(fd, data); err != nil {
		return fmt.Errorf("unsent data: %w", err)
	}
	if err := sys.SetTCPRepairQueue(fd, sys.TCPNoQueue); err != nil {
		return err
	}
	return sys.SetTCPRepair(fd, unix.TCP_REPAIR_OFF_NO_WP)
}

// inject hands the socket a segment of its peer that repair mode cannot
// express (the peer's FIN, the ACK of ours): from the peer's address,
// right after the receive queue, with the peer's window, passing the lock
// by its mark.
func (s *tcpSock) inject(fd int, flags uint8, ack uint32) error {
	r, c := s.rec, s.rec.Conn
	win := c.Window.SndWnd
	if c.Wscale {
		win >>= c.SndWscale
	}
	seg := sys.TCPSegment{
		Src:    addrPortOf(r.PeerAddr, r.PeerPort),
		Dst:    addrPortOf(r.LocalAddr, r.LocalPort),
		Seq:    c.RcvSeq + c.RecvLen,
		Ack:    ack,
		Flags:  flags,
		Window: uint16(min(win, 0xffff)),
	}
	if seg.Src.Addr().Is4In6() { // an IPv6 socket's IPv4 connection
		seg.Src = netipUnmap(seg.Src)
		seg.Dst = netipUnmap(seg.Dst)
	}
	if c.Timestamps {
		// TSval 0 passes PAWS on a socket that has seen no timestamp
		// yet; TSecr 0 says nothing about our clock.
		seg.Options = tsOption(0, 0)
	}
	return sys.SendTCPSegment(seg, netlock.Mark)
}

func netipUnmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// waitState waits (briefly: the segment is delivered synchronously through
// loopback) until the socket reaches state.
func waitState(fd int, state uint8) error {
	var info sys.TCPInfo
	var err error
	for i := 0; i < 100; i++ {
		info, err = sys.GetTCPInfo(fd)
		if err != nil {
			return err
		}
		if info.State == state {
			return nil
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
	}
	return fmt.Errorf("the socket is %s, not %s", sys.TCPStateName(uint32(info.State)), sys.TCPStateName(uint32(state)))
}

func tsOption(val, ecr uint32) []byte {
	b := []byte{1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0} // NOP NOP TS
	binary.BigEndian.PutUint32(b[4:], val)
	binary.BigEndian.PutUint32(b[8:], ecr)
	return b
}

// setOptions sets the options that do not matter before bind.
func setOptions(fd, family int, state uint32, o *pb.TcpSockopts, fresh defaults) error {
	b := boolInt
	type opt struct {
		level, opt int
		name       string
		val        int
		when       bool
	}
	opts := []opt{
		{unix.IPPROTO_TCP, unix.TCP_NODELAY, "TCP_NODELAY", b(o.Nodelay), o.Nodelay},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, "SO_KEEPALIVE", 1, o.Keepalive},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, "TCP_KEEPIDLE", int(o.Keepidle), o.Keepidle != 0 && int(o.Keepidle) != fresh.keepidle},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, "TCP_KEEPINTVL", int(o.Keepintvl), o.Keepintvl != 0 && int(o.Keepintvl) != fresh.keepintvl},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, "TCP_KEEPCNT", int(o.Keepcnt), o.Keepcnt != 0 && int(o.Keepcnt) != fresh.keepcnt},
		{unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT", int(o.UserTimeout), o.UserTimeout != 0},
		{unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, "TCP_NOTSENT_LOWAT", int(o.NotsentLowat), o.NotsentLowat != 0},
		{unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, "TCP_DEFER_ACCEPT", int(o.DeferAccept), o.DeferAccept != 0},
		{unix.IPPROTO_TCP, unix.TCP_FASTOPEN, "TCP_FASTOPEN", int(o.Fastopen), o.Fastopen != 0 && state == sys.TCPListen},
		{unix.SOL_SOCKET, unix.SO_OOBINLINE, "SO_OOBINLINE", 1, o.Oobinline},
		{unix.SOL_SOCKET, unix.SO_RCVLOWAT, "SO_RCVLOWAT", int(o.Rcvlowat), o.Rcvlowat != 0 && int(o.Rcvlowat) != fresh.rcvlowat},
		// Cork last: the unsent data written after repair stays corked.
		{unix.IPPROTO_TCP, unix.TCP_CORK, "TCP_CORK", 1, o.Cork},
	}
	if family == unix.AF_INET6 {
		opts = append(opts, opt{unix.IPPROTO_IPV6, unix.IPV6_TCLASS, "IPV6_TCLASS", int(o.Tos), o.Tos != 0})
	} else {
		opts = append(opts, opt{unix.IPPROTO_IP, unix.IP_TOS, "IP_TOS", int(o.Tos), o.Tos != 0})
	}
	// After IP_TOS, which sets the priority too.
	opts = append(opts, opt{unix.SOL_SOCKET, unix.SO_PRIORITY, "SO_PRIORITY", int(o.Priority), o.Priority != 0})
	if o.Freebind {
		opts = append(opts, opt{unix.IPPROTO_IP, unix.IP_FREEBIND, "IP_FREEBIND", 1, true})
	}
	for _, x := range opts {
		if !x.when {
			continue
		}
		if err := setInt(fd, x.level, x.opt, x.name, x.val); err != nil {
			return err
		}
	}
	if err := sys.SetSocketTimeouts(fd, o.RcvtimeoUs, o.SndtimeoUs); err != nil {
		return err
	}
	if o.Linger {
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: int32(o.LingerSecs)}); err != nil {
			return fmt.Errorf("SO_LINGER: %w", err)
		}
	}
	if o.Congestion != "" && o.Congestion != fresh.congestion {
		if err := unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, o.Congestion); err != nil {
			return fmt.Errorf("TCP_CONGESTION %s: %w", o.Congestion, err)
		}
	}
	return nil
}
