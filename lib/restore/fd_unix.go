package restore

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/sys"
)

// Unix sockets. All the dumped unix sockets are built together, by the
// coordinator, the first time one is needed, because they refer to each
// other: listeners first (bound, listening), then connected pairs
// (socketpair, or connect+accept through the listener whose name the
// accepted side carries), sockets alone (bound or not), the connections
// still waiting in a listener's queue (connected in queue order), then the
// queued data (sent again from the peer, datagrams from their senders,
// before any datagram socket is connected), shutdown states and options.
// Each fd then gets a duplicate of its socket.

func init() {
	registerFdKind(pb.FdKind_FD_UNIX, openUnix)
}

const unixWorldKey = "unix-sockets"

type unixSock struct {
	d    *pb.FileDesc
	s    *pb.UnixSocket
	ino  uint64
	f    *os.File
	gone *os.File // PeerGone: the other end until the queue is written, then closed
}

type unixWorld struct {
	socks map[uint64]*unixSock
	order []*unixSock
}

func (w *unixWorld) closeShared() {
	for _, s := range w.order {
		if s.f != nil {
			s.f.Close()
		}
		if s.gone != nil {
			s.gone.Close()
		}
	}
}

func openUnix(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	d, err := fileDesc(rc, t, fd)
	if err != nil {
		return nil, err
	}
	w, ok := rc.Shared[unixWorldKey].(*unixWorld)
	if !ok {
		w = &unixWorld{socks: map[uint64]*unixSock{}}
		rc.Shared[unixWorldKey] = w // closed by closeShared, even when build fails
		if err := w.build(rc); err != nil {
			return nil, fmt.Errorf("unix sockets: %w", err)
		}
	}
	s := w.socks[d.Inode]
	if s == nil || s.f == nil {
		return nil, fmt.Errorf("pid %d fd %d: unix socket %d was not built", t.pid, fd.Fd, d.Inode)
	}
	f, err := sys.Dup(s.f)
	if err != nil {
		return nil, fmt.Errorf("pid %d fd %d: %w", t.pid, fd.Fd, err)
	}
	if err := setStatusFlags(f, d.Flags); err != nil {
		f.Close()
		return nil, fmt.Errorf("pid %d fd %d: %w", t.pid, fd.Fd, err)
	}
	return f, nil
}

func (s *unixSock) String() string {
	return fmt.Sprintf("socket:[%d] (%s)", s.ino, sockName(s.s.Name))
}

func sockName(name []byte) string {
	if len(name) == 0 {
		return "unnamed"
	}
	if name[0] == 0 {
		return "@" + string(name[1:])
	}
	return string(bytes.TrimRight(name, "\x00"))
}

// sockaddr converts a dumped name (sun_path bytes) to x/sys's form.
func sockaddr(name []byte) *unix.SockaddrUnix {
	return &unix.SockaddrUnix{Name: sockName(name)}
}

// fromDir runs f, a bind or connect of the unix socket name name, from
// dir (UnixSocket.name_dir): the working directory for a relative name,
// the root for an absolute one. The kernel keeps a name as the dumped
// process gave it, so it must name the socket file from there again. f
// runs on an OS thread of its own (CLONE_FS: its working directory and
// root are its alone), which ends with it.
func fromDir(dir string, name []byte, f func() error) error {
	if dir == "" || len(name) == 0 || name[0] == 0 {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread goes with the goroutine
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_FS); err != nil {
				return fmt.Errorf("unshare CLONE_FS: %w", err)
			}
			if name[0] == '/' {
				if err := unix.Chroot(dir); err != nil {
					return fmt.Errorf("chroot %s: %w", dir, err)
				}
			} else if err := unix.Chdir(dir); err != nil {
				return fmt.Errorf("chdir %s: %w", dir, err)
			}
			return f()
		}()
	}()
	return <-errc
}

// connectName connects f to the socket bound to name from dir (fromDir).
func connectName(f *os.File, name []byte, dir string) error {
	return fromDir(dir, name, func() error { return unix.Connect(int(f.Fd()), sockaddr(name)) })
}

// nameFile is where the socket file of name, bound from dir, lies for us.
func nameFile(name []byte, dir string) string {
	return filepath.Join(dir, sockName(name))
}

