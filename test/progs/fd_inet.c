/*
 * fd_inet: UDP sockets (IPv4 and IPv6, bound and connected) and a netlink
 * socket that listens to multicast groups.
 *
 *   fd_inet PROGRESS VERDICT DIR
 *
 *   20  UDP, 127.0.0.1, a port the kernel chose, connected to 21
 *   21  UDP, 127.0.0.1, another such port, SO_REUSEADDR, SO_MARK 7,
 *       SO_PRIORITY 5, IP_TOS 0x10, IP_PKTINFO, IP_RECVERR, SO_RCVTIMEO 3.24 s,
 *       a classic socket filter (accept the whole datagram), unlocked
 *   22  UDP over IPv6, [::1], IPV6_V6ONLY, not connected, SO_RCVBUF 64 KiB,
 *       IPV6_TCLASS 0x20, IPV6_RECVPKTINFO, SO_SNDTIMEO 0.76 s (multiples of 20 ms,
 *       which the kernel keeps exactly)
 *   23  NETLINK_ROUTE bound with groups RTMGRP_LINK, joined RTNLGRP_IPV4_IFADDR,
 *       a locked classic socket filter (accept 0xffff bytes)
 *   24  UDP on lo for multicast: joined 239.1.2.3 (any source) and
 *       239.1.2.4 (only from 127.0.0.9), IP_MULTICAST_TTL 7, LOOP 0, ALL 0,
 *       IF 127.0.0.1; 22 joined ff15::1234 on lo, IPV6_MULTICAST_HOPS 9
 *       (IPV6_MULTICAST_ALL left on)
 *   25  raw ICMP, bound to 127.0.0.1, ICMP_FILTER: only echo replies pass
 *   26  raw ICMPv6, ICMP6_FILTER: only echo replies (129) pass
 *   27  raw IPv6, protocol 253, IPV6_CHECKSUM at offset 4
 *   28  raw IPv4, protocol 253, IP_HDRINCL, connected to 127.0.0.1
 * Check: same addresses, ports, peer and options; 20 -> 21 and 21 -> 20
 * (sendto) carry datagrams; 23 has its port id and groups; the filters are
 * the same programs, locked or not as they were.
 */
#include "fdprog.h"

#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/icmp.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#ifndef IPV6_MULTICAST_ALL
#define IPV6_MULTICAST_ALL 29 /* Linux 4.20 */
#endif

static struct sockaddr_in a20, a21;

/* The socket filters of 21 and 23: classic BPF, read back with SO_GET_FILTER. */
static struct sock_filter filter21[] = {
	BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
	BPF_STMT(BPF_RET | BPF_A, 0),
};
static struct sock_filter filter23[] = { BPF_STMT(BPF_RET | BPF_K, 0xffff) };

static void set_filter(int fd, struct sock_filter *f, unsigned short n, int lock)
{
	struct sock_fprog prog = { .len = n, .filter = f };
	must(setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog), "SO_ATTACH_FILTER");
	if (lock)
		must(setsockopt(fd, SOL_SOCKET, SO_LOCK_FILTER, &lock, sizeof lock), "SO_LOCK_FILTER");
}

/* same_filter checks fd's filter (SO_GET_FILTER counts in entries) and lock. */
static void same_filter(int fd, struct sock_filter *want, unsigned short n, int lock)
{
	struct sock_filter got[8];
	socklen_t l = 8;
	int v;
	socklen_t vl = sizeof v;
	if (getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, got, &l) || l != n || memcmp(got, want, n * sizeof *want))
		fail("fd %d: its socket filter is not the one attached (%u entries)", fd, (unsigned)l);
	if (getsockopt(fd, SOL_SOCKET, SO_LOCK_FILTER, &v, &vl) || v != lock)
		fail("fd %d: SO_LOCK_FILTER is %d, want %d", fd, v, lock);
}
/* raw_connected: /proc/self/net/raw shows fd (a raw socket, which
 * getpeername never answers for) connected (state 01) to rem, the start of
 * its remote address as the file writes it. */
static int raw_connected(int fd, const char *rem)
{
	struct stat st;
	FILE *f = fopen("/proc/self/net/raw", "r");
	if (!f || fstat(fd, &st))
		return 0;
	char line[256], r[64], state[8];
	unsigned long ino;
	int ok = 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "%*s %*s %63s %7s %*s %*s %*s %*s %*s %lu", r, state, &ino) == 3 && ino == st.st_ino)
			ok = !strcmp(state, "01") && !strncmp(r, rem, strlen(rem));
	fclose(f);
	return ok;
}

