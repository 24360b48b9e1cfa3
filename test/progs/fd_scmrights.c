/*
 * fd_scmrights: files in flight (SCM_RIGHTS) and credentials
 * (SCM_CREDENTIALS) in queued unix messages.
 *
 *   fd_scmrights PROGRESS VERDICT DIR [fork]
 *
 *   22 - 23  datagram socketpair, SO_PASSCRED at 22; queued at 22: "self"
 *            (own credentials), "forged" (own pid, uid 1234, gid 5678),
 *            "eventfd" with an eventfd nobody holds (count 7); with "fork",
 *            then "child" from a child that stays, holding no fd (its pid)
 *   20 - 21  stream socketpair; queued at 20, sent by 21: "plain", then
 *            "shared" with fd 30's description, "pipe" with the read end
 *            of a pipe nobody holds any more ("pipe data" in it, writer
 *            closed), "files" with a memfd ("memfd contents"), DIR/other
 *            (offset 4) and DIR/ghost, unlinked ("ghost contents"), all
 *            closed, then "tail" with 21 itself
 *   24 - 25  seqpacket socketpair; queued at 24: "socket" with the end of a
 *            stream pair whose other end is 26 ("to flight" queued at the
 *            end in flight)
 *   27 - 28  stream socketpair, SO_PASSCRED at 27; queued at 27: "one",
 *            then "two" with an eventfd (count 2), one writer: a read
 *            takes both; "three" with forged credentials, "four" with an
 *            eventfd (count 4)
 *   30       DIR/shared, offset 5
 *   31 - 32  seqpacket socketpair; queued at 31: "sp1", an empty message,
 *            "sp3"; 32 closed
 *   33 - 34  seqpacket socketpair; queued at 33: "sq1", "sq2"; 34 shut
 *            down for writing
 *   35 - 36  datagram socketpair; queued at 35: an empty datagram (peeked
 *            at by the program), "after", an empty one, "end"
 *
 * The check receives everything and checks data, kinds, contents, that the
 * file shared with fd 30 moves its offset, and the credentials.
 */
#include "fdprog.h"

#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>

static pid_t child;

/* sendfds sends msg on sock with files fds[0..n) and, when cred, those
 * credentials. */
static void sendfds(int sock, const char *msg, const int *fds, int n, const struct ucred *cred)
{
	char ctl[CMSG_SPACE(4 * sizeof(int)) + CMSG_SPACE(sizeof(struct ucred))];
	memset(ctl, 0, sizeof ctl);
	struct iovec iov = { .iov_base = (void *)msg, .iov_len = strlen(msg) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = 0 };
	struct cmsghdr *c = (struct cmsghdr *)ctl;
	if (n > 0) {
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(n * sizeof(int));
		memcpy(CMSG_DATA(c), fds, n * sizeof(int));
		mh.msg_controllen += CMSG_SPACE(n * sizeof(int));
		c = (struct cmsghdr *)(ctl + mh.msg_controllen);
	}
	if (cred) {
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_CREDENTIALS;
		c->cmsg_len = CMSG_LEN(sizeof *cred);
		memcpy(CMSG_DATA(c), cred, sizeof *cred);
		mh.msg_controllen += CMSG_SPACE(sizeof *cred);
	}
	if (mh.msg_controllen == 0)
		mh.msg_control = NULL;
	if (sendmsg(sock, &mh, MSG_DONTWAIT) != (ssize_t)strlen(msg))
		die("sendmsg");
}

