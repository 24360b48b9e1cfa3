package tcp

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// describe reads what every TCP socket has: family, addresses, state,
// options; refusing the states a restore cannot rebuild.
func (s *sock) describe() error {
	fd := s.sfd()
	fam, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return s.errorf("SO_DOMAIN: %w", err)
	}
	info, err := sys.GetTCPInfo(fd)
	if err != nil {
		return s.errorf("%w", err)
	}
	r := &pb.TcpSocket{Inode: s.inode, Family: uint32(fam), State: uint32(info.State), Pid: uint32(s.pid), Fd: int32(s.fd)}
	s.rec = r
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return s.errorf("getsockname: %w", err)
	}
	var local netip.AddrPort
	local, r.ScopeId = addrPort(sa)
	r.LocalAddr, r.LocalPort = local.Addr().AsSlice(), uint32(local.Port())
	r.Bound = local.Port() != 0 || !local.Addr().IsUnspecified()
	switch info.State {
	case sys.TCPListen:
		r.Backlog = info.Sacked
		s.pending = int(info.Unacked)
	case sys.TCPEstablished, sys.TCPCloseWait, sys.TCPFinWait1, sys.TCPFinWait2, sys.TCPClosing, sys.TCPLastAck:
		pa, err := unix.Getpeername(fd)
		if err != nil {
			return s.errorf("getpeername: %w", err)
		}
		peer, _ := addrPort(pa)
		r.PeerAddr, r.PeerPort = peer.Addr().AsSlice(), uint32(peer.Port())
		r.Conn = &pb.TcpConnection{}
	case sys.TCPClose:
	case sys.TCPSynSent:
		return stage.Hint(s.errorf("connect(2) to a peer is in progress (SYN_SENT)"), "checkpoint once the connection is established or has failed")
	default:
		return s.errorf("TCP state %s cannot be checkpointed", sys.TCPStateName(uint32(info.State)))
	}
	if r.Opts, err = sockopts(fd, fam, info.State); err != nil {
		return s.errorf("%w", err)
	}
	return nil
}

// addrPort converts a socket address; an IPv6 one keeps its scope apart.
func addrPort(sa unix.Sockaddr) (netip.AddrPort, uint32) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)), 0
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)), a.ZoneId
	}
	return netip.AddrPort{}, 0
}

// readConn reads a connection in repair mode.
func (s *sock) readConn() error {
	fd := s.sfd()
	r := s.rec
	c := r.Conn
	info, err := sys.GetTCPInfo(fd)
	if err != nil {
		return s.errorf("%w", err)
	}
	if uint32(info.State) != r.State {
		// The tree is frozen but the kernel is not: a FIN or a reset may
		// have arrived between describe and repair.
		return stage.Hint(s.errorf("connection %s changed state from %s to %s while being checkpointed", s.flow(), sys.TCPStateName(r.State), sys.TCPStateName(uint32(info.State))),
			"checkpoint again")
	}
	st := info.State
	c.FinSent = st == sys.TCPFinWait1 || st == sys.TCPFinWait2 || st == sys.TCPClosing || st == sys.TCPLastAck
	c.FinReceived = st == sys.TCPCloseWait || st == sys.TCPClosing || st == sys.TCPLastAck
	c.Wscale = info.Options&sys.TCPIOptWscale != 0
	if c.Wscale {
		c.SndWscale, c.RcvWscale = uint32(info.SndWscale), uint32(info.RcvWscale)
	}
	c.Sack = info.Options&sys.TCPIOptSACK != 0
	c.Timestamps = info.Options&sys.TCPIOptTimestamps != 0
	c.Ecn = info.Options&sys.TCPIOptECN != 0

	// Send queue: write_seq counts a FIN we sent or queued, SIOCOUTQ counts
	// it while unacknowledged and SIOCOUTQNSD while unsent.
	if err := sys.SetTCPRepairQueue(fd, sys.TCPSendQueue); err != nil {
		return s.errorf("%w", err)
	}
	writeSeq, err := sys.TCPQueueSeq(fd)
	if err != nil {
		return s.errorf("%w", err)
	}
	outq, err := sys.SockQueueLen(fd, sys.SIOCOUTQ)
	if err != nil {
		return s.errorf("%w", err)
	}
	nsd, err := sys.SockQueueLen(fd, sys.SIOCOUTQNSD)
	if err != nil {
		return s.errorf("%w", err)
	}
	c.SndSeq = writeSeq - uint32(outq)
	dataLen := outq
	if c.FinSent {
		if outq == 0 {
			c.FinAcked = true
			c.SndSeq-- // snd_una counts the acknowledged FIN
		} else {
			dataLen--
		}
		if nsd > 0 {
			nsd-- // the FIN itself is not sent yet
		}
	}
	if dataLen > 0 {
		if s.send, err = sys.PeekTCPQueue(fd, dataLen); err != nil {
			return s.errorf("send queue: %w", err)
		}
	}
	c.SendLen, c.UnsentLen = uint32(dataLen), uint32(nsd)

	// Receive queue: rcv_nxt counts a FIN received, SIOCINQ does not.
	if err := sys.SetTCPRepairQueue(fd, sys.TCPRecvQueue); err != nil {
		return s.errorf("%w", err)
	}
	rcvNxt, err := sys.TCPQueueSeq(fd)
	if err != nil {
		return s.errorf("%w", err)
	}
	inq, err := sys.SockQueueLen(fd, sys.SIOCINQ)
	if err != nil {
		return s.errorf("%w", err)
	}
	c.RcvSeq = rcvNxt - uint32(inq)
	if c.FinReceived {
		c.RcvSeq--
	}
	if inq > 0 {
		if s.recv, err = sys.PeekTCPQueue(fd, inq); err != nil {
			return stage.Hint(s.errorf("receive queue: %w", err), "urgent (out-of-band) data in the receive queue is not supported")
		}
	}
	c.RecvLen = uint32(inq)
	if err := sys.SetTCPRepairQueue(fd, sys.TCPNoQueue); err != nil {
		return s.errorf("%w", err)
	}

	win, err := sys.GetTCPRepairWindow(fd)
	if err != nil {
		return s.errorf("%w", err)
	}
	c.Window = &pb.TcpWindow{SndWl1: win.SndWl1, SndWnd: win.SndWnd, MaxWindow: win.MaxWindow, RcvWnd: win.RcvWnd, RcvWup: win.RcvWup}
	// In repair mode TCP_MAXSEG reads mss_clamp, what TCP_REPAIR_OPTIONS sets.
	mss, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_MAXSEG)
	if err != nil {
		return s.errorf("TCP_MAXSEG: %w", err)
	}
	c.Mss = uint32(mss)
	if c.Timestamp, err = sys.TCPTimestamp(fd); err != nil {
		return s.errorf("%w", err)
	}
	return nil
}

