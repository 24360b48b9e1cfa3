package restore

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"crpipe/lib/netlock"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// requeue puts a connection that waited in the accept queue of listener
// back into the restored listener's queue (sys.TCPRequeue): the program's
// accept gets it, with its sequence numbers and what the peer had sent.
func (s *tcpSock) requeue(listener *tcpSock) error {
	r, c := s.rec, s.rec.Conn
	if len(s.recv) != int(c.RecvLen) {
		return fmt.Errorf("the stream holds %d of %d receive queue bytes", len(s.recv), c.RecvLen)
	}
	if c.SendLen != 0 || c.FinSent {
		return fmt.Errorf("a connection not yet accepted that sent data cannot be put back")
	}
	local, peer := addrPortOf(r.LocalAddr, r.LocalPort), addrPortOf(r.PeerAddr, r.PeerPort)
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
	if !isLocal(local.Addr()) {
		return stage.Hint(fmt.Errorf("%v is not an address of this host (yet): a connection is put back into an accept queue only through it", local.Addr()),
			"move the address here first (cr-tcp lock -i IMAGE holds the connections meanwhile), then restore")
	}
	p := sys.TCPPending{
		Local: local, Peer: peer,
		ISN: c.SndSeq - 1, PeerISN: c.RcvSeq - 1, MSS: c.Mss,
		Wscale: c.Wscale, PeerWscale: uint8(c.SndWscale), SACK: c.Sack,
		PeerWindow: c.Window.GetSndWnd(), Data: s.recv, Fin: c.FinReceived, Mark: netlock.Mark,
	}
	return sys.TCPRequeue(int(listener.file.Fd()), p)
}

// isLocal says whether a is an address of this network namespace: a
// socket can bind to it without IP_FREEBIND.
func isLocal(a netip.Addr) bool {
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Addr: a.As16()})
	if a.Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: a.As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	return unix.Bind(fd, sa) == nil
}
