// fdtest opens fds of the kinds cr-files handles, reports them on fd 3
// ("name fd" lines, then "ready"), closes fd 3 and waits to be killed.
//
//   fdtest DIR [pipe|socket|packet|deleted|eventfd|mqueue|pidfd|userfaultfd|tty]...   extras
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/filter.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static FILE *out;

static void die(const char *what) { perror(what); exit(1); }

static int report(const char *name, int fd) {
	if (fd < 0) die(name);
	fprintf(out, "%s %d\n", name, fd);
	return fd;
}

/* sendfd queues a one-byte message carrying fd (-1: none) on sock. */
static void sendfd(int sock, int fd) {
	char c = 'x';
	struct iovec iov = { &c, 1 };
	union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int))]; } u;
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	if (fd < 0) {
		m.msg_control = NULL;
		m.msg_controllen = 0;
	}
	if (sendmsg(sock, &m, 0) != 1) die("sendmsg");
}

static int path_open(const char *dir, const char *name, int flags) {
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	return open(path, flags, 0600);
}

int main(int argc, char **argv) {
	if (argc < 2) {
		fprintf(stderr, "usage: fdtest DIR [pipe|socket|packet|deleted|eventfd|userfaultfd|tty]...\n");
		return 2;
	}
	const char *dir = argv[1];
	// Whatever the test runner leaked to us is not ours to report.
	if (close_range(4, ~0U, 0)) die("close_range");
	out = fdopen(3, "w");
	if (!out) die("fdopen 3");
	umask(027);
	if (chdir(dir)) die("chdir");

	int rw = report("rw", path_open(dir, "rw", O_RDWR | O_CREAT));
	if (write(rw, "0123456789", 10) != 10 || lseek(rw, 3, SEEK_SET) != 3) die("rw");
	int app = report("append", path_open(dir, "append", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC));
	if (write(app, "abc", 3) != 3) die("append");
	report("ro", path_open(dir, "rw", O_RDONLY | O_CLOEXEC));
	report("null", open("/dev/null", O_RDWR));
	report("zero", open("/dev/zero", O_RDONLY));
	report("urandom", open("/dev/urandom", O_RDONLY | O_NONBLOCK));
	report("full", open("/dev/full", O_WRONLY));
	report("dir", open(dir, O_RDONLY | O_DIRECTORY));
	report("high", dup2(rw, 100));

	for (int i = 2; i < argc; i++) {
		const char *x = argv[i];
		if (!strcmp(x, "pipe")) {
			int p[2];
			if (pipe(p)) die("pipe");
			report("pipe", p[0]);
		} else if (!strcmp(x, "socket")) {
			report("socket", socket(AF_UNIX, SOCK_STREAM, 0));
		} else if (!strcmp(x, "deleted")) {
			int fd = report("deleted", path_open(dir, "gone", O_RDWR | O_CREAT));
			char path[4096];
			snprintf(path, sizeof path, "%s/gone", dir);
			if (write(fd, "ghost!", 6) != 6 || unlink(path)) die("unlink");
		} else if (!strcmp(x, "linked")) {
			// Deleted, but still linked under another name.
			report("linked", path_open(dir, "first", O_RDWR | O_CREAT));
			char a[4096], b[4096];
			snprintf(a, sizeof a, "%s/first", dir);
			snprintf(b, sizeof b, "%s/second", dir);
			if (link(a, b) || unlink(a)) die("link");
		} else if (!strcmp(x, "deldir")) {
			// A deleted directory: not a file whose contents can be kept.
			char path[4096];
			snprintf(path, sizeof path, "%s/subdir", dir);
			if (mkdir(path, 0700)) die("mkdir");
			report("deldir", open(path, O_RDONLY | O_DIRECTORY));
			if (rmdir(path)) die("rmdir");
		} else if (!strcmp(x, "packet")) {
			report("packet", socket(AF_PACKET, SOCK_RAW, 0));
		} else if (!strcmp(x, "mqueue")) {
			/* Unlinked at once: nothing is left behind. */
			char name[64];
			snprintf(name, sizeof name, "/crpipe-fdtest-%d", getpid());
			int q = syscall(SYS_mq_open, name + 1, O_RDWR | O_CREAT | O_EXCL, 0600, NULL);
			if (q < 0 || syscall(SYS_mq_unlink, name + 1)) die("mq_open");
			report("mqueue", q);
		} else if (!strcmp(x, "pidfd")) {
			report("pidfd", syscall(SYS_pidfd_open, getppid(), 0)); /* outside the dump */
		} else if (!strcmp(x, "userfaultfd")) {
			report("userfaultfd", syscall(SYS_userfaultfd, O_CLOEXEC));
		} else if (!strcmp(x, "scmrights")) {
			/* Files in flight cr-files dumps: a pipe end, an eventfd, the
			 * sending socket itself. */
			int sv[2], p[2];
			if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) || pipe(p)) die("socketpair");
			sendfd(sv[0], p[0]);
			sendfd(sv[0], eventfd(3, 0));
			sendfd(sv[0], sv[0]);
			close(p[0]);
			report("scmrights", sv[1]);
		} else if (!strcmp(x, "scmepoll") || !strcmp(x, "scminotify") || !strcmp(x, "scmflock")) {
			/* In flight and refused: an epoll; an inotify with an event
			 * queued; a file with a flock lock. */
			int sv[2];
			if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv)) die("socketpair");
			int f = x[3] == 'e' ? epoll_create1(0) : x[3] == 'i' ? inotify_init1(0) : path_open(dir, "locked", O_RDWR | O_CREAT);
			if (x[3] == 'i') {
				if (inotify_add_watch(f, dir, IN_CREATE) < 0) die("inotify_add_watch");
				close(path_open(dir, "event", O_WRONLY | O_CREAT));
			}
			if (x[3] == 'f' && flock(f, LOCK_EX)) die("flock");
			sendfd(sv[0], f);
			close(f);
			report(x, sv[1]);
		} else if (!strcmp(x, "scmcreds")) {
			/* A message with the credentials of a process that has exited. */
			int sv[2], one = 1;
			if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv)) die("socketpair");
			if (setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one)) die("SO_PASSCRED");
			pid_t c = fork();
			if (c == 0) {
				sendfd(sv[0], -1);
				_exit(0);
			}
			if (c < 0 || waitpid(c, NULL, 0) != c) die("fork");
			report("scmcreds", sv[1]);
		} else if (!strcmp(x, "inotifyq")) {
			int in = report("inotifyq", inotify_init1(0));
			if (inotify_add_watch(in, dir, IN_CREATE) < 0) die("inotify_add_watch");
			close(path_open(dir, "event", O_WRONLY | O_CREAT));
		} else if (!strcmp(x, "epollstale")) {
			int ep = report("epollstale", epoll_create1(0));
			int e = eventfd(0, 0);
			struct epoll_event ev = { .events = EPOLLIN };
			if (epoll_ctl(ep, EPOLL_CTL_ADD, e, &ev)) die("epoll_ctl");
			if (dup2(e, 200) < 0) die("dup2");
			close(e);
		} else if (!strcmp(x, "maplock") || !strcmp(x, "mapofd")) {
			/* A lock held through a shared mapping alone: its fd closed. */
			int fd = path_open(dir, x, O_RDWR | O_CREAT);
			struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100 };
			if (fd < 0 || ftruncate(fd, 4096)) die(x);
			if (!strcmp(x, "maplock") ? flock(fd, LOCK_EX) : fcntl(fd, F_OFD_SETLK, &fl)) die("lock");
			void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
			if (m == MAP_FAILED) die("mmap");
			fprintf(out, "%s %lu\n", x, (unsigned long)m);
			close(fd);
		} else if (!strcmp(x, "async")) {
			int p[2];
			if (pipe(p)) die("pipe");
			/* Signals for process 1, which is not in the dump. */
			if (fcntl(report("async", p[0]), F_SETFL, O_ASYNC) || fcntl(p[0], F_SETOWN, 1)) die("O_ASYNC");
		} else if (!strcmp(x, "memfdmap")) {
			int fd = report("memfdmap", memfd_create("mapped", 0));
			if (ftruncate(fd, 4096) || mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED) die("mmap");
		} else if (!strcmp(x, "unixfilter")) {
			/* A socket filter on a unix socket: not restored, so refused. */
			int sv[2];
			struct sock_filter f[] = { BPF_STMT(BPF_RET | BPF_K, 0xffff) };
			struct sock_fprog prog = { .len = 1, .filter = f };
			if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) || setsockopt(sv[0], SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog)) die("filter");
			report("unixfilter", sv[0]);
		} else if (!strcmp(x, "secretfd")) {
			/* memfd_secret(2): no other process can read its memory. */
			report("secretfd", syscall(447 /* SYS_memfd_secret */, 0));
		} else if (!strcmp(x, "eventfd")) {
			report("eventfd", eventfd(0, 0));
		} else if (!strcmp(x, "console")) {
			report("console", open("/dev/console", O_RDWR | O_NOCTTY));
		} else if (!strcmp(x, "devttylost")) {
			// /dev/tty opened on a controlling terminal the process gave up.
			int m = posix_openpt(O_RDWR | O_NOCTTY);
			if (m < 0 || grantpt(m) || unlockpt(m) || (setsid() < 0 && getsid(0) != getpid())) die("pty");
			int s = open(ptsname(m), O_RDWR);
			if (s < 0) die("slave");
			report("devttylost", open("/dev/tty", O_RDWR));
			signal(SIGHUP, SIG_IGN); // a leader giving up its terminal hangs up its group
			if (ioctl(s, TIOCNOTTY)) die("TIOCNOTTY");
		} else if (!strcmp(x, "tty")) {
			report("tty", open("/dev/ptmx", O_RDWR | O_NOCTTY));
		} else {
			fprintf(stderr, "fdtest: unknown extra %s\n", x);
			return 2;
		}
	}
	fprintf(out, "ready\n");
	fclose(out);
	for (;;) pause();
}
