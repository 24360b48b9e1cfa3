/*
 * fd_unix: unix sockets of every type, with names, queues and states.
 *
 *   fd_unix PROGRESS VERDICT DIR
 *
 *   20 - 21  stream socketpair; "to 20" queued at 20, "to 21 a" "to 21 b" at 21
 *   22 - 23  seqpacket socketpair; packets "p1", "packet two" queued at 22
 *   24 - 25  datagram socketpair; datagrams "d1", "dgram two" queued at 24
 *   26       stream listener on DIR/listen.sock (mode 0640), backlog 5
 *   27 - 28  27 accepted from 26, connected to client 28; "hello server"
 *            queued at 27, "hello client" at 28
 *   29       a client of 26 not accepted yet
 *   30       datagram socket bound to the abstract name @crpipe-fd-unix-PID,
 *            with a datagram from 31 queued
 *   31       datagram socket bound to DIR/dgram.sock, connected to 30
 *   32 - 33  stream pair; 33 shut down for writing after sending "bye"
 *   34       stream socket whose peer wrote "last words" and closed
 *   35       unbound datagram socket with SO_PASSCRED and SO_PASSPIDFD
 *            (Linux 6.5), SO_RCVTIMEO 2.5 s; 32 has SO_PASSRIGHTS off
 *            (Linux 6.16) and SO_SNDTIMEO 1.24 s (multiples of
 *            20 ms, which the kernel keeps exactly)
 * With "fork": 36 - a child's 36, a stream socketpair across processes;
 * "from child" queued at the parent's end; the child echoes what it reads.
 */
#include "fdprog.h"

#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>

#ifndef SO_PASSPIDFD
#define SO_PASSPIDFD 76
#endif
#ifndef SO_PASSRIGHTS
#define SO_PASSRIGHTS 83
#endif

/* Options a kernel may not have: checked only where they were set. */
static int has_passpidfd, has_passrights;

static struct sockaddr_un addr(const char *name, socklen_t *len)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (name[0] == '@') {
		memcpy(a.sun_path + 1, name + 1, strlen(name) - 1);
		*len = offsetof(struct sockaddr_un, sun_path) + strlen(name);
	} else {
		strcpy(a.sun_path, name);
		*len = sizeof a;
	}
	return a;
}

static char abstract[64], listen_path[4096], dgram_path[4096];

static void put(int fd, const char *s)
{
	if (send(fd, s, strlen(s), MSG_DONTWAIT) != (ssize_t)strlen(s)) {
		if (got_term)
			fail("fd %d: send \"%s\": %s", fd, s, strerror(errno));
		else
			die("send");
	}
}

static pid_t child;