static struct sockaddr_in6 a22;
static struct sockaddr_nl n23;

/* is_member asks fd for its membership of group on lo (MCAST_MSFILTER):
 * 1 with the filter mode and first source, 0 when it did not join. */
static int is_member(int fd, int level, const struct sockaddr *group, socklen_t glen, uint32_t *mode, struct sockaddr_storage *src)
{
	char buf[GROUP_FILTER_SIZE(4)];
	struct group_filter *gf = (struct group_filter *)buf;
	memset(buf, 0, sizeof buf);
	gf->gf_interface = 1; /* lo */
	memcpy(&gf->gf_group, group, glen);
	gf->gf_numsrc = 4;
	socklen_t l = sizeof buf;
	if (getsockopt(fd, level, MCAST_MSFILTER, gf, &l) != 0)
		return 0;
	*mode = gf->gf_fmode;
	if (gf->gf_numsrc > 0)
		*src = gf->gf_slist[0];
	else
		memset(src, 0, sizeof *src);
	return 1;
}

/* Integer options set on 21 and 22, checked after the restore. */
static const struct {
	int level, opt, val;
	const char *name;
} opts21[] = {
	{ SOL_SOCKET, SO_MARK, 7, "SO_MARK" },
	{ IPPROTO_IP, IP_TOS, 0x10, "IP_TOS" }, /* sets the priority (6) too */
	{ SOL_SOCKET, SO_PRIORITY, 5, "SO_PRIORITY" },
	{ IPPROTO_IP, IP_PKTINFO, 1, "IP_PKTINFO" },
	{ IPPROTO_IP, IP_RECVERR, 1, "IP_RECVERR" },
}, opts22[] = {
	{ IPPROTO_IPV6, IPV6_TCLASS, 0x20, "IPV6_TCLASS" },
	{ IPPROTO_IPV6, IPV6_RECVPKTINFO, 1, "IPV6_RECVPKTINFO" },
};

