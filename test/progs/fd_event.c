/*
 * fd_event: eventfd, signalfd and timerfd state.
 *
 *   fd_event PROGRESS VERDICT DIR
 *
 *   20  eventfd, counter 0x100000005 (more than 32 bits), O_NONBLOCK
 *   21  eventfd, EFD_SEMAPHORE, counter 3, O_NONBLOCK
 *   22  signalfd for SIGUSR1 and SIGUSR2 (both blocked), O_NONBLOCK
 *   23  timerfd CLOCK_MONOTONIC, 100 s left, interval 7 s
 *   24  timerfd CLOCK_MONOTONIC, expired once (one unread tick), O_NONBLOCK
 *   25  timerfd CLOCK_MONOTONIC, TFD_TIMER_ABSTIME at start + 200 s
 */
#include "fdprog.h"

#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>

static void setup(const char *arg)
{
	(void)arg;
	at(must(eventfd(0, EFD_NONBLOCK), "eventfd"), 20);
	uint64_t v = 0x100000005ULL;
	if (write(20, &v, 8) != 8)
		die("eventfd write");
	at(must(eventfd(3, EFD_NONBLOCK | EFD_SEMAPHORE), "eventfd sem"), 21);

	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGUSR1);
	sigaddset(&m, SIGUSR2);
	sigprocmask(SIG_BLOCK, &m, NULL);
	at(must(signalfd(-1, &m, SFD_NONBLOCK), "signalfd"), 22);

	struct itimerspec it = { .it_value = { 100, 0 }, .it_interval = { 7, 0 } };
	at(must(timerfd_create(CLOCK_MONOTONIC, 0), "timerfd"), 23);
	must(timerfd_settime(23, 0, &it, NULL), "settime 23");

	at(must(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), "timerfd"), 24);
	struct itimerspec once = { .it_value = { 0, 1000000 } };
	must(timerfd_settime(24, 0, &once, NULL), "settime 24");
	sleep_ns(20000000, NULL);

	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	struct itimerspec abs = { .it_value = { now.tv_sec + 200, now.tv_nsec } };
	at(must(timerfd_create(CLOCK_MONOTONIC, 0), "timerfd"), 25);
	must(timerfd_settime(25, TFD_TIMER_ABSTIME, &abs, NULL), "settime 25");
}

/* fdinfo_has reports whether /proc/self/fdinfo/FD has the line want. */
static int fdinfo_has(int fd, const char *want)
{
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	int f = open(path, O_RDONLY);
	int n = f < 0 ? -1 : read(f, buf, sizeof buf - 1);
	if (f >= 0)
		close(f);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	return strstr(buf, want) != NULL;
}

static void check(void)
{
	uint64_t v = 0;
	if (read(20, &v, 8) != 8 || v != 0x100000005ULL)
		fail("eventfd 20 read %#llx, want 0x100000005", (unsigned long long)v);
	if (read(20, &v, 8) != -1 || errno != EAGAIN)
		fail("eventfd 20 is not empty and non-blocking after its read");
	for (int i = 0; i < 3; i++)
		if (read(21, &v, 8) != 8 || v != 1)
			fail("semaphore eventfd 21: read %d gave %llu", i, (unsigned long long)v);
	if (read(21, &v, 8) != -1 || errno != EAGAIN)
		fail("semaphore eventfd 21 holds more than 3");

	if (!fdinfo_has(22, "sigmask:\t0000000000000a00"))
		fail("signalfd 22 does not have the mask of SIGUSR1 and SIGUSR2");
	struct signalfd_siginfo si;
	if (read(22, &si, sizeof si) != -1 || errno != EAGAIN)
		fail("signalfd 22 is not non-blocking, or has a signal pending");
	raise(SIGUSR2);
	if (read(22, &si, sizeof si) != sizeof si || si.ssi_signo != SIGUSR2)
		fail("signalfd 22 did not report SIGUSR2");

	struct itimerspec it;
	timerfd_gettime(23, &it);
	if (it.it_interval.tv_sec != 7 || it.it_interval.tv_nsec != 0 || it.it_value.tv_sec > 100 || it.it_value.tv_sec < 60)
		fail("timerfd 23: %lds left, interval %ld.%09lds; want <= 100 s and 7 s", (long)it.it_value.tv_sec, (long)it.it_interval.tv_sec, it.it_interval.tv_nsec);
	if (!fdinfo_has(23, "clockid: 1"))
		fail("timerfd 23 is not on CLOCK_MONOTONIC");

	if (read(24, &v, 8) != 8 || v != 1)
		fail("timerfd 24: read gave %llu ticks, want 1", (unsigned long long)v);
	if (read(24, &v, 8) != -1 || errno != EAGAIN)
		fail("timerfd 24 is not non-blocking, or expired again");
	timerfd_gettime(24, &it);
	if (it.it_value.tv_sec || it.it_value.tv_nsec)
		fail("timerfd 24 is armed again");

	timerfd_gettime(25, &it);
	if (it.it_value.tv_sec > 200 || it.it_value.tv_sec < 150)
		fail("timerfd 25: %lds left, want <= 200", (long)it.it_value.tv_sec);
	if (!fdinfo_has(25, "settime flags: 01"))
		fail("timerfd 25 is not TFD_TIMER_ABSTIME");
}