static void setup(const char *arg)
{
	signal(SIGPIPE, SIG_IGN);
	char cwd[2048];
	if (!getcwd(cwd, sizeof cwd))
		die("getcwd");
	snprintf(listen_path, sizeof listen_path, "%s/listen.sock", cwd);
	snprintf(dgram_path, sizeof dgram_path, "%s/dgram.sock", cwd);
	snprintf(abstract, sizeof abstract, "@crpipe-fd-unix-%d", getpid());
	int sv[2];
	socklen_t l;

	must(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), "socketpair");
	at(sv[0], 20);
	at(sv[1], 21);
	put(21, "to 20");
	put(20, "to 21 a");
	put(20, "to 21 b");

	must(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), "socketpair");
	at(sv[0], 22);
	at(sv[1], 23);
	put(23, "p1");
	put(23, "packet two");

	must(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv), "socketpair");
	at(sv[0], 24);
	at(sv[1], 25);
	put(25, "d1");
	put(25, "dgram two");

	at(must(socket(AF_UNIX, SOCK_STREAM, 0), "socket"), 26);
	struct sockaddr_un a = addr(listen_path, &l);
	must(bind(26, (struct sockaddr *)&a, l), "bind listen");
	must(chmod(listen_path, 0640), "chmod");
	must(listen(26, 5), "listen");
	at(must(socket(AF_UNIX, SOCK_STREAM, 0), "socket"), 28);
	must(connect(28, (struct sockaddr *)&a, l), "connect 28");
	at(must(accept(26, NULL, NULL), "accept"), 27);
	put(28, "hello server");
	put(27, "hello client");
	at(must(socket(AF_UNIX, SOCK_STREAM, 0), "socket"), 29);
	must(connect(29, (struct sockaddr *)&a, l), "connect 29");

	at(must(socket(AF_UNIX, SOCK_DGRAM, 0), "socket"), 30);
	struct sockaddr_un ab = addr(abstract, &l);
	socklen_t abl = l;
	must(bind(30, (struct sockaddr *)&ab, abl), "bind abstract");
	at(must(socket(AF_UNIX, SOCK_DGRAM, 0), "socket"), 31);
	struct sockaddr_un d = addr(dgram_path, &l);
	must(bind(31, (struct sockaddr *)&d, l), "bind dgram");
	must(connect(31, (struct sockaddr *)&ab, abl), "connect 31");
	put(31, "dgram to 30");

	must(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), "socketpair");
	at(sv[0], 32);
	at(sv[1], 33);
	put(33, "bye");
	must(shutdown(33, SHUT_WR), "shutdown");

	must(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), "socketpair");
	at(sv[0], 34);
	put(sv[1], "last words");
	close(sv[1]);

	at(must(socket(AF_UNIX, SOCK_DGRAM, 0), "socket"), 35);
	int one = 1;
	must(setsockopt(35, SOL_SOCKET, SO_PASSCRED, &one, sizeof one), "SO_PASSCRED");
	has_passpidfd = setsockopt(35, SOL_SOCKET, SO_PASSPIDFD, &one, sizeof one) == 0;
	if (!has_passpidfd && errno != ENOPROTOOPT)
		die("SO_PASSPIDFD");
	struct timeval rt = { 2, 500000 }, st = { 1, 240000 };
	must(setsockopt(35, SOL_SOCKET, SO_RCVTIMEO, &rt, sizeof rt), "SO_RCVTIMEO");
	must(setsockopt(32, SOL_SOCKET, SO_SNDTIMEO, &st, sizeof st), "SO_SNDTIMEO");
	int zero = 0;
	has_passrights = setsockopt(32, SOL_SOCKET, SO_PASSRIGHTS, &zero, sizeof zero) == 0;
	if (!has_passrights && errno != ENOPROTOOPT)
		die("SO_PASSRIGHTS");

	if (arg && !strcmp(arg, "fork")) {
		must(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), "socketpair");
		child = must(fork(), "fork");
		if (child == 0) {
			close(sv[0]);
			at(sv[1], 36);
			if (send(36, "from child", 10, 0) != 10)
				_exit(1);
			char buf[64];
			for (;;) {
				ssize_t n = recv(36, buf, sizeof buf, 0);
				if (n <= 0)
					_exit(0);
				if (send(36, buf, n, 0) != n)
					_exit(1);
			}
		}
		close(sv[1]);
		at(sv[0], 36);
		for (int n = 0; n < 10;) {
			if (ioctl(36, FIONREAD, &n) < 0)
				die("FIONREAD");
			if (n < 10)
				sleep_ns(1000000, NULL);
		}
	}
}

static void expect(int fd, const char *want)
{
	char buf[256];
	ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
	if (n != (ssize_t)strlen(want) || memcmp(buf, want, n))
		fail("fd %d: got %zd bytes \"%.*s\", want \"%s\" (%s)", fd, n, n > 0 ? (int)n : 0, buf, want, n < 0 ? strerror(errno) : "");
}

static void expect_empty(int fd)
{
	char c;
	ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
	if (n != -1 || errno != EAGAIN)
		fail("fd %d: queue not empty after its data (%zd)", fd, n);
}

static void expect_name(int fd, int peer, const char *want)
{
	struct sockaddr_un a;
	socklen_t l = sizeof a;
	memset(&a, 0, sizeof a);
	if ((peer ? getpeername(fd, (struct sockaddr *)&a, &l) : getsockname(fd, (struct sockaddr *)&a, &l)) < 0) {
		fail("fd %d: get%sname: %s", fd, peer ? "peer" : "sock", strerror(errno));
		return;
	}
	char got[256] = "";
	if (l > offsetof(struct sockaddr_un, sun_path)) {
		size_t n = l - offsetof(struct sockaddr_un, sun_path);
		if (a.sun_path[0] == 0) {
			got[0] = '@';
			memcpy(got + 1, a.sun_path + 1, n - 1);
			got[n] = 0;
		} else {
			snprintf(got, sizeof got, "%s", a.sun_path);
		}
	}
	if (strcmp(got, want))
		fail("fd %d: %s name \"%s\", want \"%s\"", fd, peer ? "peer" : "own", got, want);
}