static void setup(const char *arg)
{
	(void)arg;
	socklen_t l;
	struct sockaddr_in lo = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	at(must(socket(AF_INET, SOCK_DGRAM, 0), "socket"), 21);
	int one = 1;
	must(setsockopt(21, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one), "SO_REUSEADDR");
	for (size_t k = 0; k < sizeof opts21 / sizeof opts21[0]; k++)
		must(setsockopt(21, opts21[k].level, opts21[k].opt, &opts21[k].val, sizeof(int)), opts21[k].name);
	struct timeval rt = { 3, 240000 };
	must(setsockopt(21, SOL_SOCKET, SO_RCVTIMEO, &rt, sizeof rt), "SO_RCVTIMEO");
	set_filter(21, filter21, 2, 0);
	must(bind(21, (struct sockaddr *)&lo, sizeof lo), "bind 21");
	l = sizeof a21;
	getsockname(21, (struct sockaddr *)&a21, &l);
	at(must(socket(AF_INET, SOCK_DGRAM, 0), "socket"), 20);
	must(connect(20, (struct sockaddr *)&a21, sizeof a21), "connect 20");
	l = sizeof a20;
	getsockname(20, (struct sockaddr *)&a20, &l);

	at(must(socket(AF_INET6, SOCK_DGRAM, 0), "socket6"), 22);
	must(setsockopt(22, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one), "V6ONLY");
	int rcv = 64 << 10;
	must(setsockopt(22, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv), "SO_RCVBUF");
	for (size_t k = 0; k < sizeof opts22 / sizeof opts22[0]; k++)
		must(setsockopt(22, opts22[k].level, opts22[k].opt, &opts22[k].val, sizeof(int)), opts22[k].name);
	struct timeval st = { 0, 760000 };
	must(setsockopt(22, SOL_SOCKET, SO_SNDTIMEO, &st, sizeof st), "SO_SNDTIMEO");
	struct sockaddr_in6 lo6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	must(bind(22, (struct sockaddr *)&lo6, sizeof lo6), "bind 22");
	l = sizeof a22;
	getsockname(22, (struct sockaddr *)&a22, &l);

	struct ipv6_mreq m6 = { .ipv6mr_interface = 1 };
	inet_pton(AF_INET6, "ff15::1234", &m6.ipv6mr_multiaddr);
	must(setsockopt(22, IPPROTO_IPV6, IPV6_JOIN_GROUP, &m6, sizeof m6), "IPV6_JOIN_GROUP");
	int hops = 9;
	must(setsockopt(22, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, &hops, sizeof hops), "IPV6_MULTICAST_HOPS");

	at(must(socket(AF_INET, SOCK_DGRAM, 0), "socket"), 24);
	struct ip_mreqn mr = { .imr_ifindex = 1 };
	inet_pton(AF_INET, "239.1.2.3", &mr.imr_multiaddr);
	must(setsockopt(24, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mr, sizeof mr), "IP_ADD_MEMBERSHIP");
	struct ip_mreq_source ms;
	inet_pton(AF_INET, "239.1.2.4", &ms.imr_multiaddr);
	inet_pton(AF_INET, "127.0.0.1", &ms.imr_interface);
	inet_pton(AF_INET, "127.0.0.9", &ms.imr_sourceaddr);
	must(setsockopt(24, IPPROTO_IP, IP_ADD_SOURCE_MEMBERSHIP, &ms, sizeof ms), "IP_ADD_SOURCE_MEMBERSHIP");
	int ttl = 7, zero = 0;
	must(setsockopt(24, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl), "IP_MULTICAST_TTL");
	must(setsockopt(24, IPPROTO_IP, IP_MULTICAST_LOOP, &zero, sizeof zero), "IP_MULTICAST_LOOP");
	must(setsockopt(24, IPPROTO_IP, IP_MULTICAST_ALL, &zero, sizeof zero), "IP_MULTICAST_ALL");
	struct in_addr lo4 = { htonl(INADDR_LOOPBACK) };
	must(setsockopt(24, IPPROTO_IP, IP_MULTICAST_IF, &lo4, sizeof lo4), "IP_MULTICAST_IF");

	at(must(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE), "netlink"), 23);
	struct sockaddr_nl nl = { .nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK };
	must(bind(23, (struct sockaddr *)&nl, sizeof nl), "bind netlink");
	int g = RTNLGRP_IPV4_IFADDR;
	must(setsockopt(23, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof g), "join");
	set_filter(23, filter23, 1, 1);
	l = sizeof n23;
	getsockname(23, (struct sockaddr *)&n23, &l);

	at(must(socket(AF_INET, SOCK_RAW, IPPROTO_ICMP), "raw icmp"), 25);
	struct sockaddr_in lo25 = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	must(bind(25, (struct sockaddr *)&lo25, sizeof lo25), "bind 25");
	uint32_t drop = ~(1u << ICMP_ECHOREPLY);
	must(setsockopt(25, SOL_RAW, ICMP_FILTER, &drop, sizeof drop), "ICMP_FILTER");
	at(must(socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6), "raw icmpv6"), 26);
	struct icmp6_filter f6;
	ICMP6_FILTER_SETBLOCKALL(&f6);
	ICMP6_FILTER_SETPASS(ICMP6_ECHO_REPLY, &f6);
	must(setsockopt(26, IPPROTO_ICMPV6, ICMP6_FILTER, &f6, sizeof f6), "ICMP6_FILTER");
	at(must(socket(AF_INET6, SOCK_RAW, 253), "raw ipv6"), 27);
	int off = 4;
	must(setsockopt(27, IPPROTO_IPV6, IPV6_CHECKSUM, &off, sizeof off), "IPV6_CHECKSUM");
	at(must(socket(AF_INET, SOCK_RAW, 253), "raw ipv4"), 28);
	must(setsockopt(28, IPPROTO_IP, IP_HDRINCL, &one, sizeof one), "IP_HDRINCL");
	must(connect(28, (struct sockaddr *)&lo25, sizeof lo25), "connect 28");
}

