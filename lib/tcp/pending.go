package tcp

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"crpipe/lib/netlock"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// Connections not yet accepted. A connection whose handshake is done waits
// in its listener's accept queue, where nothing can read it. cr-tcp takes
// it out (accept on its copy of the listener, while the program is
// frozen), locks it and reads it in repair mode like any connection, then
// closes it without a word and puts it back into the queue, in the same
// order, with sys.TCPRequeue: the program finds its accept queue as it
// left it. The record names the listener (TcpConnection.listener), and
// cr-restore puts the connection into the restored listener's queue the
// same way.

// takePending accepts the waiting connections of every listener.
func (d *dumper) takePending() error {
	var all []*sock
	for _, l := range d.socks {
		all = append(all, l)
		if l.pending == 0 {
			continue
		}
		for i := 0; i < l.pending; i++ {
			// Never block on the program's listener: poll first.
			pfd := []unix.PollFd{{Fd: int32(l.sfd()), Events: unix.POLLIN}}
			if n, err := unix.Poll(pfd, 0); err != nil || n == 0 {
				break
			}
			n, _, err := unix.Accept4(l.sfd(), unix.SOCK_CLOEXEC)
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			if err != nil {
				return l.errorf("accept: %w", err)
			}
			f := os.NewFile(uintptr(n), "pending")
			var st unix.Stat_t
			if err := unix.Fstat(n, &st); err != nil {
				f.Close()
				return l.errorf("fstat: %w", err)
			}
			c := &sock{inode: st.Ino, pid: l.pid, fd: -1, file: f, netns: l.netns, parent: l}
			l.children = append(l.children, c)
			all = append(all, c)
			if err := c.describe(); err != nil {
				return err
			}
			if c.rec.Conn == nil {
				return c.errorf("state %s", sys.TCPStateName(c.rec.State))
			}
			c.rec.Fd = int32(l.fd)
			c.rec.Conn.Listener = l.inode
		}
		if len(l.children) != l.pending {
			stage.Logf("%s: %d connections in the accept queue, %d taken", l.where(), l.pending, len(l.children))
		}
	}
	d.socks = all
	return nil
}

// requeuePending puts the connections taken from accept queues back, in
// order, each listener in its own network namespace. Once done (or on
// failure) a connection no longer counts as taken.
func (d *dumper) requeuePending() error {
	var errs []error
	for _, l := range d.socks {
		var todo []*sock
		for _, c := range l.children {
			if c.file != nil {
				todo = append(todo, c)
			}
		}
		if len(todo) == 0 {
			continue
		}
		err := sys.InNetns(nsPath(d.netns[l.netns]), func() error {
			for _, c := range todo {
				// A failure came before it was read: read it now.
				if !c.read && c.rec != nil && c.rec.Conn != nil {
					if !c.repair {
						c.repair = sys.SetTCPRepair(c.sfd(), unix.TCP_REPAIR_ON) == nil
					}
					c.read = c.repair && c.readConn() == nil
				}
				p, err := c.pendingConn()
				// Closed in repair mode: no FIN, no reset; it leaves the
				// 4-tuple free for the connection put back.
				c.file.Close()
				c.file = nil
				if err == nil {
					err = sys.TCPRequeue(l.sfd(), p)
				}
				if err != nil {
					return stage.Hint(c.errorf("%s -> %s lost: %w", c.flow().Peer, c.flow().Local, err),
						"the connection waited in the accept queue; its client will see it fail")
				}
			}
			return nil
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// pendingConn describes a connection read from an accept queue for TCPRequeue.
func (c *sock) pendingConn() (sys.TCPPending, error) {
	if !c.read || c.rec == nil || c.rec.Conn == nil {
		return sys.TCPPending{}, fmt.Errorf("it could not be read")
	}
	return pendingOf(c.rec, c.recv)
}

// pendingOf is what TCPRequeue needs of a record; restore does the same.
func pendingOf(r *pb.TcpSocket, recv []byte) (sys.TCPPending, error) {
	cn := r.Conn
	if cn.SendLen != 0 || cn.FinSent {
		return sys.TCPPending{}, fmt.Errorf("it sent data before being accepted")
	}
	f := flowOf(r)
	return sys.TCPPending{
		Local: f.Local, Peer: f.Peer,
		ISN: cn.SndSeq - 1, PeerISN: cn.RcvSeq - 1, MSS: cn.Mss,
		Wscale: cn.Wscale, PeerWscale: uint8(cn.SndWscale), SACK: cn.Sack,
		PeerWindow: cn.Window.GetSndWnd(), Data: recv, Fin: cn.FinReceived, Mark: netlock.Mark,
	}, nil
}