static void check(void)
{
	/* Reads below must see everything exactly once and in order. */
	char buf[256];
	expect(20, "to 20");
	expect_empty(20);
	ssize_t n = recv(21, buf, sizeof buf, MSG_DONTWAIT);
	if (n != 14 || memcmp(buf, "to 21 ato 21 b", 14))
		fail("fd 21: %zd bytes \"%.*s\"", n, n > 0 ? (int)n : 0, buf);
	put(21, "new");
	expect(20, "new");

	expect(22, "p1");
	expect(22, "packet two");
	expect_empty(22);
	expect(24, "d1");
	expect(24, "dgram two");
	expect_empty(24);

	expect_name(26, 0, listen_path);
	expect_name(27, 0, listen_path);
	expect_name(28, 1, listen_path);
	expect_name(28, 0, "");
	struct stat st;
	if (stat(listen_path, &st) || !S_ISSOCK(st.st_mode) || (st.st_mode & 0777) != 0640)
		fail("%s: mode %o", listen_path, st.st_mode);
	expect(27, "hello server");
	expect(28, "hello client");
	fcntl(26, F_SETFL, O_NONBLOCK);
	int c = accept4(26, NULL, NULL, SOCK_NONBLOCK);
	if (c < 0) {
		fail("accept the pending connection: %s", strerror(errno));
	} else {
		put(29, "pending");
		expect(c, "pending");
		close(c);
	}
	if (accept4(26, NULL, NULL, SOCK_NONBLOCK) != -1 || errno != EAGAIN)
		fail("a second connection was waiting at 26");

	struct sockaddr_un from;
	socklen_t fl = sizeof from;
	memset(&from, 0, sizeof from);
	n = recvfrom(30, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
	if (n != 11 || memcmp(buf, "dgram to 30", 11) || strcmp(from.sun_path, dgram_path))
		fail("fd 30: %zd bytes from \"%s\"", n, from.sun_path);
	expect_name(30, 0, abstract);
	expect_name(31, 1, abstract);
	expect_name(31, 0, dgram_path);
	put(31, "again");
	expect(30, "again");

	expect(32, "bye");
	if (recv(32, buf, 1, MSG_DONTWAIT) != 0)
		fail("fd 32: no end of file after the peer's shutdown");
	if (send(33, "x", 1, MSG_DONTWAIT) != -1 || errno != EPIPE)
		fail("fd 33: send after SHUT_WR did not fail with EPIPE");
	put(32, "back");
	expect(33, "back");

	expect(34, "last words");
	if (recv(34, buf, 1, MSG_DONTWAIT) != 0)
		fail("fd 34: no end of file after its closed peer's data");

	int v = 0;
	socklen_t vl = sizeof v;
	if (getsockopt(35, SOL_SOCKET, SO_PASSCRED, &v, &vl) || !v)
		fail("fd 35: SO_PASSCRED is off");
	if (has_passpidfd && (getsockopt(35, SOL_SOCKET, SO_PASSPIDFD, &v, &vl) || !v))
		fail("fd 35: SO_PASSPIDFD is off");
	struct timeval tv;
	socklen_t tl = sizeof tv;
	if (getsockopt(35, SOL_SOCKET, SO_RCVTIMEO, &tv, &tl) || tv.tv_sec != 2 || tv.tv_usec != 500000)
		fail("fd 35: SO_RCVTIMEO is %ld.%06ld s", (long)tv.tv_sec, (long)tv.tv_usec);
	tl = sizeof tv;
	if (getsockopt(32, SOL_SOCKET, SO_SNDTIMEO, &tv, &tl) || tv.tv_sec != 1 || tv.tv_usec != 240000)
		fail("fd 32: SO_SNDTIMEO is %ld.%06ld s", (long)tv.tv_sec, (long)tv.tv_usec);
	if (has_passrights && (getsockopt(32, SOL_SOCKET, SO_PASSRIGHTS, &v, &vl) || v))
		fail("fd 32: SO_PASSRIGHTS is on");
	if (has_passrights && (getsockopt(33, SOL_SOCKET, SO_PASSRIGHTS, &v, &vl) || !v))
		fail("fd 33: SO_PASSRIGHTS is off");

	if (child) {
		expect(36, "from child");
		put(36, "echo");
		n = -1;
		for (int i = 0; i < 1000 && n < 0; i++) {
			n = recv(36, buf, sizeof buf, MSG_DONTWAIT);
			if (n < 0)
				sleep_ns(1000000, NULL);
		}
		if (n != 4 || memcmp(buf, "echo", 4))
			fail("fd 36: the child did not echo (%zd)", n);
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
}