static void setup(const char *arg)
{
	int sv[2], one = 1;

	must(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv), "socketpair");
	at(sv[0], 22);
	at(sv[1], 23);
	must(setsockopt(22, SOL_SOCKET, SO_PASSCRED, &one, sizeof one), "SO_PASSCRED");
	sendfds(23, "self", NULL, 0, NULL);
	struct ucred forged = { .pid = getpid(), .uid = 1234, .gid = 5678 };
	sendfds(23, "forged", NULL, 0, &forged);
	int efd = must(eventfd(7, 0), "eventfd");
	sendfds(23, "eventfd", &efd, 1, NULL);
	close(efd);
	if (arg && !strcmp(arg, "fork")) {
		int sync[2];
		must(pipe(sync), "pipe");
		child = must(fork(), "fork");
		if (child == 0) {
			sendfds(23, "child", NULL, 0, NULL);
			if (write(sync[1], "x", 1) != 1)
				_exit(1);
			close_range(0, ~0U, 0);
			for (;;)
				pause();
		}
		char c;
		if (read(sync[0], &c, 1) != 1)
			die("the child did not send");
		close(sync[0]);
		close(sync[1]);
	}

	int shared = at(must(open("shared", O_RDWR | O_CREAT | O_TRUNC, 0644), "shared"), 30);
	if (write(shared, "0123456789abcdef", 16) != 16 || lseek(shared, 5, SEEK_SET) != 5)
		die("shared");
	int other = must(open("other", O_RDWR | O_CREAT | O_TRUNC, 0644), "other");
	if (write(other, "the other file", 14) != 14 || lseek(other, 4, SEEK_SET) != 4)
		die("other");
	int ghost = must(open("ghost", O_RDWR | O_CREAT | O_TRUNC, 0600), "ghost");
	if (write(ghost, "ghost contents", 14) != 14 || unlink("ghost"))
		die("ghost");
	int p[2];
	must(pipe(p), "pipe");
	if (write(p[1], "pipe data", 9) != 9)
		die("pipe write");
	close(p[1]);
	int mfd = must(memfd_create("scm-memfd", MFD_CLOEXEC), "memfd_create");
	if (write(mfd, "memfd contents", 14) != 14)
		die("memfd write");

	must(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), "socketpair");
	at(sv[0], 20);
	at(sv[1], 21);
	sendfds(21, "plain", NULL, 0, NULL);
	sendfds(21, "shared", &shared, 1, NULL);
	sendfds(21, "pipe", &p[0], 1, NULL);
	int files[3] = { mfd, other, ghost };
	sendfds(21, "files", files, 3, NULL);
	int self = 21;
	sendfds(21, "tail", &self, 1, NULL);
	close(p[0]);
	close(mfd);
	close(other);
	close(ghost);

	must(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), "socketpair");
	at(sv[0], 27);
	at(sv[1], 28);
	must(setsockopt(27, SOL_SOCKET, SO_PASSCRED, &one, sizeof one), "SO_PASSCRED");
	sendfds(28, "one", NULL, 0, NULL);
	efd = must(eventfd(2, 0), "eventfd");
	sendfds(28, "two", &efd, 1, NULL);
	close(efd);
	sendfds(28, "three", NULL, 0, &forged);
	efd = must(eventfd(4, 0), "eventfd");
	sendfds(28, "four", &efd, 1, NULL);
	close(efd);

	must(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), "socketpair");
	at(sv[0], 31);
	if (send(sv[1], "sp1", 3, 0) != 3 || send(sv[1], "", 0, 0) != 0 || send(sv[1], "sp3", 3, 0) != 3)
		die("send seqpacket");
	close(sv[1]);
	must(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), "socketpair");
	at(sv[0], 33);
	at(sv[1], 34);
	if (send(34, "sq1", 3, 0) != 3 || send(34, "sq2", 3, 0) != 3)
		die("send seqpacket");
	must(shutdown(34, SHUT_WR), "shutdown");
	must(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv), "socketpair");
	at(sv[0], 35);
	at(sv[1], 36);
	if (send(36, "", 0, 0) != 0 || send(36, "after", 5, 0) != 5 || send(36, "", 0, 0) != 0 || send(36, "end", 3, 0) != 3)
		die("send datagrams");
	char c;
	if (recv(35, &c, 1, MSG_PEEK | MSG_DONTWAIT) != 0)
		die("peek at the empty datagram");

	must(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), "socketpair");
	at(sv[0], 24);
	at(sv[1], 25);
	int pair[2];
	must(socketpair(AF_UNIX, SOCK_STREAM, 0, pair), "socketpair");
	at(pair[0], 26);
	if (send(26, "to flight", 9, MSG_DONTWAIT) != 9)
		die("send");
	sendfds(25, "socket", &pair[1], 1, NULL);
	close(pair[1]);
}

/* receive reads one message from sock into buf (NUL-terminated), its files
 * into fds (up to 4; -1 after the last) and its credentials. */
static ssize_t receive(int sock, char *buf, size_t len, int *fds, struct ucred *cred)
{
	char ctl[CMSG_SPACE(4 * sizeof(int)) + CMSG_SPACE(sizeof(struct ucred))];
	struct iovec iov = { .iov_base = buf, .iov_len = len - 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl };
	for (int i = 0; i < 4; i++)
		fds[i] = -1;
	memset(cred, 0, sizeof *cred);
	ssize_t n = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	buf[n > 0 ? n : 0] = 0;
	if (n < 0)
		return n;
	if (mh.msg_flags & MSG_CTRUNC)
		fail("fd %d: control data truncated", sock);
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
			memcpy(fds, CMSG_DATA(c), c->cmsg_len - CMSG_LEN(0));
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS)
			memcpy(cred, CMSG_DATA(c), sizeof *cred);
	}
	return n;
}

static int nfds(const int *fds)
{
	int n = 0;
	while (n < 4 && fds[n] >= 0)
		n++;
	return n;
}

