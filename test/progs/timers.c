/*
 * timers: interval timers and POSIX timers must survive a checkpoint with
 * their ids, clocks, notifications, intervals and remaining times, and
 * fire at the right times afterwards.
 *
 *   timers PROGRESS VERDICT
 *
 * Timers (all armed before the first tick):
 *   ITIMER_REAL      every 50 ms (SIGALRM)
 *   ITIMER_VIRTUAL   every 20 ms of user CPU time (SIGVTALRM)
 *   ITIMER_PROF      every 20 ms of CPU time (SIGPROF)
 *   POSIX timers, created after one is deleted, so their ids have a gap:
 *     periodic   CLOCK_MONOTONIC every 30 ms, SIGRTMIN+3, value 0x5eed
 *     one-shot   CLOCK_MONOTONIC in 2 s, SIGEV_THREAD_ID to this thread,
 *                SIGRTMIN+4, value 0x1
 *     silent     CLOCK_REALTIME in 1000 s, SIGEV_NONE, interval 7 s
 *     cpu        CLOCK_PROCESS_CPUTIME_ID every 25 ms, SIGRTMIN+5
 *     disarmed   CLOCK_BOOTTIME, never armed
 * Every tick (10 ms of sleep plus 2 ms of spinning, for the CPU clocks) it
 * looks for the restore: the process CPU clock starts again near zero in
 * the restored process. Its "active time" is wall time minus the gap the
 * checkpoint left between the ticks around the restore.
 * On SIGTERM it checks that the timer ids still name the same timers
 * (clocks cannot be read back, but intervals and notification can be
 * told), that the deleted id is still free, that each periodic timer fired
 * as often as the active time says (within 20% and 3), that the one-shot
 * fired exactly once at 2 s of active time (-50/+300 ms: active time is
 * measured in ticks, and a loaded machine stretches ticks), that the CPU
 * timers fired after the checkpoint, and that the silent timer has about
 * 1000 s minus the active time left.
 */
#include "state.h"

#include <sys/syscall.h>
#include <sys/time.h>

#define NSEC 1000000000LL
#define MSEC 1000000LL

static volatile sig_atomic_t n_real, n_virt, n_prof, n_periodic, n_oneshot, n_cpu;
static volatile sig_atomic_t bad_value;
static volatile int64_t oneshot_at; /* mono_ns when the one-shot fired */

static void on_sig(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (sig == SIGALRM)
		n_real++;
	else if (sig == SIGVTALRM)
		n_virt++;
	else if (sig == SIGPROF)
		n_prof++;
	else if (sig == SIGRTMIN + 3) {
		n_periodic++;
		if (si->si_value.sival_int != 0x5eed || si->si_code != SI_TIMER)
			bad_value = sig;
	} else if (sig == SIGRTMIN + 4) {
		n_oneshot++;
		oneshot_at = mono_ns();
		if (si->si_value.sival_int != 1 || si->si_code != SI_TIMER)
			bad_value = sig;
	} else if (sig == SIGRTMIN + 5)
		n_cpu++;
}

static timer_t mk(clockid_t clk, int notify, int sig, int value)
{
	struct sigevent ev = { 0 };
	ev.sigev_notify = notify;
	ev.sigev_signo = sig;
	ev.sigev_value.sival_int = value;
	if (notify == SIGEV_THREAD_ID)
		ev._sigev_un._tid = syscall(SYS_gettid);
	timer_t t;
	if (timer_create(clk, &ev, &t) != 0)
		die("timer_create");
	return t;
}

static void arm(timer_t t, int64_t value, int64_t interval)
{
	struct itimerspec its = { { interval / NSEC, interval % NSEC }, { value / NSEC, value % NSEC } };
	if (timer_settime(t, 0, &its, NULL) != 0)
		die("timer_settime");
}

static int64_t ts_ns(struct timespec ts) { return ts.tv_sec * NSEC + ts.tv_nsec; }

