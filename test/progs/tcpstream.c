/*
 * tcpstream: TCP connections streaming checksummed data both ways.
 *
 *   tcpstream server|client PROGRESS VERDICT ADDR PORT NCONN SEND RECV RATE [accept=MS] [buf=BYTES] [more] [stay]
 *
 * The server listens on ADDR:PORT (IPv4 or IPv6; SO_REUSEADDR, backlog 512)
 * and accepts NCONN connections (with accept=MS not before MS milliseconds
 * after it started, so that connections wait in its accept queue); the
 * client opens NCONN connections to it. buf=BYTES sets SO_SNDBUF and
 * SO_RCVBUF of every connection (bounding the data in flight: many
 * connections). With "more" the server also sets SO_REUSEPORT (and
 * IPV6_V6ONLY for IPv6) on its listener and TCP_CORK and a 256 KiB
 * SO_SNDBUF on every connection, and checks them on SIGTERM. On every connection both sides send the bytes
 * of a stream that only depends on the connection's number, the
 * direction and the offset, and check every byte they receive against it:
 * a byte lost, duplicated or changed, a reset or an early end of file is a
 * failure, written to VERDICT at once ("FAIL why") before exiting 1.
 *
 * Each side writes as fast as the peer's window lets it, but reads at most
 * RATE bytes per connection every 10 ms (0: no limit), so both queues of a
 * connection hold data in flight at any moment. With SEND > 0 a side sends
 * SEND bytes per connection, then shuts its side down (FIN); with RECV > 0
 * it expects RECV bytes and then the peer's FIN (0: forever). Different
 * amounts on the two sides leave a connection half-closed for a while
 * (CLOSE_WAIT on one side, FIN_WAIT on the other). Once every connection
 * has sent and received everything, it writes "PASS <bytes received>
 * complete" and exits 0 (with "stay": it keeps its sockets open and
 * waits for SIGTERM to write that verdict).
 *
 * The server sets options on every connection it accepts (TCP_NODELAY,
 * SO_KEEPALIVE with idle 77 s, interval 11 s, 5 probes, SO_LINGER 3 s,
 * TCP_USER_TIMEOUT 60 s, 1 MiB SO_RCVBUF unless buf=, IP_TOS 0x10 (IPv4) then
 * SO_PRIORITY 5, SO_RCVTIMEO and SO_SNDTIMEO) and checks on SIGTERM that they,
 * the peer addresses and the listener are as they were. PROGRESS holds the
 * bytes received so far (all connections). SIGUSR1 stops the traffic (so
 * that the two ends can be stopped one after the other without either
 * seeing the other go); SIGTERM checks and writes "PASS <bytes>".
 * Single-threaded (poll), so it needs nothing but TCP from a restore.
 */
#include "common.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/socket.h>

#define TICK_NS 10000000L
#define MAXCONN 1024
#define BUF (256 << 10)

struct conn {
	int fd;
	uint64_t sent, rcvd;
	int sent_fin, got_fin, done;
	struct sockaddr_storage peer;
	socklen_t peerlen;
};

static struct conn conns[MAXCONN];
static int nconn, naccepted, lfd = -1, is_server;
static uint64_t send_total, recv_total, rate;
static int bufsz, more, stay, completed;
static volatile sig_atomic_t got_term, got_quiet;
static const char *verdict_path, *progress_path;
static int progress_fd = -1;
static struct sockaddr_storage laddr;
static socklen_t laddrlen;

static void on_term(int sig)
{
	if (sig == SIGUSR1)
		got_quiet = 1;
	else
		got_term = 1;
}

