/*
 * Helpers for crpipe's task-state test programs (sigstate, timers,
 * procstate, creds, seccomp-*): each sets up one kind of state, ticks, and
 * on SIGTERM checks that the state survived and writes its verdict.
 *
 *   PROG PROGRESS VERDICT [args...]
 *
 * PROGRESS holds the tick count (one tick per 10 ms, pwrite at offset 0);
 * VERDICT gets "PASS <ticks>" or "FAIL <reason>". Both are opened at start,
 * so a program that gives up its privileges can still write them.
 */
#ifndef CRPIPE_TEST_STATE_H
#define CRPIPE_TEST_STATE_H

#include "common.h"

#include <signal.h>
#include <stdarg.h>

#define TICK_NS 10000000L

static volatile sig_atomic_t got_term;
static int progress_fd = -1, verdict_fd = -1;
static uint64_t ticks;

static void on_term(int sig)
{
	(void)sig;
	got_term = 1;
}

static inline void die(const char *what)
{
	fprintf(stderr, "%s: %s\n", what, strerror(errno));
	exit(2);
}

/* state_init opens PROGRESS and VERDICT, catches SIGTERM and detaches. */
static void state_init(int argc, char **argv, int min_args, const char *usage)
{
	close_inherited();
	if (argc < min_args) {
		fprintf(stderr, "usage: %s\n", usage);
		exit(2);
	}
	progress_fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	verdict_fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (progress_fd < 0 || verdict_fd < 0)
		die("open");
	struct sigaction sa = { .sa_handler = on_term };
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0)
		die("sigaction SIGTERM");
	detach();
}

/* tick counts one tick and publishes it. */
static inline void tick(void)
{
	char line[32];
	ticks++;
	snprintf(line, sizeof line, "%20llu\n", (unsigned long long)ticks);
	if (pwrite(progress_fd, line, 21, 0) != 21)
		die("pwrite progress");
}

/* verdict writes the verdict once, with a single write, and returns the
 * exit status. */
static inline int verdict(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline int verdict(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof msg - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if (n > (int)sizeof msg - 2)
		n = sizeof msg - 2;
	msg[n++] = '\n';
	if (write(verdict_fd, msg, n) != n)
		die("write verdict");
	return strncmp(msg, "PASS", 4) == 0 ? 0 : 1;
}

/* mono_ns is CLOCK_MONOTONIC in nanoseconds. */
static inline int64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* vma_has_flag says whether smaps lists flag (e.g. "lo") in the VmFlags of
 * the VMA that starts at p: 1 or 0, -1 when smaps cannot be read. */
static inline int vma_has_flag(char *p, const char *flag)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	if (!f)
		return -1;
	char line[512];
	int in = 0, found = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, ':') > strchr(line, ' ')) {
			in = lo == (unsigned long)p;
			continue;
		}
		if (in && !strncmp(line, "VmFlags:", 8)) {
			char want[8];
			snprintf(want, sizeof want, " %s", flag);
			for (char *s = line + 8; (s = strstr(s, want)); s += 3)
				if (s[3] == ' ' || s[3] == '\n')
					found = 1;
			break;
		}
	}
	fclose(f);
	return found;
}

/* state_run checks the state just set up (exit 2 when it is wrong: the
 * test fails at start), ticks until SIGTERM, checks it again and writes the
 * verdict. check returns NULL, or why the state is wrong (in why). */
static inline int state_run(const char *name, const char *(*check)(char *why, size_t n))
{
	char why[512];
	if (check(why, sizeof why)) {
		fprintf(stderr, "%s: setup: %s\n", name, why);
		return 2;
	}
	while (!got_term) {
		tick();
		sleep_ns(TICK_NS, (volatile int *)&got_term);
	}
	if (check(why, sizeof why))
		return verdict("FAIL %s", why);
	return verdict("PASS %llu", (unsigned long long)ticks);
}

#endif