func (w *unixWorld) build(rc *Ctx) error {
	for k, v := range rc.Shared {
		d, ok := v.(*pb.FileDesc)
		if !ok || !strings.HasPrefix(k, "desc:") || pb.FdKind(d.Kind) != pb.FdKind_FD_UNIX {
			continue
		}
		if d.Unix == nil || d.Inode == 0 {
			return fmt.Errorf("description %d: unix socket without its state", d.Id)
		}
		if w.socks[d.Inode] != nil {
			return fmt.Errorf("two descriptions of socket %d", d.Inode)
		}
		if err := checkUnix(d.Unix); err != nil {
			return fmt.Errorf("description %d: %w: %w", d.Id, err, image.ErrCorrupt)
		}
		s := &unixSock{d: d, s: d.Unix, ino: d.Inode}
		w.socks[s.ino] = s
		w.order = append(w.order, s)
	}
	sort.Slice(w.order, func(i, j int) bool { return w.order[i].d.Id < w.order[j].d.Id })

	// Listeners.
	for _, s := range w.order {
		if s.s.State != sockListen {
			continue
		}
		if err := s.create(); err != nil {
			return err
		}
		if err := unix.Listen(int(s.f.Fd()), int(s.s.Backlog)); err != nil {
			return fmt.Errorf("%s: listen: %w", s, err)
		}
	}
	// Connected sockets and sockets alone.
	for _, s := range w.order {
		if s.f != nil || s.s.Connecting {
			continue
		}
		var err error
		switch p := w.socks[s.s.Peer]; {
		case s.s.Peer != 0 && p == nil:
			err = fmt.Errorf("%s: its peer socket %d is not in the image", s, s.s.Peer)
		case p != nil && p.s.Type != s.s.Type:
			err = fmt.Errorf("%s: connected to %s, a socket of another type: %w", s, p, image.ErrCorrupt)
		case p != nil && p.s.Peer == s.ino && s.s.Type != unix.SOCK_DGRAM:
			err = w.connectPair(s, p)
		case p != nil && p.s.Peer == s.ino && len(s.s.Name) == 0 && len(p.s.Name) == 0:
			err = socketpair(s, p)
		case s.s.PeerGone:
			err = w.connectPair(s, nil)
		default: // alone; a datagram socket is connected after its queue is written
			err = s.create()
		}
		if err != nil {
			return err
		}
	}
	// Connections waiting to be accepted, in queue order.
	for _, l := range w.order {
		for _, c := range l.s.Pending {
			cs := w.socks[c]
			if cs == nil || !cs.s.Connecting || cs.s.Listener != l.ino {
				return fmt.Errorf("%s: pending connection from socket %d, which the image does not describe as connecting to it", l, c)
			}
			if err := cs.create(); err != nil {
				return err
			}
			if err := connectName(cs.f, l.s.Name, l.s.NameDir); err != nil {
				return fmt.Errorf("%s: connect to %s: %w", cs, l, err)
			}
		}
	}
	for _, s := range w.order {
		if s.f == nil {
			return fmt.Errorf("%s: connecting to socket %d, whose queue does not list it", s, s.s.Listener)
		}
	}
	// Queued data, then datagram connections, shutdown and options.
	for _, s := range w.order {
		if err := w.writeQueue(rc, s); err != nil {
			return err
		}
	}
	for _, s := range w.order {
		if s.s.Type != unix.SOCK_DGRAM {
			continue
		}
		var to []byte
		var dir string
		if p := w.socks[s.s.Peer]; p != nil && !(p.s.Peer == s.ino && len(s.s.Name) == 0 && len(p.s.Name) == 0) {
			to, dir = p.s.Name, p.s.NameDir
			if len(to) == 0 {
				return fmt.Errorf("%s: connected to unnamed socket %s", s, p)
			}
		} else if len(s.s.PeerName) > 0 {
			to, dir = s.s.PeerName, s.s.PeerNameDir
		}
		if to != nil {
			if err := connectName(s.f, to, dir); err != nil {
				return fmt.Errorf("%s: connect to %s: %w", s, sockName(to), err)
			}
		}
	}
	for _, s := range w.order {
		if s.gone != nil {
			s.gone.Close() // the peer's close shuts the survivor down
			s.gone = nil
		} else if how := shutdownHow(s.s.Shutdown); how >= 0 {
			if err := unix.Shutdown(int(s.f.Fd()), how); err != nil {
				return fmt.Errorf("%s: shutdown: %w", s, err)
			}
		}
		if err := s.lastOptions(); err != nil {
			return err
		}
	}
	return nil
}

