package files

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// sockopts reads integer options, keeping the first error.
type sockopts struct {
	fd  int
	err error
}

func (o *sockopts) get(level, opt int) int {
	v, err := unix.GetsockoptInt(o.fd, level, opt)
	if err != nil && o.err == nil {
		o.err = err
	}
	return v
}

// dumpInet records a UDP or raw IP socket: its local and remote addresses
// and the options a restore sets again. Datagrams waiting in its receive queue are
// not kept: UDP may lose datagrams anyway, and a restore could not send
// them again from their senders' addresses.
func (d *dumper) dumpInet(ds *desc, rec *pb.FileDesc) error {
	e := ds.first()
	f, err := d.getfd(e)
	if err != nil {
		return err
	}
	defer f.Close()
	fd := int(f.Fd())
	in := &pb.InetSocket{Family: uint32(e.sock.family), Type: uint32(e.sock.typ), Protocol: uint32(e.sock.protocol)}
	rec.Inet = in
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return cannot(e, "getsockname: %v", err)
	}
	in.LocalAddr, in.LocalPort = inetAddr(sa)
	if pa, err := unix.Getpeername(fd); err == nil {
		in.Connected = true
		in.RemoteAddr, in.RemotePort = inetAddr(pa)
	} else if !errors.Is(err, unix.ENOTCONN) {
		return cannot(e, "getpeername: %v", err)
	} else if e.sock.typ == unix.SOCK_RAW {
		// A raw socket has no port, and getpeername never answers for it.
		if in.RemoteAddr, in.Connected, err = sys.RawPeer(e.pid, e.sock.family, e.st.Ino); err != nil {
			return cannot(e, "%v", err)
		}
	}
	o := sockopts{fd: fd}
	geti := o.get
	in.Reuseaddr = geti(unix.SOL_SOCKET, unix.SO_REUSEADDR) != 0
	in.Reuseport = geti(unix.SOL_SOCKET, unix.SO_REUSEPORT) != 0
	in.Broadcast = geti(unix.SOL_SOCKET, unix.SO_BROADCAST) != 0
	in.Sndbuf = uint32(geti(unix.SOL_SOCKET, unix.SO_SNDBUF))
	in.Rcvbuf = uint32(geti(unix.SOL_SOCKET, unix.SO_RCVBUF))
	in.Mark = uint32(geti(unix.SOL_SOCKET, unix.SO_MARK))
	in.Priority = uint32(geti(unix.SOL_SOCKET, unix.SO_PRIORITY))
	if e.sock.family == unix.AF_INET6 {
		in.V6Only = geti(unix.IPPROTO_IPV6, unix.IPV6_V6ONLY) != 0
		in.Tos = uint32(geti(unix.IPPROTO_IPV6, unix.IPV6_TCLASS))
		in.Pktinfo = geti(unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO) != 0
		in.Recverr = geti(unix.IPPROTO_IPV6, unix.IPV6_RECVERR) != 0
	} else {
		in.Tos = uint32(geti(unix.IPPROTO_IP, unix.IP_TOS))
		in.Pktinfo = geti(unix.IPPROTO_IP, unix.IP_PKTINFO) != 0
		in.Recverr = geti(unix.IPPROTO_IP, unix.IP_RECVERR) != 0
	}
	if o.err != nil {
		return cannot(e, "getsockopt: %v", o.err)
	}
	if e.sock.typ == unix.SOCK_RAW {
		if err := dumpRaw(fd, in); err != nil {
			return cannot(e, "%v", err)
		}
	}
	if in.RcvtimeoUs, in.SndtimeoUs, err = sys.SocketTimeouts(fd); err != nil {
		return cannot(e, "%v", err)
	}
	if err := d.dumpMulticast(e, fd, in); err != nil {
		return err
	}
	if dev, err := unix.GetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE); err == nil {
		in.BindDevice = dev
	}
	if n, err := unix.IoctlGetInt(fd, unix.SIOCINQ); err == nil && n > 0 {
		in.DroppedBytes = uint32(n)
		stage.Logf("pid %d fd %d: UDP socket: the queued datagrams (the first of %d bytes) are not kept", e.pid, e.fd, n)
	}
	return nil
}

// dumpRaw records the options of a raw socket: IP_HDRINCL, and the ICMP
// types an ICMP socket drops (ICMP_FILTER, ICMP6_FILTER), or where the
// kernel fills in the checksum (IPV6_CHECKSUM).
func dumpRaw(fd int, in *pb.InetSocket) error {
	o := sockopts{fd: fd}
	switch {
	case in.Family == unix.AF_INET:
		in.Hdrincl = o.get(unix.IPPROTO_IP, unix.IP_HDRINCL) != 0
		if in.Protocol == unix.IPPROTO_ICMP {
			v := uint32(o.get(unix.SOL_RAW, unix.ICMP_FILTER))
			in.IcmpFilter = &v
		}
	case in.Protocol == unix.IPPROTO_ICMPV6:
		f := make([]byte, 32)
		n, err := sys.GetsockoptBytes(fd, unix.SOL_ICMPV6, unix.ICMPV6_FILTER, f)
		if err != nil {
			return fmt.Errorf("ICMPV6_FILTER: %w", err)
		}
		in.Icmp6Filter = f[:n]
	default:
		v := int32(o.get(unix.IPPROTO_IPV6, unix.IPV6_CHECKSUM))
		in.Checksum = &v
	}
	if o.err != nil {
		return fmt.Errorf("getsockopt: %w", o.err)
	}
	return nil
}

