package files

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// sock_diag states of unix sockets (the TCP state numbers).
const (
	unixEstablished = 1
	unixClose       = 7
	unixListen      = 10
)

// unixDump is the sock_diag view of every unix socket of the network
// namespace, read once, and which of them the dump holds.
type unixDump struct {
	all      map[uint64]*sys.UnixDiag
	inDump   map[uint64]*entry // by socket inode
	listener map[uint64]uint64 // client inode -> listener inode, for connections not accepted yet
	netns    string            // the namespace listed (/proc/PID/ns/net), "" for this process's
}

// unixSockets reads the view of the network namespace of the dump's
// processes (cr-freeze sees that they share one), from inside it: sock_diag
// lists the sockets of its caller's namespace, and a container's are not
// the host's.
func (d *dumper) unixSockets() (*unixDump, error) {
	if d.unix != nil {
		return d.unix, nil
	}
	var all map[uint64]*sys.UnixDiag
	ns := ""
	if len(d.entries) > 0 {
		ns = procPath(d.entries[0].pid, "ns", "net")
	}
	u := &unixDump{inDump: map[uint64]*entry{}, listener: map[uint64]uint64{}, netns: ns}
	for _, e := range d.entries {
		if e.kind() == pb.FdKind_FD_UNIX {
			u.inDump[e.st.Ino] = e
		}
	}
	err := sys.InNetns(ns, func() error {
		var err error
		all, err = listingAll(sys.UnixSockets, u.inDump)
		return err
	})
	if err != nil {
		return nil, stage.Hint(err, "unix sockets are dumped with sock_diag: needs CONFIG_UNIX_DIAG")
	}
	u.all = all
	for ino, s := range all {
		for _, c := range s.Icons {
			if c != 0 {
				u.listener[c] = ino
			}
		}
	}
	d.unix = u
	return u, nil
}

// unixName describes a socket address for messages.
func unixName(name []byte) string {
	if len(name) == 0 {
		return "unnamed"
	}
	if name[0] == 0 {
		return "@" + string(bytes.TrimRight(name[1:], "\x00"))
	}
	return string(name)
}

// describeSocket says who holds socket inode ino outside the dump, for a
// refusal: "socket:[N] (/path, held by pid P (comm) fd F)".
func describeSocket(ino uint64, s *sys.UnixDiag) string {
	desc := fmt.Sprintf("socket:[%d]", ino)
	if s != nil && len(s.Name) > 0 {
		desc += " " + unixName(s.Name)
	}
	link := fmt.Sprintf("socket:[%d]", ino)
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(procPath(pid, "fd"))
		for _, fd := range fds {
			if l, _ := os.Readlink(procPath(pid, "fd", fd.Name())); l == link {
				comm, _ := os.ReadFile(procPath(pid, "comm"))
				return fmt.Sprintf("%s, held by pid %d (%s) fd %s", desc, pid, strings.TrimSpace(string(comm)), fd.Name())
			}
		}
	}
	return desc + ", held by no process"
}

// unixListings is how many times the namespace's unix sockets are listed
// at most until the list holds every socket of the dump.
const unixListings = 3

// listingAll lists the unix sockets with list until the listing holds
// every socket of want, unixListings times at most (then the last
// listing: dumpUnix names what it lacks). A sock_diag dump is read in
// several parts, each resuming at a position in a hash bucket: sockets
// that programs outside the dump close meanwhile in the namespace can
// make it pass over one of the frozen tree's. (A socket of another
// namespace is never listed: a server's accepted socket belongs to the
// namespace of the client that connected by path, which is what failed
// TestPostgreSQL twice, a backend of the test's own psql still exiting.)
func listingAll[E any](list func() (map[uint64]*sys.UnixDiag, error), want map[uint64]E) (map[uint64]*sys.UnixDiag, error) {
	for i := 1; ; i++ {
		all, err := list()
		if err != nil || i == unixListings {
			return all, err
		}
		whole := true
		for ino := range want {
			if all[ino] == nil {
				whole = false
				break
			}
		}
		if whole {
			return all, nil
		}
	}
}

// unlisted is the refusal of a unix socket that sock_diag does not list in
// the dump's network namespace. One of another namespace is named so: the
// accepted end of a connection made by path belongs to the namespace of
// the client, which may be outside the container.
func (d *dumper) unlisted(e *entry, u *unixDump) error {
	listed := u.netns
	if listed == "" {
		listed = "/proc/self/ns/net"
	}
	if f, err := d.getfd(e); err == nil {
		defer f.Close()
		ns, ino, err := sys.SocketNetns(int(f.Fd()))
		if err == nil {
			ns.Close()
			ours, err := sys.NetnsInode(listed)
			if err == nil && ino != ours {
				return stage.Hint(cannot(e, "it belongs to network namespace net:[%d], not the dump's net:[%d]", ino, ours),
					"a connection accepted from a client that connected by the socket's path from another namespace is that namespace's, which a restore cannot give it: let the client disconnect first")
			}
		}
	}
	return stage.Hint(cannot(e, "sock_diag does not list it"), "is it in another network namespace than the dump's first process?")
}