static void verdict(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void verdict(int ok, const char *fmt, ...)
{
	char tmp[4096], msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	snprintf(tmp, sizeof tmp, "%s.tmp", verdict_path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd >= 0) {
		dprintf(fd, "%s\n", msg);
		close(fd);
		rename(tmp, verdict_path);
	}
	exit(ok ? 0 : 1);
}

/* The stream of connection c in direction dir (0 client->server, 1
 * server->client): byte i depends on nothing else. */
static inline unsigned char sbyte(int c, int dir, uint64_t i)
{
	uint64_t w = mix64(((uint64_t)c << 48) ^ ((uint64_t)dir << 47) ^ (i >> 3));
	return (unsigned char)(w >> (8 * (i & 7)));
}

/* fill puts bytes off..off+n of a stream in buf, a word at a time. */
static void fill(unsigned char *buf, int c, int dir, uint64_t off, size_t n)
{
	size_t k = 0;
	while (k < n && ((off + k) & 7))
		buf[k] = sbyte(c, dir, off + k), k++;
	for (; k + 8 <= n; k += 8) {
		uint64_t w = mix64(((uint64_t)c << 48) ^ ((uint64_t)dir << 47) ^ ((off + k) >> 3));
		memcpy(buf + k, &w, 8); /* little-endian: byte j is w >> 8j */
	}
	for (; k < n; k++)
		buf[k] = sbyte(c, dir, off + k);
}

static void progress(void)
{
	uint64_t n = 0;
	for (int i = 0; i < naccepted; i++)
		n += conns[i].rcvd;
	char b[32];
	int l = snprintf(b, sizeof b, "%llu\n", (unsigned long long)n);
	if (pwrite(progress_fd, b, l, 0) < 0)
		verdict(0, "FAIL write progress: %s", strerror(errno));
	if (ftruncate(progress_fd, l) < 0)
		verdict(0, "FAIL truncate progress: %s", strerror(errno));
}

static int parse_addr(const char *a, int port, struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof *ss);
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, a, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons(port);
		*len = sizeof *in4;
		return AF_INET;
	}
	if (inet_pton(AF_INET6, a, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		*len = sizeof *in6;
		return AF_INET6;
	}
	return -1;
}

static void setopt(int fd, int level, int opt, int val, const char *name)
{
	if (setsockopt(fd, level, opt, &val, sizeof val) < 0)
		verdict(0, "FAIL setsockopt %s: %s", name, strerror(errno));
}

static int getopt_int(int fd, int level, int opt)
{
	int v = -1;
	socklen_t l = sizeof v;
	if (getsockopt(fd, level, opt, &v, &l) < 0)
		return -1;
	return v;
}

static void server_options(int fd)
{
	setopt(fd, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
	setopt(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
	setopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, 77, "TCP_KEEPIDLE");
	setopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, 11, "TCP_KEEPINTVL");
	setopt(fd, IPPROTO_TCP, TCP_KEEPCNT, 5, "TCP_KEEPCNT");
	setopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, 60000, "TCP_USER_TIMEOUT");
	setopt(fd, SOL_SOCKET, SO_RCVBUF, bufsz ? bufsz : 1 << 20, "SO_RCVBUF");
	if (bufsz)
		setopt(fd, SOL_SOCKET, SO_SNDBUF, bufsz, "SO_SNDBUF");
	struct linger lg = { 1, 3 };
	if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) < 0)
		verdict(0, "FAIL SO_LINGER: %s", strerror(errno));
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_INET)
		setopt(fd, IPPROTO_IP, IP_TOS, 0x10, "IP_TOS"); /* sets the priority (6) too */
	setopt(fd, SOL_SOCKET, SO_PRIORITY, 5, "SO_PRIORITY");
	/* Long enough never to fire: the program polls before it reads or writes.
	 * Whole multiples of 20 ms, which the kernel keeps exactly (in jiffies). */
	struct timeval rt = { 41, 500000 }, st = { 42, 260000 };
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &rt, sizeof rt) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &st, sizeof st) < 0)
		verdict(0, "FAIL SO_RCVTIMEO/SO_SNDTIMEO: %s", strerror(errno));
	if (more) {
		setopt(fd, IPPROTO_TCP, TCP_CORK, 1, "TCP_CORK");
		setopt(fd, SOL_SOCKET, SO_SNDBUF, 256 << 10, "SO_SNDBUF");
	}
}

static const char *addr_str(const struct sockaddr_storage *ss, char *buf)
{
	if (ss->ss_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, buf, INET6_ADDRSTRLEN);
	else
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, buf, INET6_ADDRSTRLEN);
	return buf;
}