// dumpMulticast records the groups the socket joined (asking about every
// group of its network namespace) and its multicast sending options.
func (d *dumper) dumpMulticast(e *entry, fd int, in *pb.InetSocket) error {
	groups, ok := d.mcast[e.pid]
	if !ok {
		var err error
		if groups, err = sys.McastGroups(e.pid); err != nil {
			return cannot(e, "multicast groups: %v", err)
		}
		if d.mcast == nil {
			d.mcast = map[int][]sys.McastGroup{}
		}
		d.mcast[e.pid] = groups
	}
	family := int(in.Family)
	for _, g := range groups {
		if g.Family != family {
			continue
		}
		member, mode, sources, err := sys.McastMembership(fd, family, g.Ifindex, g.Group)
		if err != nil {
			group, _ := netip.AddrFromSlice(g.Group)
			return cannot(e, "multicast group %s on %s: %v", group, g.Device, err)
		}
		if member {
			in.Mcast = append(in.Mcast, &pb.McastMembership{Ifindex: uint32(g.Ifindex), Device: g.Device, Group: g.Group, Fmode: mode, Sources: sources})
		}
	}
	o := sockopts{fd: fd}
	if family == unix.AF_INET6 {
		ttl, loop, all := int32(o.get(unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS)), o.get(unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_LOOP) != 0, o.get(unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_ALL) != 0
		in.McastTtl, in.McastLoop, in.McastAll = &ttl, &loop, &all
		in.McastIfindex = uint32(o.get(unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF))
	} else {
		ttl, loop, all := int32(o.get(unix.IPPROTO_IP, unix.IP_MULTICAST_TTL)), o.get(unix.IPPROTO_IP, unix.IP_MULTICAST_LOOP) != 0, o.get(unix.IPPROTO_IP, unix.IP_MULTICAST_ALL) != 0
		in.McastTtl, in.McastLoop, in.McastAll = &ttl, &loop, &all
		if a, err := unix.GetsockoptInet4Addr(fd, unix.IPPROTO_IP, unix.IP_MULTICAST_IF); err == nil && a != [4]byte{} {
			in.McastIfAddr = a[:]
		}
	}
	if o.err != nil {
		return cannot(e, "getsockopt: %v", o.err)
	}
	return nil
}

// inetAddr splits an IPv4 or IPv6 socket address.
func inetAddr(sa unix.Sockaddr) ([]byte, uint32) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return append([]byte(nil), a.Addr[:]...), uint32(a.Port)
	case *unix.SockaddrInet6:
		return append([]byte(nil), a.Addr[:]...), uint32(a.Port)
	}
	return nil, 0
}

// dumpNetlink records a netlink socket: its port id, the multicast groups
// it listens to (NETLINK_LIST_MEMBERSHIPS) and its destination. Queued
// messages are not kept (a listener may see them lost, as on ENOBUFS).
func (d *dumper) dumpNetlink(ds *desc, rec *pb.FileDesc) error {
	e := ds.first()
	f, err := d.getfd(e)
	if err != nil {
		return err
	}
	defer f.Close()
	fd := int(f.Fd())
	nl := &pb.NetlinkSocket{Protocol: uint32(e.sock.protocol), Type: uint32(e.sock.typ)}
	rec.Netlink = nl
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return cannot(e, "getsockname: %v", err)
	}
	if a, ok := sa.(*unix.SockaddrNetlink); ok {
		nl.Portid = a.Pid
	}
	if pa, err := unix.Getpeername(fd); err == nil {
		if a, ok := pa.(*unix.SockaddrNetlink); ok {
			nl.DstPortid, nl.DstGroup = a.Pid, a.Groups
		}
	}
	// NETLINK_LIST_MEMBERSHIPS fills a bitmap of u32 words and says how long
	// it must be.
	buf := make([]byte, 4*64)
	for {
		n, err := sys.GetsockoptBytes(fd, unix.SOL_NETLINK, unix.NETLINK_LIST_MEMBERSHIPS, buf)
		if err != nil {
			return cannot(e, "NETLINK_LIST_MEMBERSHIPS: %v", err)
		}
		if n <= len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, n)
	}
	for i := 0; i+4 <= len(buf); i += 4 {
		w := uint64(binary.LittleEndian.Uint32(buf[i:]))
		if i/4%2 == 0 {
			nl.Groups = append(nl.Groups, w)
		} else {
			nl.Groups[len(nl.Groups)-1] |= w << 32
		}
	}
	o := sockopts{fd: fd}
	nl.Sndbuf = uint32(o.get(unix.SOL_SOCKET, unix.SO_SNDBUF))
	nl.Rcvbuf = uint32(o.get(unix.SOL_SOCKET, unix.SO_RCVBUF))
	if o.err != nil {
		return cannot(e, "getsockopt: %v", o.err)
	}
	if n, err := unix.IoctlGetInt(fd, unix.SIOCINQ); err == nil && n > 0 {
		nl.DroppedBytes = uint32(n)
		stage.Logf("pid %d fd %d: netlink socket: %d queued bytes are not kept", e.pid, e.fd, n)
	}
	return nil
}