// sock_diag's states of a unix socket (the TCP names the kernel uses)
const (
	sockEstablished = 1
	sockClose       = 7
	sockListen      = 10
)

// checkUnix refuses a socket no dump makes: of a type or in a state a unix
// socket does not have, or a listening datagram socket. (Restored, such a
// socket came back as another: an unknown state as one alone.)
func checkUnix(u *pb.UnixSocket) error {
	switch u.Type {
	case unix.SOCK_STREAM, unix.SOCK_DGRAM, unix.SOCK_SEQPACKET:
	default:
		return fmt.Errorf("unix socket of type %d", u.Type)
	}
	switch {
	case u.State != sockEstablished && u.State != sockClose && u.State != sockListen:
		return fmt.Errorf("unix socket in state %d", u.State)
	case u.State == sockListen && u.Type == unix.SOCK_DGRAM:
		return fmt.Errorf("listening unix datagram socket")
	}
	return nil
}

// shutdownHow converts sk_shutdown bits (RCV 1, SEND 2) to shutdown(2)'s how.
func shutdownHow(bits uint32) int {
	switch bits & 3 {
	case 1:
		return unix.SHUT_RD
	case 2:
		return unix.SHUT_WR
	case 3:
		return unix.SHUT_RDWR
	}
	return -1
}

func newSocket(typ uint32) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_UNIX, int(typ)|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	return os.NewFile(uintptr(fd), "unix"), nil
}

// create makes s's socket, with its buffer sizes and options, bound to its
// name.
func (s *unixSock) create() error {
	f, err := newSocket(s.s.Type)
	if err != nil {
		return fmt.Errorf("%s: %w", s, err)
	}
	s.f = f
	if err := s.firstOptions(); err != nil {
		return err
	}
	return s.bind()
}

func socketpair(a, b *unixSock) error {
	fds, err := unix.Socketpair(unix.AF_UNIX, int(a.s.Type)|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: socketpair: %w", a, err)
	}
	a.f, b.f = os.NewFile(uintptr(fds[0]), "unix"), os.NewFile(uintptr(fds[1]), "unix")
	if err := a.firstOptions(); err != nil {
		return err
	}
	return b.firstOptions()
}

// connectPair connects stream or seqpacket socket a to b (nil: a peer that
// is gone, recreated and closed once a's queue is written). Without names
// this is socketpair(2). A named side is the accepted end of a connection to
// a listener of that name: it is made by connecting to the listener in the
// dump with that name, or to a listener bound to it for the moment.
func (w *unixWorld) connectPair(a, b *unixSock) error {
	bName := []byte(nil)
	if b != nil {
		bName = b.s.Name
	}
	if len(a.s.Name) == 0 && len(bName) == 0 {
		if b != nil {
			return socketpair(a, b)
		}
		fds, err := unix.Socketpair(unix.AF_UNIX, int(a.s.Type)|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("%s: socketpair: %w", a, err)
		}
		a.f, a.gone = os.NewFile(uintptr(fds[0]), "unix"), os.NewFile(uintptr(fds[1]), "unix")
		return a.firstOptions()
	}
	// server: the accepted side, named after its listener; client connects.
	server, client := a, b
	if b != nil && len(a.s.Name) == 0 || b != nil && w.listenerNamed(b.s.Name) != nil && w.listenerNamed(a.s.Name) == nil {
		server, client = b, a
	}
	var cf *os.File
	var err error
	if client != nil {
		if err := client.create(); err != nil {
			return err
		}
		cf = client.f
	} else {
		if cf, err = newSocket(a.s.Type); err != nil {
			return fmt.Errorf("%s: %w", a, err)
		}
		a.gone = cf
	}
	l := w.listenerNamed(server.s.Name)
	var lf *os.File
	if l != nil {
		lf = l.f
	} else {
		// A listener for the moment, bound where the original was.
		tmp := &unixSock{d: server.d, s: &pb.UnixSocket{Type: server.s.Type, Name: server.s.Name, NameDir: server.s.NameDir, NameInode: server.s.NameInode,
			NameDev: server.s.NameDev, NameMode: server.s.NameMode, NameUid: server.s.NameUid, NameGid: server.s.NameGid}, ino: server.ino}
		if err := tmp.create(); err != nil {
			return fmt.Errorf("%s: a listener to accept it: %w", server, err)
		}
		defer tmp.f.Close()
		if err := unix.Listen(int(tmp.f.Fd()), 1); err != nil {
			return fmt.Errorf("%s: listen: %w", server, err)
		}
		lf = tmp.f
	}
	if err := connectName(cf, server.s.Name, server.s.NameDir); err != nil {
		return fmt.Errorf("%s: connect to %s: %w", server, sockName(server.s.Name), err)
	}
	nfd, _, err := unix.Accept4(int(lf.Fd()), unix.SOCK_CLOEXEC)
	if err != nil {
		return fmt.Errorf("%s: accept: %w", server, err)
	}
	server.f = os.NewFile(uintptr(nfd), "unix")
	return server.firstOptions()
}