static void check_options(struct conn *c, int i)
{
	int fd = c->fd;
	struct {
		int level, opt, want;
		const char *name;
	} o[] = {
		{ IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY" },
		{ SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE" },
		{ IPPROTO_TCP, TCP_KEEPIDLE, 77, "TCP_KEEPIDLE" },
		{ IPPROTO_TCP, TCP_KEEPINTVL, 11, "TCP_KEEPINTVL" },
		{ IPPROTO_TCP, TCP_KEEPCNT, 5, "TCP_KEEPCNT" },
		{ IPPROTO_TCP, TCP_USER_TIMEOUT, 60000, "TCP_USER_TIMEOUT" },
		{ SOL_SOCKET, SO_RCVBUF, 2 * (bufsz ? bufsz : 1 << 20), "SO_RCVBUF" },
		{ SOL_SOCKET, SO_PRIORITY, 5, "SO_PRIORITY" },
	};
	for (size_t k = 0; k < sizeof o / sizeof o[0]; k++) {
		int v = getopt_int(fd, o[k].level, o[k].opt);
		if (v != o[k].want)
			verdict(0, "FAIL conn %d: %s is %d, want %d", i, o[k].name, v, o[k].want);
	}
	if (more) {
		if (getopt_int(fd, IPPROTO_TCP, TCP_CORK) != 1)
			verdict(0, "FAIL conn %d: TCP_CORK lost", i);
		if (getopt_int(fd, SOL_SOCKET, SO_SNDBUF) != 512 << 10)
			verdict(0, "FAIL conn %d: SO_SNDBUF is %d, want %d", i, getopt_int(fd, SOL_SOCKET, SO_SNDBUF), 512 << 10);
	}
	struct linger lg;
	socklen_t l = sizeof lg;
	if (getsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, &l) < 0 || !lg.l_onoff || lg.l_linger != 3)
		verdict(0, "FAIL conn %d: SO_LINGER lost", i);
	struct timeval rt, st;
	l = sizeof rt;
	if (getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &rt, &l) < 0 || rt.tv_sec != 41 || rt.tv_usec != 500000)
		verdict(0, "FAIL conn %d: SO_RCVTIMEO is %ld.%06ld s", i, (long)rt.tv_sec, (long)rt.tv_usec);
	l = sizeof st;
	if (getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &st, &l) < 0 || st.tv_sec != 42 || st.tv_usec != 260000)
		verdict(0, "FAIL conn %d: SO_SNDTIMEO is %ld.%06ld s", i, (long)st.tv_sec, (long)st.tv_usec);
	if (c->done)
		return; /* both FINs exchanged: the socket may be closed by now */
	struct sockaddr_storage p;
	socklen_t pl = sizeof p;
	if (getpeername(fd, (struct sockaddr *)&p, &pl) < 0)
		verdict(0, "FAIL conn %d: getpeername: %s", i, strerror(errno));
	if (pl != c->peerlen || memcmp(&p, &c->peer, pl)) {
		char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
		verdict(0, "FAIL conn %d: peer address %s is not %s", i, addr_str(&p, a), addr_str(&c->peer, b));
	}
}

static void check_listener(void)
{
	if (lfd < 0)
		return;
	if (getopt_int(lfd, SOL_SOCKET, SO_ACCEPTCONN) != 1)
		verdict(0, "FAIL the listening socket no longer listens");
	if (getopt_int(lfd, SOL_SOCKET, SO_REUSEADDR) != 1)
		verdict(0, "FAIL the listening socket lost SO_REUSEADDR");
	if (more && getopt_int(lfd, SOL_SOCKET, SO_REUSEPORT) != 1)
		verdict(0, "FAIL the listening socket lost SO_REUSEPORT");
	if (more && laddr.ss_family == AF_INET6 && getopt_int(lfd, IPPROTO_IPV6, IPV6_V6ONLY) != 1)
		verdict(0, "FAIL the listening socket lost IPV6_V6ONLY");
	struct sockaddr_storage a;
	socklen_t al = sizeof a;
	if (getsockname(lfd, (struct sockaddr *)&a, &al) < 0 || al != laddrlen || memcmp(&a, &laddr, al))
		verdict(0, "FAIL the listening socket's address changed");
}

static void finish(struct conn *c)
{
	if (c->done || !c->got_fin || !c->sent_fin)
		return;
	c->done = 1;
}

