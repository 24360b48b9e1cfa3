/*
 * fd_epoll: epoll watches with their events and data.
 *
 *   fd_epoll PROGRESS VERDICT DIR
 *
 *   20  epoll: watches 21 (EPOLLIN, data 0x1111), 23 (EPOLLIN|EPOLLET, data
 *       0x2222222222) and 24 (EPOLLOUT, data 0x33)
 *   21  pipe read end (22: its write end), "x" unread: ready
 *   23  eventfd, counter 0
 *   24  eventfd: always writable
 *   25  an epoll watching epoll 20 (nested), data 0x44
 * With "fork": a child adds its own eventfd (its fd 40, counter 1) to
 * epoll 20 with data 0x55, which the parent's epoll_wait then reports too:
 * the watch is restored from inside the child.
 * Check: epoll_wait reports 21 and 24 with their data; after writing 23,
 * it reports 23 once; 25 reports 20.
 */
#include "fdprog.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>

static void add(int ep, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };
	must(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev), "epoll_ctl");
}

static pid_t child;

static void setup(const char *arg)
{
	int p[2];
	must(pipe(p), "pipe");
	at(p[0], 21);
	at(p[1], 22);
	if (write(22, "x", 1) != 1)
		die("write");
	at(must(eventfd(0, EFD_NONBLOCK), "eventfd"), 23);
	at(must(eventfd(0, 0), "eventfd"), 24);
	at(must(epoll_create1(0), "epoll_create1"), 20);
	must(fcntl(20, F_SETFD, FD_CLOEXEC), "cloexec 20");
	add(20, 21, EPOLLIN, 0x1111);
	add(20, 23, EPOLLIN | EPOLLET, 0x2222222222ULL);
	add(20, 24, EPOLLOUT, 0x33);
	at(must(epoll_create1(0), "epoll_create1"), 25);
	add(25, 20, EPOLLIN, 0x44);
	if (arg && !strcmp(arg, "fork")) {
		int sync[2];
		must(pipe(sync), "pipe");
		child = must(fork(), "fork");
		if (child == 0) {
			close(sync[0]);
			at(eventfd(1, 0), 40);
			add(20, 40, EPOLLIN, 0x55);
			close(sync[1]);
			for (;;)
				pause();
		}
		close(sync[1]);
		char c;
		if (read(sync[0], &c, 1) != 0)
			die("sync");
		close(sync[0]);
	}
}

static void check(void)
{
	if (!(fcntl(20, F_GETFD) & FD_CLOEXEC) || (fcntl(25, F_GETFD) & FD_CLOEXEC))
		fail("close-on-exec of the epoll fds");
	struct epoll_event evs[8];
	int n = epoll_wait(25, evs, 8, 0);
	if (n != 1 || evs[0].data.u64 != 0x44)
		fail("nested epoll 25: %d events, data %#llx", n, n > 0 ? (unsigned long long)evs[0].data.u64 : 0ULL);
	n = epoll_wait(20, evs, 8, 0);
	int got21 = 0, got24 = 0, got55 = 0;
	for (int i = 0; i < n; i++) {
		if (evs[i].data.u64 == 0x1111 && (evs[i].events & EPOLLIN))
			got21 = 1;
		else if (evs[i].data.u64 == 0x55 && child)
			got55 = 1;
		else if (evs[i].data.u64 == 0x33 && (evs[i].events & EPOLLOUT))
			got24 = 1;
		else
			fail("unexpected event %#x data %#llx", evs[i].events, (unsigned long long)evs[i].data.u64);
	}
	if (!got21 || !got24)
		fail("epoll 20: %d events; pipe 21 %s, eventfd 24 %s", n, got21 ? "ready" : "missing", got24 ? "ready" : "missing");
	if (child && !got55)
		fail("epoll 20 does not report the child's eventfd (watch added by the child)");
	uint64_t one = 1;
	if (write(23, &one, 8) != 8)
		fail("write 23");
	n = epoll_wait(20, evs, 8, 0);
	int got23 = 0;
	for (int i = 0; i < n; i++)
		if (evs[i].data.u64 == 0x2222222222ULL && (evs[i].events & EPOLLIN))
			got23 = 1;
	if (!got23)
		fail("epoll 20 did not report eventfd 23 (edge-triggered) after a write");
	/* Edge-triggered: no second report without a new edge. */
	n = epoll_wait(20, evs, 8, 0);
	for (int i = 0; i < n; i++)
		if (evs[i].data.u64 == 0x2222222222ULL)
			fail("edge-triggered watch of 23 reported twice");
	if (child) {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
}