// listenerNamed is the dumped listening socket bound to name.
func (w *unixWorld) listenerNamed(name []byte) *unixSock {
	if len(name) == 0 {
		return nil
	}
	for _, s := range w.order {
		if s.s.State == sockListen && bytes.Equal(s.s.Name, name) && s.f != nil {
			return s
		}
	}
	return nil
}

// bind binds s to its name, from its name_dir (fromDir). A socket file
// there that no socket is bound to any more (the dumped one, its process
// gone, or one an earlier restore of the same image left) is unlinked
// first. Anything else there is an error, never removed: a live socket's
// file (the original may still run) or another kind of file. (Matching
// the dumped inode number is not enough: tmpfs gives freed numbers again.)
func (s *unixSock) bind() error {
	name := s.s.Name
	if len(name) == 0 {
		return nil
	}
	path := ""
	if name[0] != 0 {
		path = nameFile(name, s.s.NameDir)
		var st unix.Stat_t
		err := unix.Lstat(path, &st)
		switch {
		case errors.Is(err, unix.ENOENT):
		case err != nil:
			return fmt.Errorf("%s: %w", s, err)
		case st.Mode&unix.S_IFMT != unix.S_IFSOCK:
			return fmt.Errorf("%s: %s exists and is not a socket file", s, path)
		case !staleSocketFile(s.s.NameDir, name):
			return fmt.Errorf("%s: %s is the file of a live socket (another process is bound to it)", s, path)
		default:
			if err := unix.Unlink(path); err != nil {
				return fmt.Errorf("%s: remove the old socket file: %w", s, err)
			}
		}
	}
	if err := fromDir(s.s.NameDir, name, func() error { return unix.Bind(int(s.f.Fd()), sockaddr(name)) }); err != nil {
		return fmt.Errorf("%s: bind: %w", s, err)
	}
	if path != "" && s.s.NameInode != 0 {
		if err := unix.Fchmodat(unix.AT_FDCWD, path, s.s.NameMode&0o7777, 0); err != nil {
			return fmt.Errorf("%s: chmod: %w", s, err)
		}
		if err := unix.Lchown(path, int(s.s.NameUid), int(s.s.NameGid)); err != nil {
			return fmt.Errorf("%s: chown: %w", s, err)
		}
	}
	return nil
}

// staleSocketFile: no socket is bound to the socket file at name (from
// dir): its socket is closed. A datagram connect tells without touching a
// live socket of any type: only where none is bound does it fail with
// ECONNREFUSED (a stream socket there refuses the type, EPROTOTYPE).
func staleSocketFile(dir string, name []byte) bool {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	err = fromDir(dir, name, func() error { return unix.Connect(fd, sockaddr(name)) })
	return errors.Is(err, unix.ECONNREFUSED)
}