// dumpUnix records a unix socket: what sock_diag says (type, state, name,
// peer, connections waiting to be accepted, shutdown), its receive queue
// read without consuming it (peekQueue, scm.go), and its options. Every peer must be in the dump, except the named peer of a
// datagram socket, which a restore connects to again by name.
func (d *dumper) dumpUnix(ds *desc, rec *pb.FileDesc) error {
	e := ds.first()
	u, err := d.unixSockets()
	if err != nil {
		return err
	}
	ino := e.st.Ino
	s := u.all[ino]
	if s == nil {
		return d.unlisted(e, u)
	}
	rec.Object, _ = d.object(fmt.Sprintf("unix:%d", ino))
	us := &pb.UnixSocket{Type: uint32(s.Type), State: uint32(s.State), Name: s.Name, Shutdown: uint32(s.Shutdown)}
	rec.Unix = us
	if s.Type != unix.SOCK_STREAM && s.Type != unix.SOCK_DGRAM && s.Type != unix.SOCK_SEQPACKET {
		return refuse(e.pid, e.fd, fmt.Sprintf("unix socket of type %d", s.Type), e.link)
	}
	if err := d.unixNameState(e, s, us); err != nil {
		return err
	}
	f, err := d.getfd(e)
	if err != nil {
		return err
	}
	defer f.Close()
	fd := int(f.Fd())
	if err := unixOptions(e, fd, us); err != nil {
		return err
	}

	switch {
	case s.State == unixListen:
		us.Backlog = s.WQueue
		for _, c := range s.Icons {
			if c == 0 {
				return stage.Hint(cannot(e, "a connection waiting to be accepted comes from a socket that is closed; what it sent cannot be read"),
					"checkpoint again once the program has accepted its connections")
			}
			ce := u.inDump[c]
			if ce == nil {
				return stage.Hint(cannot(e, "a connection waiting to be accepted comes from %s, which is not in the dump", describeSocket(c, u.all[c])),
					"checkpoint again once the program has accepted it, or dump the client too")
			}
			if cs := u.all[c]; cs != nil && cs.WQueue > 0 {
				return stage.Hint(cannot(e, "the connection from socket:[%d] (pid %d fd %d), waiting to be accepted, holds %d bytes that cannot be read before accept", c, ce.pid, ce.fd, cs.WQueue),
					"checkpoint again once the program has accepted its connections")
			}
			us.Pending = append(us.Pending, c)
		}
		return nil // a listener's queue holds connections, not data
	case s.Peer != 0:
		us.Peer = s.Peer
		if u.inDump[s.Peer] == nil {
			ps := u.all[s.Peer]
			if s.Type == unix.SOCK_DGRAM && ps != nil && len(ps.Name) > 0 {
				// A datagram socket connected to a server outside the dump
				// (e.g. /dev/log) is connected again by name, from where
				// the name gives the server's socket file now. (Not found,
				// an absolute name is connected to from the restore's root,
				// to whatever serves it then: a syslog daemon restarted.)
				us.Peer = 0
				us.PeerName = ps.Name
				name := string(bytes.TrimRight(ps.Name, "\x00"))
				if ps.Name[0] != 0 {
					dir, _, ok := d.nameDir(e, name, ps.VfsDev, ps.VfsInode)
					if !ok && !filepath.IsAbs(name) {
						return stage.Hint(cannot(e, "it is connected to %s by the relative path %q, which names that socket's file from the working directory of no process of the dump", describeSocket(s.Peer, ps), name),
							"checkpoint while a process of the dump is in the directory the name is relative to")
					}
					us.PeerNameDir = dir
				}
			} else {
				return stage.Hint(cannot(e, "its peer %s is not in the dump", describeSocket(s.Peer, ps)),
					"dump the process tree that holds both ends, or close the connection before checkpointing")
			}
		}
	case s.State == unixEstablished && s.Type != unix.SOCK_DGRAM:
		// Connected, and the peer has no inode: either a connection a
		// listener has not accepted yet, or a peer that is closed.
		if l, ok := u.listener[ino]; ok {
			if u.inDump[l] == nil {
				return stage.Hint(cannot(e, "it waits to be accepted by %s, which is not in the dump", describeSocket(l, u.all[l])),
					"checkpoint once the connection is accepted, or dump the listener's process too")
			}
			us.Connecting = true
			us.Listener = l
		} else {
			us.PeerGone = true
		}
	}
	return d.unixQueue(e, s, us)
}