static void pump(int i, int can_read, int can_write)
{
	struct conn *c = &conns[i];
	static unsigned char buf[BUF], want[BUF];
	int dir_in = is_server ? 0 : 1, dir_out = 1 - dir_in;
	if (can_write && !c->sent_fin) {
		/* No more than the socket can take at once. */
		uint64_t n = bufsz && bufsz < BUF ? bufsz : BUF;
		if (send_total && send_total - c->sent < n)
			n = send_total - c->sent;
		fill(buf, i, dir_out, c->sent, n);
		ssize_t w = n ? send(c->fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL) : 0;
		if (w < 0 && errno != EAGAIN && errno != EINTR)
			verdict(0, "FAIL conn %d: send after %llu bytes: %s", i, (unsigned long long)c->sent, strerror(errno));
		if (w > 0)
			c->sent += w;
		if (send_total && c->sent == send_total) {
			if (shutdown(c->fd, SHUT_WR) < 0)
				verdict(0, "FAIL conn %d: shutdown: %s", i, strerror(errno));
			c->sent_fin = 1;
		}
	}
	if (can_read && !c->got_fin) {
		uint64_t n = rate ? rate : BUF;
		if (n > BUF)
			n = BUF;
		ssize_t r = recv(c->fd, buf, n, MSG_DONTWAIT);
		if (r < 0 && errno != EAGAIN && errno != EINTR)
			verdict(0, "FAIL conn %d: recv after %llu bytes: %s", i, (unsigned long long)c->rcvd, strerror(errno));
		if (r == 0) {
			if (!recv_total || c->rcvd != recv_total)
				verdict(0, "FAIL conn %d: end of file after %llu bytes", i, (unsigned long long)c->rcvd);
			c->got_fin = 1;
		}
		if (r > 0) {
			fill(want, i, dir_in, c->rcvd, r);
			if (memcmp(buf, want, r))
				for (ssize_t k = 0; k < r; k++)
					if (buf[k] != want[k])
						verdict(0, "FAIL conn %d: byte %llu is wrong (lost, duplicated or changed data)", i,
							(unsigned long long)(c->rcvd + k));
		}
		if (r > 0)
			c->rcvd += r;
		if (recv_total && c->rcvd > recv_total)
			verdict(0, "FAIL conn %d: more than %llu bytes", i, (unsigned long long)recv_total);
	}
	finish(c);
}