// firstOptions are set before any data arrives: buffer sizes (the kernel
// doubles what is set; root may exceed the sysctl limits with *FORCE) and
// SO_PASSCRED/SO_PASSSEC/SO_PASSPIDFD.
func (s *unixSock) firstOptions() error {
	fd := int(s.f.Fd())
	if err := setBuffers(fd, s.s.Sndbuf, s.s.Rcvbuf); err != nil {
		return fmt.Errorf("%s: buffer sizes: %w", s, err)
	}
	if err := sys.SetSocketTimeouts(fd, s.s.RcvtimeoUs, s.s.SndtimeoUs); err != nil {
		return fmt.Errorf("%s: %w", s, err)
	}
	for _, o := range []struct {
		opt int
		on  bool
	}{{unix.SO_PASSCRED, s.s.Passcred}, {unix.SO_PASSSEC, s.s.Passsec}, {unix.SO_PASSPIDFD, s.s.Passpidfd}} {
		if o.on {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o.opt, 1); err != nil {
				return fmt.Errorf("%s: setsockopt %d: %w", s, o.opt, err)
			}
		}
	}
	return nil
}

// lastOptions are set once the queue is back: the peek offset, and
// SO_PASSRIGHTS off (files queued before it was turned off are sent again).
func (s *unixSock) lastOptions() error {
	if s.s.PeekOff >= 0 {
		if err := unix.SetsockoptInt(int(s.f.Fd()), unix.SOL_SOCKET, unix.SO_PEEK_OFF, int(s.s.PeekOff)); err != nil {
			return fmt.Errorf("%s: SO_PEEK_OFF: %w", s, err)
		}
	}
	if s.s.NoPassrights {
		if err := unix.SetsockoptInt(int(s.f.Fd()), unix.SOL_SOCKET, unix.SO_PASSRIGHTS, 0); err != nil {
			return fmt.Errorf("%s: SO_PASSRIGHTS: %w", s, err)
		}
	}
	return nil
}

// writeQueue puts s's receive queue back: sent again by its peer, in order;
// datagrams from the socket that sent them (or, unnamed, from the peer or
// a socket for the moment), addressed to s's name; files in flight and
// credentials with their message (fd_scm.go).
func (w *unixWorld) writeQueue(rc *Ctx, s *unixSock) error {
	if len(s.s.Queue) == 0 {
		return nil
	}
	var peer *os.File
	if p := w.socks[s.s.Peer]; p != nil && p.s.Peer == s.ino {
		peer = p.f
	} else if s.gone != nil {
		peer = s.gone
	}
	for i, m := range s.s.Queue {
		from, to := peer, []byte(nil)
		if s.s.Type == unix.SOCK_DGRAM {
			if snd := w.socks[m.SenderInode]; m.SenderInode != 0 {
				if snd == nil {
					return fmt.Errorf("%s: queued datagram from socket %d, which is not in the image", s, m.SenderInode)
				}
				if snd.f != peer {
					from, to = snd.f, s.s.Name
				}
			}
			if from == nil {
				tmp, err := newSocket(unix.SOCK_DGRAM)
				if err != nil {
					return err
				}
				defer tmp.Close()
				from, to = tmp, s.s.Name
			}
			if to != nil && len(to) == 0 {
				return fmt.Errorf("%s: an unnamed socket cannot receive its queued datagram %d again", s, i)
			}
		}
		if from == nil {
			return fmt.Errorf("%s: %d queued messages and no peer to send them again", s, len(s.s.Queue))
		}
		var sa unix.Sockaddr
		if to != nil {
			sa = sockaddr(to)
		}
		oob, creds, files, err := rc.unixControl(m)
		if err != nil {
			return fmt.Errorf("%s: queued message %d: %w", s, i, err)
		}
		for data := m.Data; ; {
			n, err := unix.SendmsgN(int(from.Fd()), data, oob, sa, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
			if err != nil {
				closeFiles(files)
				return fmt.Errorf("%s: write back queued message %d (%d bytes, %d files): %w", s, i, len(m.Data), len(files), err)
			}
			oob = creds // the files go with the first part
			data = data[n:]
			if len(data) == 0 || s.s.Type != unix.SOCK_STREAM {
				break
			}
		}
		closeFiles(files)
	}
	return nil
}
