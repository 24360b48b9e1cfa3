package files

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// familyNames name the socket families cr-files refuses.
var familyNames = map[int]string{
	unix.AF_PACKET: "AF_PACKET", unix.AF_INET: "AF_INET", unix.AF_INET6: "AF_INET6", unix.AF_NETLINK: "AF_NETLINK",
	unix.AF_UNIX: "AF_UNIX", unix.AF_VSOCK: "AF_VSOCK", unix.AF_ALG: "AF_ALG", unix.AF_KEY: "AF_KEY",
	unix.AF_BLUETOOTH: "AF_BLUETOOTH", unix.AF_CAN: "AF_CAN", unix.AF_TIPC: "AF_TIPC", unix.AF_XDP: "AF_XDP",
}

func familyName(f int) string {
	if n, ok := familyNames[f]; ok {
		return n
	}
	return fmt.Sprintf("family %d", f)
}

// sockType is what getsockopt says about a socket.
type sockType struct {
	family, typ, protocol int
	filter                []byte // classic BPF (sys.SocketFilter)
	filterLocked          bool
}

// classifySocket sets the kind of a socket fd from its family, type and
// protocol, read on a copy of the fd.
func (d *dumper) classifySocket(e *entry) error {
	f, err := d.getfd(e)
	if err != nil {
		return err
	}
	defer f.Close()
	fd := int(f.Fd())
	var st sockType
	if st.family, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil {
		return cannot(e, "SO_DOMAIN: %v", err)
	}
	if st.typ, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
		return cannot(e, "SO_TYPE: %v", err)
	}
	if st.protocol, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil {
		return cannot(e, "SO_PROTOCOL: %v", err)
	}
	e.sock = st
	switch {
	case st.family == unix.AF_UNIX:
		e.setKind(pb.FdKind_FD_UNIX)
	case (st.family == unix.AF_INET || st.family == unix.AF_INET6) && st.typ == unix.SOCK_STREAM && st.protocol == unix.IPPROTO_TCP:
		e.setKind(pb.FdKind_FD_TCP)
	case (st.family == unix.AF_INET || st.family == unix.AF_INET6) && st.typ == unix.SOCK_DGRAM && st.protocol == unix.IPPROTO_UDP:
		e.setKind(pb.FdKind_FD_UDP)
	case (st.family == unix.AF_INET || st.family == unix.AF_INET6) && st.typ == unix.SOCK_RAW:
		e.setKind(pb.FdKind_FD_INET_RAW)
	case st.family == unix.AF_NETLINK && st.typ == unix.SOCK_RAW || st.family == unix.AF_NETLINK && st.typ == unix.SOCK_DGRAM:
		e.setKind(pb.FdKind_FD_NETLINK)
	default:
		return stage.Hint(fmt.Errorf("pid %d fd %d: socket (%s, %s, type %d, protocol %d) is not supported",
			e.pid, e.fd, e.link, familyName(st.family), st.typ, st.protocol),
			"cr-files handles unix, UDP, raw IP and netlink sockets (TCP via cr-tcp); close this socket before checkpointing")
	}
	// A filter decides what the socket receives: restored without it, the
	// program would get what it filtered out (libudev filters its netlink
	// socket so).
	prog, locked, err := sys.SocketFilter(fd)
	if errors.Is(err, sys.ErrEBPFFilter) {
		return refuse(e.pid, e.fd, "socket with "+err.Error(), e.link)
	}
	if err != nil {
		return cannot(e, "%v", err)
	}
	if k := e.kind(); prog != nil && k != pb.FdKind_FD_UDP && k != pb.FdKind_FD_INET_RAW && k != pb.FdKind_FD_NETLINK {
		return refuse(e.pid, e.fd, fmt.Sprintf("%s socket with a socket filter (SO_ATTACH_FILTER)", e.kindName()), e.link)
	}
	e.sock.filter, e.sock.filterLocked = prog, locked
	return nil
}
