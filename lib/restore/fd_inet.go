package restore

import (
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/sys"
)

// UDP and netlink sockets: created, given their options, bound to their
// address (a UDP socket keeps its port, even one the kernel chose at
// connect), and connected again. Their receive queues were not kept.

func init() {
	registerFdKind(pb.FdKind_FD_UDP, openUDP)
	registerFdKind(pb.FdKind_FD_INET_RAW, openUDP)
	registerFdKind(pb.FdKind_FD_NETLINK, openNetlink)
}

// boolInt is a boolean socket option's value.
func boolInt(v bool) int {
	if v {
		return 1
	}
	return 0
}

// intOpt is an integer socket option; 0 is every one's default.
type intOpt struct {
	level, opt int
	val        int
	what       string
}

func openUDP(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	d, err := fileDesc(rc, t, fd)
	if err != nil {
		return nil, err
	}
	where := fmt.Sprintf("pid %d fd %d", t.pid, fd.Fd)
	in := d.Inet
	if in == nil {
		return nil, fmt.Errorf("%s: UDP description without its state", where)
	}
	n, err := unix.Socket(int(in.Family), int(in.Type)|unix.SOCK_CLOEXEC, int(in.Protocol))
	if err != nil {
		return nil, fmt.Errorf("%s: socket: %w", where, err)
	}
	f := os.NewFile(uintptr(n), "udp")
	fail := func(what string, err error) (*os.File, error) {
		f.Close()
		return nil, fmt.Errorf("%s: %s: %w", where, what, err)
	}
	if err := setFilter(n, d); err != nil {
		return fail("socket filter", err)
	}
	if err := setRaw(n, in); err != nil {
		return fail("raw socket options", err)
	}
	b := boolInt
	opts := []intOpt{
		{unix.SOL_SOCKET, unix.SO_REUSEADDR, b(in.Reuseaddr), "SO_REUSEADDR"},
		{unix.SOL_SOCKET, unix.SO_REUSEPORT, b(in.Reuseport), "SO_REUSEPORT"},
		{unix.SOL_SOCKET, unix.SO_BROADCAST, b(in.Broadcast), "SO_BROADCAST"},
		{unix.SOL_SOCKET, unix.SO_MARK, int(in.Mark), "SO_MARK"},
	}
	if in.Family == unix.AF_INET6 {
		opts = append(opts, []intOpt{
			{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, b(in.V6Only), "IPV6_V6ONLY"},
			{unix.IPPROTO_IPV6, unix.IPV6_TCLASS, int(in.Tos), "IPV6_TCLASS"},
			{unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, b(in.Pktinfo), "IPV6_RECVPKTINFO"},
			{unix.IPPROTO_IPV6, unix.IPV6_RECVERR, b(in.Recverr), "IPV6_RECVERR"},
		}...)
	} else {
		opts = append(opts, []intOpt{
			{unix.IPPROTO_IP, unix.IP_TOS, int(in.Tos), "IP_TOS"},
			{unix.IPPROTO_IP, unix.IP_PKTINFO, b(in.Pktinfo), "IP_PKTINFO"},
			{unix.IPPROTO_IP, unix.IP_RECVERR, b(in.Recverr), "IP_RECVERR"},
		}...)
	}
	// After IP_TOS, which sets the priority too.
	opts = append(opts, intOpt{unix.SOL_SOCKET, unix.SO_PRIORITY, int(in.Priority), "SO_PRIORITY"})
	for _, o := range opts {
		if o.val != 0 {
			if err := unix.SetsockoptInt(n, o.level, o.opt, o.val); err != nil {
				return fail(o.what, err)
			}
		}
	}
	if err := sys.SetSocketTimeouts(n, in.RcvtimeoUs, in.SndtimeoUs); err != nil {
		return fail("timeouts", err)
	}
	if err := setBuffers(n, in.Sndbuf, in.Rcvbuf); err != nil {
		return fail("buffer sizes", err)
	}
	if in.BindDevice != "" {
		if err := unix.SetsockoptString(n, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, in.BindDevice); err != nil {
			return fail("SO_BINDTODEVICE "+in.BindDevice, err)
		}
	}
	local, err := inetSockaddr(in.Family, in.LocalAddr, in.LocalPort)
	if err != nil {
		return fail("local address", err)
	}
	if in.LocalPort != 0 {
		if err := unix.Bind(n, local); err != nil {
			return fail(fmt.Sprintf("bind port %d", in.LocalPort), err)
		}
	}
	if in.Connected {
		remote, err := inetSockaddr(in.Family, in.RemoteAddr, in.RemotePort)
		if err != nil {
			return fail("remote address", err)
		}
		if err := unix.Connect(n, remote); err != nil {
			return fail("connect", err)
		}
	}
	if err := setMulticast(n, in); err != nil {
		return fail("multicast", err)
	}
	if err := setStatusFlags(f, d.Flags); err != nil {
		return fail("flags", err)
	}
	return f, nil
}