/* expect_msg receives one message and checks its data and file count. */
static int expect_msg(int sock, const char *want, int want_fds, int *fds, struct ucred *cred)
{
	char buf[256];
	ssize_t n = receive(sock, buf, sizeof buf, fds, cred);
	if (n < 0) {
		fail("fd %d: no message \"%s\": %s", sock, want, strerror(errno));
		return -1;
	}
	if (strcmp(buf, want)) {
		fail("fd %d: got \"%s\", want \"%s\"", sock, buf, want);
		return -1;
	}
	if (nfds(fds) != want_fds) {
		fail("fd %d: \"%s\" came with %d files, want %d", sock, want, nfds(fds), want_fds);
		return -1;
	}
	return 0;
}

static void expect_cred(const char *what, const struct ucred *c, pid_t pid, uid_t uid, gid_t gid)
{
	if (c->pid != pid || c->uid != uid || c->gid != gid)
		fail("\"%s\": credentials pid %d uid %u gid %u, want pid %d uid %u gid %u",
		     what, c->pid, c->uid, c->gid, pid, uid, gid);
}

static void expect_read(int fd, const char *what, const char *want)
{
	char buf[64];
	ssize_t n = read(fd, buf, sizeof buf);
	if (n != (ssize_t)strlen(want) || memcmp(buf, want, n))
		fail("%s: read %zd bytes \"%.*s\", want \"%s\"", what, n, n > 0 ? (int)n : 0, buf, want);
}

static void expect_count(const char *what, int efd, uint64_t want)
{
	uint64_t v = 0;
	if (read(efd, &v, 8) != 8 || v != want)
		fail("%s: eventfd count %llu, want %llu", what, (unsigned long long)v, (unsigned long long)want);
}

static const char *fmt_proc_fd(int fd)
{
	static char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	return path;
}