static void check(void)
{
	struct sockaddr_in a, p;
	socklen_t l = sizeof a;
	getsockname(20, (struct sockaddr *)&a, &l);
	if (a.sin_port != a20.sin_port || a.sin_addr.s_addr != a20.sin_addr.s_addr)
		fail("fd 20 is at %s:%d, was port %d", inet_ntoa(a.sin_addr), ntohs(a.sin_port), ntohs(a20.sin_port));
	l = sizeof p;
	if (getpeername(20, (struct sockaddr *)&p, &l) || p.sin_port != a21.sin_port)
		fail("fd 20 is not connected to 21");
	l = sizeof a;
	getsockname(21, (struct sockaddr *)&a, &l);
	if (a.sin_port != a21.sin_port)
		fail("fd 21 is at port %d, was %d", ntohs(a.sin_port), ntohs(a21.sin_port));
	int v = 0;
	l = sizeof v;
	if (getsockopt(21, SOL_SOCKET, SO_REUSEADDR, &v, &l) || !v)
		fail("fd 21: SO_REUSEADDR is off");
	for (size_t k = 0; k < sizeof opts21 / sizeof opts21[0]; k++) {
		l = sizeof v;
		if (getsockopt(21, opts21[k].level, opts21[k].opt, &v, &l) || v != opts21[k].val)
			fail("fd 21: %s is %d, want %d", opts21[k].name, v, opts21[k].val);
	}
	for (size_t k = 0; k < sizeof opts22 / sizeof opts22[0]; k++) {
		l = sizeof v;
		if (getsockopt(22, opts22[k].level, opts22[k].opt, &v, &l) || v != opts22[k].val)
			fail("fd 22: %s is %d, want %d", opts22[k].name, v, opts22[k].val);
	}
	struct timeval tv;
	l = sizeof tv;
	if (getsockopt(21, SOL_SOCKET, SO_RCVTIMEO, &tv, &l) || tv.tv_sec != 3 || tv.tv_usec != 240000)
		fail("fd 21: SO_RCVTIMEO is %ld.%06ld s", (long)tv.tv_sec, (long)tv.tv_usec);
	l = sizeof tv;
	if (getsockopt(22, SOL_SOCKET, SO_SNDTIMEO, &tv, &l) || tv.tv_sec != 0 || tv.tv_usec != 760000)
		fail("fd 22: SO_SNDTIMEO is %ld.%06ld s", (long)tv.tv_sec, (long)tv.tv_usec);
	if (send(20, "ping", 4, 0) != 4)
		fail("send 20: %s", strerror(errno));
	char buf[64];
	struct sockaddr_in from;
	l = sizeof from;
	ssize_t n = recvfrom(21, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &l);
	if (n != 4 || memcmp(buf, "ping", 4) || from.sin_port != a20.sin_port)
		fail("fd 21 received %zd bytes from port %d", n, ntohs(from.sin_port));
	if (sendto(21, "pong", 4, 0, (struct sockaddr *)&a20, sizeof a20) != 4)
		fail("sendto 21: %s", strerror(errno));
	n = recv(20, buf, sizeof buf, MSG_DONTWAIT);
	if (n != 4 || memcmp(buf, "pong", 4))
		fail("fd 20 received %zd bytes", n);

	struct sockaddr_in6 a6;
	l = sizeof a6;
	getsockname(22, (struct sockaddr *)&a6, &l);
	if (a6.sin6_port != a22.sin6_port || memcmp(&a6.sin6_addr, &in6addr_loopback, 16))
		fail("fd 22 is at port %d, was %d", ntohs(a6.sin6_port), ntohs(a22.sin6_port));
	l = sizeof v;
	if (getsockopt(22, IPPROTO_IPV6, IPV6_V6ONLY, &v, &l) || !v)
		fail("fd 22: IPV6_V6ONLY is off");
	l = sizeof v;
	if (getsockopt(22, SOL_SOCKET, SO_RCVBUF, &v, &l) || v != 128 << 10)
		fail("fd 22: SO_RCVBUF %d, want %d", v, 128 << 10);

	uint32_t mode;
	struct sockaddr_storage src;
	struct sockaddr_in g4 = { .sin_family = AF_INET };
	inet_pton(AF_INET, "239.1.2.3", &g4.sin_addr);
	if (!is_member(24, IPPROTO_IP, (struct sockaddr *)&g4, sizeof g4, &mode, &src) || mode != MCAST_EXCLUDE)
		fail("fd 24: not in 239.1.2.3 for any source");
	inet_pton(AF_INET, "239.1.2.4", &g4.sin_addr);
	if (!is_member(24, IPPROTO_IP, (struct sockaddr *)&g4, sizeof g4, &mode, &src) || mode != MCAST_INCLUDE ||
	    ((struct sockaddr_in *)&src)->sin_addr.s_addr != htonl(0x7f000009))
		fail("fd 24: not in 239.1.2.4 for 127.0.0.9 only");
	inet_pton(AF_INET, "239.1.2.5", &g4.sin_addr);
	if (is_member(24, IPPROTO_IP, (struct sockaddr *)&g4, sizeof g4, &mode, &src))
		fail("fd 24: in 239.1.2.5, which it never joined");
	struct sockaddr_in6 g6 = { .sin6_family = AF_INET6 };
	inet_pton(AF_INET6, "ff15::1234", &g6.sin6_addr);
	if (!is_member(22, IPPROTO_IPV6, (struct sockaddr *)&g6, sizeof g6, &mode, &src))
		fail("fd 22: not in ff15::1234");
	struct {
		int fd, level, opt, want;
		const char *name;
	} mo[] = {
		{ 24, IPPROTO_IP, IP_MULTICAST_TTL, 7, "IP_MULTICAST_TTL" },
		{ 24, IPPROTO_IP, IP_MULTICAST_LOOP, 0, "IP_MULTICAST_LOOP" },
		{ 24, IPPROTO_IP, IP_MULTICAST_ALL, 0, "IP_MULTICAST_ALL" },
		{ 22, IPPROTO_IPV6, IPV6_MULTICAST_ALL, 1, "IPV6_MULTICAST_ALL (left on)" },
		{ 22, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, 9, "IPV6_MULTICAST_HOPS" },
	};
	for (size_t k = 0; k < sizeof mo / sizeof mo[0]; k++) {
		v = -1;
		l = sizeof v;
		getsockopt(mo[k].fd, mo[k].level, mo[k].opt, &v, &l);
		if (l == 1)
			v = (unsigned char)v; /* IP_MULTICAST_TTL/LOOP may answer in a byte */
		if (v != mo[k].want)
			fail("fd %d: %s is %d, want %d", mo[k].fd, mo[k].name, v, mo[k].want);
	}
	struct in_addr mif = { 0 };
	l = sizeof mif;
	if (getsockopt(24, IPPROTO_IP, IP_MULTICAST_IF, &mif, &l) || mif.s_addr != htonl(INADDR_LOOPBACK))
		fail("fd 24: IP_MULTICAST_IF is not 127.0.0.1");

	struct sockaddr_nl nl;
	l = sizeof nl;
	getsockname(23, (struct sockaddr *)&nl, &l);
	if (nl.nl_pid != n23.nl_pid)
		fail("netlink port id %u, was %u", nl.nl_pid, n23.nl_pid);
	uint32_t groups[4] = { 0 };
	l = sizeof groups;
	if (getsockopt(23, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, groups, &l))
		fail("NETLINK_LIST_MEMBERSHIPS: %s", strerror(errno));
	uint32_t want = (1u << (RTNLGRP_LINK - 1)) | (1u << (RTNLGRP_IPV4_IFADDR - 1));
	if (groups[0] != want)
		fail("netlink groups %#x, want %#x", groups[0], want);
	same_filter(21, filter21, 2, 0);
	same_filter(23, filter23, 1, 1);

	struct sockaddr_in r;
	l = sizeof r;
	if (getsockname(25, (struct sockaddr *)&r, &l) || r.sin_addr.s_addr != htonl(INADDR_LOOPBACK))
		fail("fd 25 is not bound to 127.0.0.1");
	uint32_t drop = 0;
	l = sizeof drop;
	if (getsockopt(25, SOL_RAW, ICMP_FILTER, &drop, &l) || drop != ~(1u << ICMP_ECHOREPLY))
		fail("fd 25: ICMP_FILTER %#x", drop);
	struct icmp6_filter f6, want6;
	ICMP6_FILTER_SETBLOCKALL(&want6);
	ICMP6_FILTER_SETPASS(ICMP6_ECHO_REPLY, &want6);
	l = sizeof f6;
	if (getsockopt(26, IPPROTO_ICMPV6, ICMP6_FILTER, &f6, &l) || memcmp(&f6, &want6, sizeof f6))
		fail("fd 26: ICMP6_FILTER is not the one set");
	l = sizeof v;
	if (getsockopt(27, IPPROTO_IPV6, IPV6_CHECKSUM, &v, &l) || v != 4)
		fail("fd 27: IPV6_CHECKSUM %d, want 4", v);
	l = sizeof v;
	if (getsockopt(28, IPPROTO_IP, IP_HDRINCL, &v, &l) || v != 1)
		fail("fd 28: IP_HDRINCL %d, want 1", v);
	if (!raw_connected(28, "0100007F:"))
		fail("fd 28 is not connected to 127.0.0.1 (/proc/self/net/raw)");
	int type;
	l = sizeof type;
	if (getsockopt(28, SOL_SOCKET, SO_TYPE, &type, &l) || type != SOCK_RAW || getsockopt(28, SOL_SOCKET, SO_PROTOCOL, &v, &l) || v != 253)
		fail("fd 28 is not a raw socket of protocol 253");
}