// unixNameState checks that a socket bound to a path can be bound again: the
// socket file must still be there (a restore replaces it), where a restore
// can bind the name again (nameDir).
func (d *dumper) unixNameState(e *entry, s *sys.UnixDiag, us *pb.UnixSocket) error {
	if len(s.Name) == 0 || s.Name[0] == 0 {
		return nil
	}
	path := string(bytes.TrimRight(s.Name, "\x00"))
	dir, st, ok := d.nameDir(e, path, s.VfsDev, s.VfsInode)
	if !ok {
		if !filepath.IsAbs(path) {
			return stage.Hint(cannot(e, "it is bound to the relative path %q, which names its socket file from the working directory of no process of the dump", path),
				"a restore binds the name from the directory it names the file from; checkpoint while a process of the dump is in that directory")
		}
		return stage.Hint(cannot(e, "its socket file %s has been removed or replaced", path),
			"a restore binds the name again; leave the socket file in place while the socket lives")
	}
	us.NameDir = dir
	us.NameDev, us.NameInode = st.Dev, st.Ino
	us.NameMode, us.NameUid, us.NameGid = st.Mode&0o7777, st.Uid, st.Gid
	return nil
}

// nameDir finds where name, bound to the socket file dev:ino, lies as a
// restore sees it (UnixSocket.name_dir): the kernel keeps a name as bind(2)
// was given it, relative to the binder's working directory, or absolute
// from its root, which a chroot moves. So a relative name is looked up
// from the working directory of a process of the dump, an absolute one
// from its root; those holding the socket are tried first. dir is ""
// where the restore's own root is the place (a root of "/", or another
// mount namespace, in which a restore runs). ok is false when no process
// gives the file.
func (d *dumper) nameDir(e *entry, name string, dev, ino uint64) (dir string, st unix.Stat_t, ok bool) {
	link := "cwd"
	if filepath.IsAbs(name) {
		link = "root"
	}
	var pids []int
	if e.desc != nil {
		for _, h := range e.desc.fds {
			pids = append(pids, h.pid)
		}
	}
	pids = append(pids, e.pid)
	for _, p := range d.procs {
		pids = append(pids, int(p.Pid))
	}
	tried := map[string]bool{}
	for _, pid := range pids {
		base := procPath(pid, link)
		if d.pathRoot(pid) == "/" {
			b, err := os.Readlink(base)
			if err != nil {
				continue
			}
			base = b
		} else if link == "cwd" {
			continue // a path in another mount namespace: not ours to give
		}
		if tried[base] {
			continue
		}
		tried[base] = true
		if unix.Lstat(filepath.Join(base, name), &st) != nil || st.Ino != ino || st.Dev != dev {
			continue
		}
		if link == "root" && (base == "/" || d.pathRoot(pid) != "/") {
			return "", st, true
		}
		return base, st, true
	}
	return "", st, false
}

func unixOptions(e *entry, fd int, us *pb.UnixSocket) error {
	var err error
	var v int
	get := func(level, opt int, name string) int {
		if err != nil {
			return 0
		}
		v, err = unix.GetsockoptInt(fd, level, opt)
		if err != nil {
			err = cannot(e, "getsockopt %s: %v", name, err)
		}
		return v
	}
	us.Passcred = get(unix.SOL_SOCKET, unix.SO_PASSCRED, "SO_PASSCRED") != 0
	us.Passsec = get(unix.SOL_SOCKET, unix.SO_PASSSEC, "SO_PASSSEC") != 0
	us.Sndbuf = uint32(get(unix.SOL_SOCKET, unix.SO_SNDBUF, "SO_SNDBUF"))
	us.Rcvbuf = uint32(get(unix.SOL_SOCKET, unix.SO_RCVBUF, "SO_RCVBUF"))
	us.PeekOff = int32(get(unix.SOL_SOCKET, unix.SO_PEEK_OFF, "SO_PEEK_OFF"))
	if err != nil {
		return err
	}
	// Options of later kernels: ENOPROTOOPT means the kernel's default.
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSPIDFD); err == nil {
		us.Passpidfd = v != 0
	} else if err != unix.ENOPROTOOPT {
		return cannot(e, "getsockopt SO_PASSPIDFD: %v", err)
	}
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSRIGHTS); err == nil {
		us.NoPassrights = v == 0
	} else if err != unix.ENOPROTOOPT {
		return cannot(e, "getsockopt SO_PASSRIGHTS: %v", err)
	}
	if us.RcvtimeoUs, us.SndtimeoUs, err = sys.SocketTimeouts(fd); err != nil {
		return cannot(e, "%v", err)
	}
	return nil
}

// byName finds the socket in the dump bound to name.
func (u *unixDump) byName(name []byte) (uint64, bool) {
	for ino := range u.inDump {
		if s := u.all[ino]; s != nil && bytes.Equal(bytes.TrimRight(s.Name, "\x00"), bytes.TrimRight(name, "\x00")) {
			return ino, true
		}
	}
	return 0, false
}
