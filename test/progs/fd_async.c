/*
 * fd_async: signal-driven I/O (O_ASYNC) with its owner and signal.
 *
 *   fd_async PROGRESS VERDICT DIR
 *
 *   20  unix stream socket, O_ASYNC|O_NONBLOCK, owner this process
 *       (F_OWNER_PID), signal SIGRTMIN+2 (F_SETSIG)
 *   21  its peer
 *   22  pipe read end, O_ASYNC|O_NONBLOCK, owner this thread (F_OWNER_TID),
 *       the default signal (SIGIO)
 *   23  the pipe's write end
 *
 * check() looks at each owner and signal, then writes to 21 and 23 and
 * waits for both signals (the handler checks si_fd for the real-time one).
 */
#include "fdprog.h"

#include <sys/socket.h>
#include <sys/syscall.h>

static volatile sig_atomic_t rt_seen, io_seen, bad_fd;

static void on_rt(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)uc;
	if (si->si_fd != 20)
		bad_fd = si->si_fd;
	rt_seen++;
}

static void on_io(int sig)
{
	(void)sig;
	io_seen++;
}

static void async_fd(int fd, int type, pid_t who, int sig)
{
	struct f_owner_ex o = { .type = (enum __pid_type)type, .pid = who };
	must(fcntl(fd, F_SETSIG, sig), "F_SETSIG");
	must(fcntl(fd, F_SETOWN_EX, &o), "F_SETOWN_EX");
	must(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC | O_NONBLOCK), "F_SETFL");
}

static void setup(const char *arg)
{
	(void)arg;
	struct sigaction sa = { .sa_sigaction = on_rt, .sa_flags = SA_SIGINFO | SA_RESTART };
	sigemptyset(&sa.sa_mask);
	must(sigaction(SIGRTMIN + 2, &sa, NULL), "sigaction rt");
	struct sigaction si = { .sa_handler = on_io, .sa_flags = SA_RESTART };
	sigemptyset(&si.sa_mask);
	must(sigaction(SIGIO, &si, NULL), "sigaction SIGIO");
	int sv[2], p[2];
	must(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), "socketpair");
	at(sv[0], 20);
	at(sv[1], 21);
	must(pipe(p), "pipe");
	at(p[0], 22);
	at(p[1], 23);
	async_fd(20, F_OWNER_PID, getpid(), SIGRTMIN + 2);
	async_fd(22, F_OWNER_TID, (pid_t)syscall(SYS_gettid), 0);
}

static void expect_owner(int fd, int type, pid_t who, int sig)
{
	struct f_owner_ex o;
	if (fcntl(fd, F_GETOWN_EX, &o) != 0 || (int)o.type != type || o.pid != who)
		fail("fd %d: owner type %d pid %d, want type %d pid %d", fd, o.type, o.pid, type, (int)who);
	if (fcntl(fd, F_GETSIG) != sig)
		fail("fd %d: signal %d, want %d", fd, fcntl(fd, F_GETSIG), sig);
	if (!(fcntl(fd, F_GETFL) & O_ASYNC))
		fail("fd %d: O_ASYNC is gone", fd);
}

static void check(void)
{
	expect_owner(20, F_OWNER_PID, getpid(), SIGRTMIN + 2);
	expect_owner(22, F_OWNER_TID, (pid_t)syscall(SYS_gettid), 0);
	int rt = rt_seen, io = io_seen;
	char c = 'x', buf[16];
	if (write(21, &c, 1) != 1 || write(23, &c, 1) != 1)
		fail("write: %s", strerror(errno));
	for (int i = 0; i < 1000 && (rt_seen == rt || io_seen == io); i++)
		sleep_ns(1000000, NULL);
	if (rt_seen == rt || io_seen == io)
		fail("no signal for new input: SIGRTMIN+2 %s, SIGIO %s", rt_seen == rt ? "missing" : "seen", io_seen == io ? "missing" : "seen");
	if (bad_fd)
		fail("SIGRTMIN+2 named fd %d, not 20", (int)bad_fd);
	while (read(20, buf, sizeof buf) > 0 || read(22, buf, sizeof buf) > 0)
		;
}