// sockopts reads the socket options a program may have set.
func sockopts(fd, family int, state uint8) (*pb.TcpSockopts, error) {
	o := &pb.TcpSockopts{}
	var firstErr error
	geti := func(level, opt int, name string) int {
		v, err := unix.GetsockoptInt(fd, level, opt)
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("getsockopt %s: %w", name, err)
		}
		return v
	}
	// Options that not every kernel or socket has: absent means default.
	optional := func(level, opt int) int {
		v, _ := unix.GetsockoptInt(fd, level, opt)
		return v
	}
	o.Reuseaddr = geti(unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR") != 0
	o.Reuseport = geti(unix.SOL_SOCKET, unix.SO_REUSEPORT, "SO_REUSEPORT") != 0
	o.Keepalive = geti(unix.SOL_SOCKET, unix.SO_KEEPALIVE, "SO_KEEPALIVE") != 0
	o.Sndbuf = uint32(geti(unix.SOL_SOCKET, unix.SO_SNDBUF, "SO_SNDBUF"))
	o.Rcvbuf = uint32(geti(unix.SOL_SOCKET, unix.SO_RCVBUF, "SO_RCVBUF"))
	o.BufLock = uint32(optional(unix.SOL_SOCKET, unix.SO_BUF_LOCK))
	o.Oobinline = geti(unix.SOL_SOCKET, unix.SO_OOBINLINE, "SO_OOBINLINE") != 0
	o.Rcvlowat = uint32(geti(unix.SOL_SOCKET, unix.SO_RCVLOWAT, "SO_RCVLOWAT"))
	o.Mark = uint32(geti(unix.SOL_SOCKET, unix.SO_MARK, "SO_MARK"))
	o.Priority = uint32(geti(unix.SOL_SOCKET, unix.SO_PRIORITY, "SO_PRIORITY"))
	if l, err := unix.GetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER); err == nil {
		o.Linger, o.LingerSecs = l.Onoff != 0, uint32(l.Linger)
	} else if firstErr == nil {
		firstErr = fmt.Errorf("getsockopt SO_LINGER: %w", err)
	}
	if dev, err := unix.GetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE); err == nil {
		o.BindDevice = dev
	}
	o.Nodelay = geti(unix.IPPROTO_TCP, unix.TCP_NODELAY, "TCP_NODELAY") != 0
	o.Cork = geti(unix.IPPROTO_TCP, unix.TCP_CORK, "TCP_CORK") != 0
	o.Keepidle = uint32(geti(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, "TCP_KEEPIDLE"))
	o.Keepintvl = uint32(geti(unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, "TCP_KEEPINTVL"))
	o.Keepcnt = uint32(geti(unix.IPPROTO_TCP, unix.TCP_KEEPCNT, "TCP_KEEPCNT"))
	o.UserTimeout = uint32(geti(unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT"))
	o.NotsentLowat = uint32(optional(unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT))
	o.WindowClamp = uint32(optional(unix.IPPROTO_TCP, unix.TCP_WINDOW_CLAMP))
	if cc, err := unix.GetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION); err == nil {
		o.Congestion = cc
	}
	if state == sys.TCPListen {
		o.DeferAccept = uint32(optional(unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT))
		o.Fastopen = uint32(optional(unix.IPPROTO_TCP, unix.TCP_FASTOPEN))
	}
	if state == sys.TCPListen || state == sys.TCPClose {
		// Outside repair mode and before a connection, TCP_MAXSEG reads
		// what the program set (0: nothing).
		o.Maxseg = uint32(optional(unix.IPPROTO_TCP, unix.TCP_MAXSEG))
		if o.Maxseg == 536 { // TCP_MSS_DEFAULT: what an unset socket reports
			o.Maxseg = 0
		}
	}
	if rcv, snd, err := sys.SocketTimeouts(fd); err == nil {
		o.RcvtimeoUs, o.SndtimeoUs = rcv, snd
	} else if firstErr == nil {
		firstErr = err
	}
	o.Freebind = optional(unix.IPPROTO_IP, unix.IP_FREEBIND) != 0
	if family == unix.AF_INET6 {
		o.Transparent = optional(unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT) != 0
	} else {
		o.Transparent = optional(unix.IPPROTO_IP, unix.IP_TRANSPARENT) != 0
	}
	if family == unix.AF_INET6 {
		o.V6Only = geti(unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, "IPV6_V6ONLY") != 0
		o.Tos = uint32(optional(unix.IPPROTO_IPV6, unix.IPV6_TCLASS))
	} else {
		o.Tos = uint32(optional(unix.IPPROTO_IP, unix.IP_TOS))
	}
	return o, firstErr
}