/* rate checks a periodic count against the active time. */
static int rate_ok(int got, int64_t active, int64_t period)
{
	int64_t want = active / period;
	int64_t slack = want / 5 + 3;
	return got >= want - slack && got <= want + slack;
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "timers PROGRESS VERDICT");

	struct sigaction sa = { .sa_sigaction = on_sig, .sa_flags = SA_SIGINFO | SA_RESTART };
	sigemptyset(&sa.sa_mask);
	int sigs[] = { SIGALRM, SIGVTALRM, SIGPROF, SIGRTMIN + 3, SIGRTMIN + 4, SIGRTMIN + 5 };
	for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		if (sigaction(sigs[i], &sa, NULL) != 0)
			die("sigaction");

	timer_t gone = mk(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 3, 0);
	timer_t periodic = mk(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 3, 0x5eed);
	timer_t oneshot = mk(CLOCK_MONOTONIC, SIGEV_THREAD_ID, SIGRTMIN + 4, 1);
	timer_t silent = mk(CLOCK_REALTIME, SIGEV_NONE, 0, 0);
	timer_t cpu = mk(CLOCK_PROCESS_CPUTIME_ID, SIGEV_SIGNAL, SIGRTMIN + 5, 0);
	timer_t disarmed = mk(CLOCK_BOOTTIME, SIGEV_SIGNAL, SIGRTMIN + 5, 0);
	if (timer_delete(gone) != 0)
		die("timer_delete");

	struct itimerval real = { { 0, 50000 }, { 0, 50000 } }, cput = { { 0, 20000 }, { 0, 20000 } };
	if (setitimer(ITIMER_REAL, &real, NULL) != 0 || setitimer(ITIMER_VIRTUAL, &cput, NULL) != 0 ||
	    setitimer(ITIMER_PROF, &cput, NULL) != 0)
		die("setitimer");
	int64_t start = mono_ns();
	arm(periodic, 30 * MSEC, 30 * MSEC);
	arm(oneshot, 2 * NSEC, 0);
	arm(silent, 1000 * NSEC, 7 * NSEC);
	arm(cpu, 25 * MSEC, 25 * MSEC);

	int64_t prev = start, prev_cpu = 0, gap = 0;
	int restored = 0, virt_at_gap = 0, prof_at_gap = 0, cpu_at_gap = 0;
	while (!got_term) {
		tick();
		/* 2 ms of CPU, for the CPU-time timers. */
		for (int64_t t0 = mono_ns(); mono_ns() - t0 < 2 * MSEC;)
			;
		sleep_ns(TICK_NS, (volatile int *)&got_term);
		int64_t now = mono_ns();
		struct timespec c;
		clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c);
		if (ts_ns(c) < prev_cpu && !restored) {
			restored = 1;
			gap = now - prev - 12 * MSEC;
			if (gap < 0)
				gap = 0;
			virt_at_gap = n_virt;
			prof_at_gap = n_prof;
			cpu_at_gap = n_cpu;
		}
		prev_cpu = ts_ns(c);
		prev = now;
	}
	int64_t active = mono_ns() - start - gap;

	/* Freeze the counts before checking them. */
	sigset_t all;
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, NULL);

	if (bad_value)
		return verdict("FAIL signal %d came with the wrong value or code", (int)bad_value);
	struct itimerspec its;
	if (timer_gettime(gone, &its) == 0 || errno != EINVAL)
		return verdict("FAIL the deleted timer id %ld exists", (long)gone);
	struct {
		const char *name;
		timer_t id;
		int64_t interval;
	} ids[] = { { "periodic", periodic, 30 * MSEC }, { "one-shot", oneshot, 0 }, { "silent", silent, 7 * NSEC },
		    { "cpu", cpu, 25 * MSEC }, { "disarmed", disarmed, 0 } };
	for (unsigned i = 0; i < sizeof ids / sizeof ids[0]; i++) {
		if (timer_gettime(ids[i].id, &its) != 0)
			return verdict("FAIL %s timer id %ld: %s", ids[i].name, (long)ids[i].id, strerror(errno));
		if (ts_ns(its.it_interval) != ids[i].interval)
			return verdict("FAIL %s timer id %ld: interval %lld ns, want %lld", ids[i].name, (long)ids[i].id,
				       (long long)ts_ns(its.it_interval), (long long)ids[i].interval);
	}
	timer_gettime(disarmed, &its);
	if (ts_ns(its.it_value) != 0)
		return verdict("FAIL the disarmed timer is armed");
	timer_gettime(silent, &its);
	int64_t left = ts_ns(its.it_value), want_left = 1000 * NSEC - active;
	if (left > want_left + 300 * MSEC || left < want_left - 300 * MSEC)
		return verdict("FAIL silent timer: %lld ms left, want about %lld", (long long)(left / MSEC),
			       (long long)(want_left / MSEC));
	struct itimerval it;
	getitimer(ITIMER_REAL, &it);
	if (it.it_interval.tv_sec != 0 || it.it_interval.tv_usec != 50000 || (it.it_value.tv_sec == 0 && it.it_value.tv_usec == 0))
		return verdict("FAIL ITIMER_REAL interval %ld.%06ld", (long)it.it_interval.tv_sec, (long)it.it_interval.tv_usec);
	for (int w = ITIMER_VIRTUAL; w <= ITIMER_PROF; w++) {
		getitimer(w, &it);
		if (it.it_interval.tv_sec != 0 || it.it_interval.tv_usec != 20000)
			return verdict("FAIL itimer %d interval %ld.%06ld", w, (long)it.it_interval.tv_sec,
				       (long)it.it_interval.tv_usec);
	}
	if (!restored)
		return verdict("FAIL no restore seen (the process CPU clock never started again)");
	if (!rate_ok(n_real, active, 50 * MSEC))
		return verdict("FAIL ITIMER_REAL fired %d times in %lld ms of active time (gap %lld ms)", (int)n_real,
			       (long long)(active / MSEC), (long long)(gap / MSEC));
	if (!rate_ok(n_periodic, active, 30 * MSEC))
		return verdict("FAIL periodic POSIX timer fired %d times in %lld ms of active time (gap %lld ms)",
			       (int)n_periodic, (long long)(active / MSEC), (long long)(gap / MSEC));
	if (n_oneshot != 1)
		return verdict("FAIL one-shot timer fired %d times", (int)n_oneshot);
	/* When it fired, in active time: after the gap if it fired after it. */
	int64_t fired = oneshot_at - start;
	if (fired - gap >= 2 * NSEC - 50 * MSEC)
		fired -= gap;
	if (fired < 2 * NSEC - 50 * MSEC || fired > 2 * NSEC + 300 * MSEC)
		return verdict("FAIL one-shot timer fired at %lld ms of active time, want 2000", (long long)(fired / MSEC));
	if (n_virt <= virt_at_gap || n_prof <= prof_at_gap || n_cpu <= cpu_at_gap)
		return verdict("FAIL CPU-time timers did not fire after the checkpoint (virtual %d/%d, prof %d/%d, cpu %d/%d)",
			       (int)n_virt, virt_at_gap, (int)n_prof, prof_at_gap, (int)n_cpu, cpu_at_gap);
	return verdict("PASS %llu", (unsigned long long)ticks);
}