// setMulticast sets the multicast sending options and joins the groups
// again, each on the interface of its name here, with its source filter.
func setMulticast(fd int, in *pb.InetSocket) error {
	v6 := in.Family == unix.AF_INET6
	level, ttl, loop, all, ifopt := unix.IPPROTO_IP, unix.IP_MULTICAST_TTL, unix.IP_MULTICAST_LOOP, unix.IP_MULTICAST_ALL, unix.IP_MULTICAST_IF
	if v6 {
		level, ttl, loop, all, ifopt = unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, unix.IPV6_MULTICAST_LOOP, unix.IPV6_MULTICAST_ALL, unix.IPV6_MULTICAST_IF
	}
	if in.McastTtl != nil {
		if err := unix.SetsockoptInt(fd, level, ttl, int(*in.McastTtl)); err != nil {
			return fmt.Errorf("TTL %d: %w", *in.McastTtl, err)
		}
	}
	if in.McastLoop != nil {
		if err := unix.SetsockoptInt(fd, level, loop, boolInt(*in.McastLoop)); err != nil {
			return fmt.Errorf("loop: %w", err)
		}
	}
	if in.McastAll != nil && !*in.McastAll { // on by default
		if err := unix.SetsockoptInt(fd, level, all, 0); err != nil {
			return fmt.Errorf("multicast all: %w", err)
		}
	}
	switch {
	case v6 && in.McastIfindex != 0:
		if err := unix.SetsockoptInt(fd, level, ifopt, int(in.McastIfindex)); err != nil {
			return fmt.Errorf("interface %d: %w", in.McastIfindex, err)
		}
	case !v6 && len(in.McastIfAddr) == 4:
		if err := unix.SetsockoptInet4Addr(fd, level, ifopt, [4]byte(in.McastIfAddr)); err != nil {
			return fmt.Errorf("interface %s: %w", netip.AddrFrom4([4]byte(in.McastIfAddr)), err)
		}
	}
	groupLen := 4
	if v6 {
		groupLen = 16
	}
	for _, m := range in.Mcast {
		if len(m.Group) != groupLen {
			return fmt.Errorf("a group address of %d bytes in a socket of family %d", len(m.Group), in.Family)
		}
		group, _ := netip.AddrFromSlice(m.Group) // its length checked above
		ifindex, err := sys.InterfaceIndex(fd, m.Device)
		if err != nil {
			return fmt.Errorf("group %s: interface %s: %w", group, m.Device, err)
		}
		if err := sys.McastJoin(fd, int(in.Family), ifindex, m.Group, m.Fmode, m.Sources); err != nil {
			return fmt.Errorf("group %s on %s: %w", group, m.Device, err)
		}
	}
	return nil
}

func inetSockaddr(family uint32, addr []byte, port uint32) (unix.Sockaddr, error) {
	switch {
	case family == unix.AF_INET && len(addr) == 4:
		sa := &unix.SockaddrInet4{Port: int(port)}
		copy(sa.Addr[:], addr)
		return sa, nil
	case family == unix.AF_INET6 && len(addr) == 16:
		sa := &unix.SockaddrInet6{Port: int(port)}
		copy(sa.Addr[:], addr)
		return sa, nil
	}
	return nil, fmt.Errorf("family %d address of %d bytes", family, len(addr))
}

