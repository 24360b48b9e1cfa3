package crit

import (
	"fmt"
	"io"
	"net/netip"
	"strings"

	"crpipe/lib/image"
	"crpipe/lib/pb"
)

// TCP records (cr-tcp, lib/pb/tcp.proto).

func newTCPMessage(t image.Type) pb.Message {
	switch t {
	case image.TypeTcpLock:
		return &pb.TcpLock{}
	case image.TypeTcpSocket:
		return &pb.TcpSocket{}
	case image.TypeTcpQueue:
		return &pb.TcpQueue{}
	}
	return nil
}

// tcpRecords keeps the lock and socket records; queue contents only count.
type tcpRecords struct {
	locks  []*pb.TcpLock
	socks  []*pb.TcpSocket
	queued map[uint64]uint64 // bytes of queue records per socket inode
}

func (r *tcpRecords) add(m pb.Message) {
	switch m := m.(type) {
	case *pb.TcpLock:
		r.locks = append(r.locks, m)
	case *pb.TcpSocket:
		r.socks = append(r.socks, m)
	case *pb.TcpQueue:
		if r.queued == nil {
			r.queued = map[uint64]uint64{}
		}
		r.queued[m.Inode] += uint64(len(m.Data))
	}
}

var tcpStates = [...]string{"", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
	"TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING"}

func tcpState(s uint32) string {
	if s > 0 && int(s) < len(tcpStates) {
		return tcpStates[s]
	}
	return fmt.Sprintf("state-%d", s)
}

func tcpAddr(a []byte, port uint32) string {
	ad, ok := netip.AddrFromSlice(a)
	if !ok {
		return fmt.Sprintf("?(%d bytes):%d", len(a), port)
	}
	return netip.AddrPortFrom(ad, uint16(port)).String()
}

// show prints the network lock and, per socket, its 4-tuple, state and
// queue sizes.
func (r *tcpRecords) show(w io.Writer) {
	if len(r.locks) == 0 && len(r.socks) == 0 {
		return
	}
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	p("")
	for _, l := range r.locks {
		p("tcp lock: nft table inet %s in network namespace %d, %d connections, mark %#x", l.Table, l.Netns, len(l.Flows), l.Mark)
	}
	for _, s := range r.socks {
		fam := "ipv4"
		if s.Family == 10 {
			fam = "ipv6"
		}
		head := fmt.Sprintf("tcp socket %d (pid %d fd %d, %s): %s %s", s.Inode, s.Pid, s.Fd, fam, tcpState(s.State), tcpAddr(s.LocalAddr, s.LocalPort))
		c := s.Conn
		if c == nil {
			switch {
			case s.State == 10:
				head += fmt.Sprintf(", backlog %d", s.Backlog)
			case !s.Bound:
				head += " (unbound)"
			}
			p("%s%s", head, tcpOpts(s.Opts))
			continue
		}
		head += " -> " + tcpAddr(s.PeerAddr, s.PeerPort)
		if c.Listener != 0 {
			head += fmt.Sprintf(", not yet accepted (in the queue of socket %d)", c.Listener)
		}
		p("%s%s", head, tcpOpts(s.Opts))
		var neg []string
		neg = append(neg, fmt.Sprintf("mss %d", c.Mss))
		if c.Wscale {
			neg = append(neg, fmt.Sprintf("wscale %d/%d", c.SndWscale, c.RcvWscale))
		}
		if c.Sack {
			neg = append(neg, "sack")
		}
		if c.Timestamps {
			neg = append(neg, "timestamps")
		}
		if c.FinSent {
			neg = append(neg, "FIN sent")
		}
		if c.FinAcked {
			neg = append(neg, "FIN acked")
		}
		if c.FinReceived {
			neg = append(neg, "FIN received")
		}
		missing := ""
		if got := r.queued[s.Inode]; got != uint64(c.SendLen)+uint64(c.RecvLen) {
			missing = fmt.Sprintf(" (queue records hold %d bytes)", got)
		}
		p("  send queue %d bytes from seq %d (%d unsent), receive queue %d bytes from seq %d%s; %s",
			c.SendLen, c.SndSeq, c.UnsentLen, c.RecvLen, c.RcvSeq, missing, strings.Join(neg, ", "))
		if win := c.Window; win != nil {
			p("  window: snd_wnd %d, rcv_wnd %d, max %d", win.SndWnd, win.RcvWnd, win.MaxWindow)
		}
	}
}

func tcpOpts(o *pb.TcpSockopts) string {
	if o == nil {
		return ""
	}
	var f []string
	for _, b := range []struct {
		on   bool
		name string
	}{{o.Reuseaddr, "reuseaddr"}, {o.Reuseport, "reuseport"}, {o.V6Only, "v6only"}, {o.Nodelay, "nodelay"},
		{o.Cork, "cork"}, {o.Keepalive, "keepalive"}, {o.Linger, fmt.Sprintf("linger %ds", o.LingerSecs)}} {
		if b.on {
			f = append(f, b.name)
		}
	}
	if len(f) == 0 {
		return ""
	}
	return " [" + strings.Join(f, " ") + "]"
}
