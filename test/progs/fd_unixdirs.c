/*
 * fd_unixdirs: unix socket names that mean something only from where they
 * were bound: relative to the working directory, or absolute inside a
 * chroot (a mail server's master and its jailed daemons do both).
 *
 *   fd_unixdirs PROGRESS VERDICT DIR EXTDIR
 *
 * EXTDIR holds run/ and jail/, and two datagram servers that the harness
 * bound outside the dump: run/ext.dgram and jail/ext.dgram. The program
 * changes to EXTDIR, then:
 *   20       stream listener bound to "run/rel.sock" (relative)
 *   21       datagram socket bound to "run/rel.dgram" (relative)
 *   22       datagram socket connected to "run/ext.dgram" (relative, outside)
 *   23 - 24  23 connected to 20, 24 accepted from it: "to 24" queued at
 *            24, "to 23" at 23
 * and forks a child that chroots into jail/ and there:
 *   20       stream listener bound to "/jail.sock" (absolute in the jail)
 *   21       datagram socket connected to "/ext.dgram" (jail/ext.dgram)
 * The child answers each connection to 20 with "jail", then sends "from
 * jail" on 21.
 *
 * On SIGTERM: 20 and 21 still have their names (getsockname) and take a
 * connection and a datagram sent to those names from EXTDIR; 23 and 24
 * read what was queued; 22 sends "from outside parent"; a connection to
 * jail/jail.sock reads "jail" (the child's listener is where it was).
 * The harness then reads both datagrams at its servers.
 *
 * With EXTDIR,moved the parent changes to / once set up (and back for its
 * check): no process is then where "run/..." names the socket files, and
 * the dump must be refused.
 */
#include "fdprog.h"

#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

static pid_t child;
static char extdir[4096];
static int moved;

static struct sockaddr_un addr(const char *name, socklen_t *len)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, name);
	*len = offsetof(struct sockaddr_un, sun_path) + strlen(name) + 1;
	return a;
}

static int sock_at(int type, const char *bind_to, const char *connect_to)
{
	int fd = must(socket(AF_UNIX, type, 0), "socket");
	socklen_t len;
	if (bind_to) {
		struct sockaddr_un a = addr(bind_to, &len);
		must(bind(fd, (struct sockaddr *)&a, len), bind_to);
	}
	if (connect_to) {
		struct sockaddr_un a = addr(connect_to, &len);
		must(connect(fd, (struct sockaddr *)&a, len), connect_to);
	}
	return fd;
}

/* dial: a connection made in check(), which reports a failure. */
static int dial(int type, const char *name)
{
	int fd = socket(AF_UNIX, type, 0);
	socklen_t len;
	struct sockaddr_un a = addr(name, &len);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, len)) {
		fail("connect to %s: %s", name, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

static void put(int fd, const char *s)
{
	if (send(fd, s, strlen(s), 0) != (ssize_t)strlen(s))
		fail("send %s: %s", s, strerror(errno));
}

static void expect(int fd, const char *want, const char *what)
{
	char buf[64] = { 0 };
	ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
	if (n != (ssize_t)strlen(want) || memcmp(buf, want, n))
		fail("%s: read %zd bytes \"%s\", want \"%s\" (%s)", what, n, n > 0 ? buf : "", want, n < 0 ? strerror(errno) : "");
}

static void expect_name(int fd, const char *want, const char *what)
{
	struct sockaddr_un a;
	socklen_t len = sizeof a;
	if (getsockname(fd, (struct sockaddr *)&a, &len) || strcmp(a.sun_path, want))
		fail("%s: getsockname gives \"%s\", want \"%s\"", what, a.sun_path, want);
}

static void jailed(void)
{
	if (chroot("jail") || chdir("/"))
		_exit(2);
	at(sock_at(SOCK_STREAM, "/jail.sock", NULL), 20);
	at(sock_at(SOCK_DGRAM, NULL, "/ext.dgram"), 21);
	if (listen(20, 4))
		_exit(2);
	for (;;) {
		int c = accept(20, NULL, NULL);
		if (c < 0)
			continue;
		send(21, "from jail", 9, 0);
		send(c, "jail", 4, 0);
		close(c);
	}
}

static void setup(const char *arg)
{
	if (!arg || strlen(arg) >= sizeof extdir)
		die("EXTDIR");
	strcpy(extdir, arg);
	char *comma = strchr(extdir, ',');
	if (comma) {
		moved = !strcmp(comma, ",moved");
		*comma = 0;
	}
	if (chdir(extdir))
		die(extdir);
	at(sock_at(SOCK_STREAM, "run/rel.sock", NULL), 20);
	must(listen(20, 4), "listen");
	at(sock_at(SOCK_DGRAM, "run/rel.dgram", NULL), 21);
	at(sock_at(SOCK_DGRAM, NULL, "run/ext.dgram"), 22);
	at(sock_at(SOCK_STREAM, NULL, "run/rel.sock"), 23);
	at(must(accept(20, NULL, NULL), "accept"), 24);
	put(23, "to 24");
	put(24, "to 23");
	child = must(fork(), "fork");
	if (child == 0)
		jailed();
	if (moved)
		must(chdir("/"), "chdir /");
}

static void check(void)
{
	if (moved && chdir(extdir))
		fail("chdir %s: %s", extdir, strerror(errno));
	expect_name(20, "run/rel.sock", "fd 20");
	expect_name(21, "run/rel.dgram", "fd 21");
	expect_name(24, "run/rel.sock", "fd 24 (accepted)");
	expect(24, "to 24", "fd 24");
	expect(23, "to 23", "fd 23");

	int c = dial(SOCK_STREAM, "run/rel.sock");
	int a = c < 0 ? -1 : accept(20, NULL, NULL);
	if (a < 0)
		fail("accept on fd 20: %s", strerror(errno));
	put(c, "new");
	expect(a, "new", "a new connection to run/rel.sock");
	close(a);
	close(c);

	int d = dial(SOCK_DGRAM, "run/rel.dgram");
	put(d, "dgram");
	expect(21, "dgram", "a datagram to run/rel.dgram");
	close(d);

	put(22, "from outside parent");

	int j = dial(SOCK_STREAM, "jail/jail.sock");
	expect(j, "jail", "a connection to jail/jail.sock");
	close(j);

	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
}