static void check(void)
{
	int fds[4];
	struct ucred cred;
	struct stat st, st30;

	if (!expect_msg(22, "self", 0, fds, &cred))
		expect_cred("self", &cred, getpid(), getuid(), getgid());
	if (!expect_msg(22, "forged", 0, fds, &cred))
		expect_cred("forged", &cred, getpid(), 1234, 5678);
	if (!expect_msg(22, "eventfd", 1, fds, &cred)) {
		expect_cred("eventfd", &cred, getpid(), getuid(), getgid());
		uint64_t v = 0;
		char link[64] = "";
		if (readlink(fmt_proc_fd(fds[0]), link, sizeof link - 1) < 0 || strcmp(link, "anon_inode:[eventfd]"))
			fail("\"eventfd\": the file is %s", link);
		else if (read(fds[0], &v, 8) != 8 || v != 7)
			fail("\"eventfd\": count %llu, want 7", (unsigned long long)v);
		close(fds[0]);
	}
	if (child && !expect_msg(22, "child", 0, fds, &cred))
		expect_cred("child", &cred, child, getuid(), getgid());
	char c;
	if (recv(22, &c, 1, MSG_DONTWAIT) != -1 || errno != EAGAIN)
		fail("fd 22: more messages than were queued");

	if (!expect_msg(20, "plainshared", 1, fds, &cred)) {
		fstat(30, &st30);
		if (fstat(fds[0], &st) || !S_ISREG(st.st_mode) || st.st_ino != st30.st_ino)
			fail("\"shared\": not the file of fd 30");
		else if (lseek(fds[0], 0, SEEK_CUR) != 5)
			fail("\"shared\": offset %lld, want 5", (long long)lseek(fds[0], 0, SEEK_CUR));
		else if (lseek(fds[0], 9, SEEK_SET) != 9 || lseek(30, 0, SEEK_CUR) != 9)
			fail("\"shared\": moving its offset to 9 left fd 30's at %lld: not one description", (long long)lseek(30, 0, SEEK_CUR));
		close(fds[0]);
	}
	if (!expect_msg(20, "pipe", 1, fds, &cred)) {
		if (fstat(fds[0], &st) || !S_ISFIFO(st.st_mode)) {
			fail("\"pipe\": not a pipe");
		} else {
			fcntl(fds[0], F_SETFL, O_NONBLOCK);
			expect_read(fds[0], "\"pipe\"", "pipe data");
			ssize_t n = read(fds[0], &c, 1);
			if (n != 0)
				fail("\"pipe\": no end of file after its data (%zd, %s): a writer is left", n, n < 0 ? strerror(errno) : "");
		}
		close(fds[0]);
	}
	if (!expect_msg(20, "files", 3, fds, &cred)) {
		char link[256] = "";
		if (readlink(fmt_proc_fd(fds[0]), link, sizeof link - 1) < 0 || strncmp(link, "/memfd:scm-memfd", 16))
			fail("\"files\": the first file is %s, not the memfd", link);
		char buf[32] = "";
		if (pread(fds[0], buf, sizeof buf, 0) != 14 || memcmp(buf, "memfd contents", 14))
			fail("\"files\": memfd holds \"%s\"", buf);
		if (fstat(fds[1], &st) || !S_ISREG(st.st_mode) || lseek(fds[1], 0, SEEK_CUR) != 4)
			fail("\"files\": the second file is not DIR/other at offset 4");
		else
			expect_read(fds[1], "\"files\": other", "other file");
		if (fstat(fds[2], &st) || !S_ISREG(st.st_mode) || st.st_nlink != 0)
			fail("\"files\": the third file is not an unlinked regular file");
		else if (pread(fds[2], buf, sizeof buf, 0) != 14 || memcmp(buf, "ghost contents", 14))
			fail("\"files\": the unlinked file holds \"%.14s\"", buf);
		close(fds[0]);
		close(fds[1]);
		close(fds[2]);
	}
	if (!expect_msg(20, "tail", 1, fds, &cred)) {
		struct stat st21;
		if (fstat(fds[0], &st) || fstat(21, &st21) || !S_ISSOCK(st.st_mode) || st.st_ino != st21.st_ino)
			fail("\"tail\": not the socket of fd 21");
		close(fds[0]);
	}
	if (recv(20, &c, 1, MSG_DONTWAIT) != -1 || errno != EAGAIN)
		fail("fd 20: more data than was queued");

	if (!expect_msg(24, "socket", 1, fds, &cred)) {
		int s = fds[0];
		int type = 0;
		socklen_t l = sizeof type;
		if (getsockopt(s, SOL_SOCKET, SO_TYPE, &type, &l) || type != SOCK_STREAM) {
			fail("\"socket\": not a stream socket (%d)", type);
		} else {
			char buf[32];
			ssize_t n = recv(s, buf, sizeof buf, MSG_DONTWAIT);
			if (n != 9 || memcmp(buf, "to flight", 9))
				fail("\"socket\": its queue holds %zd bytes, want \"to flight\"", n);
			if (send(s, "back", 4, MSG_DONTWAIT) != 4)
				fail("\"socket\": send: %s", strerror(errno));
			n = recv(26, buf, sizeof buf, MSG_DONTWAIT);
			if (n != 4 || memcmp(buf, "back", 4))
				fail("fd 26: got %zd bytes, not \"back\" from its peer in flight", n);
		}
		close(s);
	}

	/* One writer: a read takes "one" and "two" with its file; another
	 * writer's "three" is read alone. */
	if (!expect_msg(27, "onetwo", 1, fds, &cred)) {
		expect_cred("onetwo", &cred, getpid(), getuid(), getgid());
		expect_count("\"two\"", fds[0], 2);
		close(fds[0]);
	}
	if (!expect_msg(27, "three", 0, fds, &cred))
		expect_cred("three", &cred, getpid(), 1234, 5678);
	if (!expect_msg(27, "four", 1, fds, &cred)) {
		expect_cred("four", &cred, getpid(), getuid(), getgid());
		expect_count("\"four\"", fds[0], 4);
		close(fds[0]);
	}

	/* Seqpacket queues whose peer is gone or has shut down: the data,
	 * the empty message, then end of file. */
	expect_msg(31, "sp1", 0, fds, &cred);
	expect_msg(31, "", 0, fds, &cred);
	expect_msg(31, "sp3", 0, fds, &cred);
	expect_msg(31, "", 0, fds, &cred);
	expect_msg(33, "sq1", 0, fds, &cred);
	expect_msg(33, "sq2", 0, fds, &cred);
	expect_msg(33, "", 0, fds, &cred);
	if (send(34, "x", 1, MSG_DONTWAIT | MSG_NOSIGNAL) != -1 || errno != EPIPE)
		fail("fd 34: send after shutdown did not fail with EPIPE");

	/* Empty datagrams are messages. */
	expect_msg(35, "", 0, fds, &cred);
	expect_msg(35, "after", 0, fds, &cred);
	expect_msg(35, "", 0, fds, &cred);
	expect_msg(35, "end", 0, fds, &cred);
	if (recv(35, &c, 1, MSG_DONTWAIT) != -1 || errno != EAGAIN)
		fail("fd 35: more datagrams than were queued");

	int v = 0;
	socklen_t vl = sizeof v;
	if (getsockopt(22, SOL_SOCKET, SO_PASSCRED, &v, &vl) || !v)
		fail("fd 22: SO_PASSCRED is off");
	if (getsockopt(31, SOL_SOCKET, SO_PASSCRED, &v, &vl) || v)
		fail("fd 31: SO_PASSCRED is on (the dump turns it on while it peeks)");
	if (child) {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
}