// setBuffers sets SO_SNDBUF and SO_RCVBUF as getsockopt reported them (the
// kernel doubles what is set), beyond the sysctl limits when root may.
func setBuffers(fd int, snd, rcv uint32) error {
	for _, o := range []struct {
		force, opt int
		v          uint32
	}{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, snd}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, rcv}} {
		if o.v == 0 {
			continue
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o.force, int(o.v/2)); err != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o.opt, int(o.v/2)); err != nil {
				return err
			}
		}
	}
	return nil
}

// setRaw sets the options of a raw socket (dumpRaw in lib/files).
func setRaw(fd int, in *pb.InetSocket) error {
	if in.Hdrincl {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_HDRINCL, 1); err != nil {
			return fmt.Errorf("IP_HDRINCL: %w", err)
		}
	}
	if in.IcmpFilter != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_RAW, unix.ICMP_FILTER, int(*in.IcmpFilter)); err != nil {
			return fmt.Errorf("ICMP_FILTER: %w", err)
		}
	}
	if len(in.Icmp6Filter) > 0 {
		if err := unix.SetsockoptString(fd, unix.SOL_ICMPV6, unix.ICMPV6_FILTER, string(in.Icmp6Filter)); err != nil {
			return fmt.Errorf("ICMPV6_FILTER: %w", err)
		}
	}
	if in.Checksum != nil && *in.Checksum >= 0 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_CHECKSUM, int(*in.Checksum)); err != nil {
			return fmt.Errorf("IPV6_CHECKSUM: %w", err)
		}
	}
	return nil
}

// setFilter attaches the socket filter the description had, before the
// socket is bound: nothing it would have filtered out gets in meanwhile.
func setFilter(n int, d *pb.FileDesc) error {
	if len(d.SocketFilter) == 0 {
		return nil
	}
	return sys.AttachSocketFilter(n, d.SocketFilter, d.SocketFilterLocked)
}

func openNetlink(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	d, err := fileDesc(rc, t, fd)
	if err != nil {
		return nil, err
	}
	where := fmt.Sprintf("pid %d fd %d", t.pid, fd.Fd)
	nl := d.Netlink
	if nl == nil {
		return nil, fmt.Errorf("%s: netlink description without its state", where)
	}
	typ := int(nl.Type)
	if typ == 0 {
		typ = unix.SOCK_RAW
	}
	n, err := unix.Socket(unix.AF_NETLINK, typ|unix.SOCK_CLOEXEC, int(nl.Protocol))
	if err != nil {
		return nil, fmt.Errorf("%s: netlink socket protocol %d: %w", where, nl.Protocol, err)
	}
	f := os.NewFile(uintptr(n), "netlink")
	fail := func(what string, err error) (*os.File, error) {
		f.Close()
		return nil, fmt.Errorf("%s: netlink: %s: %w", where, what, err)
	}
	if err := setFilter(n, d); err != nil {
		return fail("socket filter", err)
	}
	if err := setBuffers(n, nl.Sndbuf, nl.Rcvbuf); err != nil {
		return fail("buffer sizes", err)
	}
	if nl.Portid != 0 {
		if err := unix.Bind(n, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: nl.Portid}); err != nil {
			return fail(fmt.Sprintf("bind port id %d", nl.Portid), err)
		}
	}
	for w, bits := range nl.Groups {
		for b := 0; b < 64; b++ {
			if bits&(1<<b) != 0 {
				if err := unix.SetsockoptInt(n, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, w*64+b+1); err != nil {
					return fail(fmt.Sprintf("join group %d", w*64+b+1), err)
				}
			}
		}
	}
	if nl.DstPortid != 0 || nl.DstGroup != 0 {
		if err := unix.Connect(n, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: nl.DstPortid, Groups: nl.DstGroup}); err != nil {
			return fail("connect", err)
		}
	}
	if err := setStatusFlags(f, d.Flags); err != nil {
		return fail("flags", err)
	}
	return f, nil
}