int main(int argc, char **argv)
{
	close_inherited();
	if (argc < 10) {
		fprintf(stderr, "usage: %s server|client PROGRESS VERDICT ADDR PORT NCONN SEND RECV RATE [accept=MS] [buf=BYTES]\n", argv[0]);
		return 2;
	}
	long accept_ms = 0;
	for (int i = 10; i < argc; i++) {
		if (!strncmp(argv[i], "accept=", 7)) {
			accept_ms = atol(argv[i] + 7);
		} else if (!strncmp(argv[i], "buf=", 4)) {
			bufsz = atoi(argv[i] + 4);
		} else if (!strcmp(argv[i], "more")) {
			more = 1;
		} else if (!strcmp(argv[i], "stay")) {
			stay = 1;
		} else {
			fprintf(stderr, "tcpstream: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	is_server = !strcmp(argv[1], "server");
	progress_path = argv[2];
	verdict_path = argv[3];
	nconn = atoi(argv[6]);
	send_total = strtoull(argv[7], NULL, 0);
	recv_total = strtoull(argv[8], NULL, 0);
	rate = strtoull(argv[9], NULL, 0);
	if (nconn < 1 || nconn > MAXCONN) {
		fprintf(stderr, "tcpstream: 1 to %d connections\n", MAXCONN);
		return 2;
	}
	struct sockaddr_storage sa;
	socklen_t salen;
	int family = parse_addr(argv[4], atoi(argv[5]), &sa, &salen);
	if (family < 0) {
		fprintf(stderr, "tcpstream: bad address %s\n", argv[4]);
		return 2;
	}
	detach();
	signal(SIGPIPE, SIG_IGN);
	struct sigaction act = { .sa_handler = on_term };
	sigaction(SIGTERM, &act, NULL);
	sigaction(SIGUSR1, &act, NULL);
	progress_fd = open(progress_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (progress_fd < 0)
		verdict(0, "FAIL open progress: %s", strerror(errno));
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);

	if (is_server) {
		lfd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (lfd < 0)
			verdict(0, "FAIL socket: %s", strerror(errno));
		setopt(lfd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
		if (bufsz) {
			/* Before the handshake, so that the client's MSS never
			 * outgrows the windows of these small buffers. */
			setopt(lfd, SOL_SOCKET, SO_SNDBUF, bufsz, "SO_SNDBUF");
			setopt(lfd, SOL_SOCKET, SO_RCVBUF, bufsz, "SO_RCVBUF");
		}
		if (more) {
			setopt(lfd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
			if (family == AF_INET6)
				setopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
		}
		if (bind(lfd, (struct sockaddr *)&sa, salen) < 0)
			verdict(0, "FAIL bind %s: %s", argv[4], strerror(errno));
		if (listen(lfd, 512) < 0)
			verdict(0, "FAIL listen: %s", strerror(errno));
		laddrlen = sizeof laddr;
		getsockname(lfd, (struct sockaddr *)&laddr, &laddrlen);
	} else {
		for (int i = 0; i < nconn; i++) {
			int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
			if (fd < 0)
				verdict(0, "FAIL socket: %s", strerror(errno));
			if (bufsz) {
				setopt(fd, SOL_SOCKET, SO_SNDBUF, bufsz, "SO_SNDBUF");
				setopt(fd, SOL_SOCKET, SO_RCVBUF, bufsz, "SO_RCVBUF");
			}
			if (connect(fd, (struct sockaddr *)&sa, salen) < 0)
				verdict(0, "FAIL connect %d: %s", i, strerror(errno));
			conns[i].fd = fd;
			conns[i].peerlen = sizeof conns[i].peer;
			getpeername(fd, (struct sockaddr *)&conns[i].peer, &conns[i].peerlen);
		}
		naccepted = nconn;
	}
	progress();

	struct pollfd pfd[MAXCONN + 1];
	struct timespec next = t0;
	for (;;) {
		if (got_term) {
			check_listener();
			for (int i = 0; i < naccepted; i++)
				if (is_server)
					check_options(&conns[i], i);
			uint64_t n = 0;
			for (int i = 0; i < naccepted; i++)
				n += conns[i].rcvd;
			verdict(1, "PASS %llu%s", (unsigned long long)n, completed ? " complete" : "");
		}
		if (completed) {
			sleep_ns(5000000L, &got_term);
			continue;
		}
		if (got_quiet) {
			progress();
			while (!got_term)
				sleep_ns(5000000L, &got_term);
			continue;
		}
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long since_ms = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
		int tick = (now.tv_sec > next.tv_sec || (now.tv_sec == next.tv_sec && now.tv_nsec >= next.tv_nsec));
		if (tick) {
			next.tv_nsec += TICK_NS;
			if (next.tv_nsec >= 1000000000L) {
				next.tv_sec++;
				next.tv_nsec -= 1000000000L;
			}
			if (next.tv_sec < now.tv_sec) /* after a long stop, do not catch up */
				next = now;
		}
		int np = 0;
		if (is_server && naccepted < nconn && since_ms >= accept_ms) {
			pfd[np].fd = lfd;
			pfd[np++].events = POLLIN;
		}
		int base = np;
		for (int i = 0; i < naccepted; i++) {
			pfd[np].fd = conns[i].fd;
			pfd[np].events = (conns[i].sent_fin ? 0 : POLLOUT) | (conns[i].got_fin || rate ? 0 : POLLIN);
			np++;
		}
		int ms = (int)((next.tv_sec - now.tv_sec) * 1000 + (next.tv_nsec - now.tv_nsec) / 1000000) + 1;
		if (ms < 0)
			ms = 0;
		if (poll(pfd, np, ms) < 0) {
			if (errno == EINTR)
				continue;
			verdict(0, "FAIL poll: %s", strerror(errno));
		}
		if (base && (pfd[0].revents & POLLIN)) {
			struct conn *c = &conns[naccepted];
			c->peerlen = sizeof c->peer;
			int fd = accept4(lfd, (struct sockaddr *)&c->peer, &c->peerlen, SOCK_CLOEXEC);
			if (fd >= 0) {
				c->fd = fd;
				server_options(fd);
				naccepted++;
			} else if (errno != EAGAIN && errno != EINTR) {
				verdict(0, "FAIL accept: %s", strerror(errno));
			}
		}
		int done = 0;
		for (int i = 0; i < naccepted; i++) {
			short re = pfd[base + i].revents;
			if (re & (POLLERR | POLLNVAL))
				verdict(0, "FAIL conn %d: poll error %#x after %llu bytes in, %llu out", i, re,
					(unsigned long long)conns[i].rcvd, (unsigned long long)conns[i].sent);
			pump(i, (re & (POLLIN | POLLHUP)) || (rate && tick), (re & POLLOUT) != 0);
			done += conns[i].done;
		}
		if (tick)
			progress();
		if ((send_total || recv_total) && naccepted == nconn && done == nconn) {
			progress();
			if (stay) {
				completed = 1;
				continue;
			}
			uint64_t n = 0;
			for (int i = 0; i < naccepted; i++)
				n += conns[i].rcvd;
			verdict(1, "PASS %llu complete", (unsigned long long)n);
		}
	}
}
