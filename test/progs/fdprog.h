/*
 * The skeleton of crpipe's fd test programs (issue 5):
 *
 *   PROG PROGRESS VERDICT DIR [ARG]
 *
 * main() closes what it inherited, detaches (own session, stdio on
 * /dev/null), changes to DIR and calls the program's setup(arg). Then it
 * ticks: every 10 ms it calls the program's tick() (when it defines one
 * with HAVE_TICK) and writes the tick count to PROGRESS, so the harness
 * can see it run and go on after a restore.
 *
 * On SIGTERM it calls check(), which reports problems with fail(); the
 * verdict "PASS <ticks>" or "FAIL <reason>" goes to VERDICT (atomically,
 * via rename), and the exit status is 0 or 1.
 *
 * A program that defines FDPROG_KEEP_STDIO keeps the stdio it was given
 * (and its session).
 *
 * setup() and check() must not use fds 3..9: the skeleton keeps its
 * progress file there. The program states its fds itself (dup2 to fixed
 * numbers), so a restore with the wrong fd numbers shows.
 */
#ifndef CRPIPE_FDPROG_H
#define CRPIPE_FDPROG_H

#include "common.h"

#include <signal.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define TICK_NS 10000000L

static volatile sig_atomic_t got_term;
static uint64_t ticks;
static char failure[512];
static const char *verdict_path;
static pid_t pid0;

static void setup(const char *arg);
static void check(void);
#ifdef HAVE_TICK
static void tick(void);
#endif

/* fail records the first failure (check() may go on looking). */
static void fail(const char *fmt, ...)
{
	if (failure[0])
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(failure, sizeof failure, fmt, ap);
	va_end(ap);
}

/* die: setup could not build its state (exit 2, before ready). */
static void die(const char *what)
{
	perror(what);
	exit(2);
}

/* must: a setup step that returns -1 on failure. */
static inline long must(long r, const char *what)
{
	if (r < 0)
		die(what);
	return r;
}

/* fd_pos reads the offset of pid's fd from its fdinfo (-1 if unreadable). */
static inline long fd_pos(pid_t pid, int fd)
{
	char path[64], buf[256];
	snprintf(path, sizeof path, "/proc/%d/fdinfo/%d", (int)pid, fd);
	int f = open(path, O_RDONLY);
	if (f < 0)
		return -1;
	int n = read(f, buf, sizeof buf - 1);
	close(f);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	long p = -1;
	sscanf(buf, "pos: %ld", &p);
	return p;
}

/* at: move fd to number n (dup2 and close the original). */
static inline int at(int fd, int n)
{
	if (fd < 0)
		die("at: bad fd");
	if (fd == n)
		return n;
	must(dup2(fd, n), "dup2");
	close(fd);
	return n;
}

static void on_term(int sig)
{
	(void)sig;
	got_term = 1;
}

static void write_verdict(void)
{
	char tmp[4096], buf[600];
	snprintf(tmp, sizeof tmp, "%s.tmp", verdict_path);
	int n;
	if (failure[0])
		n = snprintf(buf, sizeof buf, "FAIL %s\n", failure);
	else
		n = snprintf(buf, sizeof buf, "PASS %llu\n", (unsigned long long)ticks);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, buf, n) != n || close(fd) != 0 || rename(tmp, verdict_path) != 0)
		exit(3);
}

/* A check that blocks would leave no verdict: give up after 5 s. */
static void on_alarm(int sig)
{
	(void)sig;
	failure[0] = 0;
	fail("check() did not finish within 5 s (a read or write blocked)");
	write_verdict();
	_exit(1);
}

int main(int argc, char **argv)
{
	close_inherited();
	if (argc < 4 || argc > 5) {
		fprintf(stderr, "usage: %s PROGRESS VERDICT DIR [ARG]\n", argv[0]);
		return 2;
	}
	verdict_path = argv[2];
	/* Fixed numbers 3 and 4 for the skeleton's own files. */
	int prog = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (prog < 0 || (prog != 3 && dup3(prog, 3, O_CLOEXEC) < 0))
		die(argv[1]);
	if (prog != 3)
		close(prog);
	if (chdir(argv[3]))
		die(argv[3]);
#ifndef FDPROG_KEEP_STDIO
	detach();
#endif
	pid0 = getpid();
	struct sigaction sa = { .sa_handler = on_term };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	setup(argc == 5 ? argv[4] : NULL);
	while (!got_term) {
#ifdef HAVE_TICK
		tick();
#endif
		ticks++;
		char b[32];
		int n = snprintf(b, sizeof b, "%llu\n", (unsigned long long)ticks);
		if (pwrite(3, b, n, 0) != n)
			fail("write progress: %s", strerror(errno));
		sleep_ns(TICK_NS, &got_term);
	}
	if (getpid() != pid0)
		fail("pid %d, started as %d", getpid(), pid0);
	signal(SIGALRM, on_alarm);
	alarm(5);
	check();
	alarm(0);
	write_verdict();
	return failure[0] ? 1 : 0;
}

#endif
