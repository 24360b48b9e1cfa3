/*
 * sigstate: signal handlers, blocked and pending signals, and an alternate
 * signal stack must survive a checkpoint.
 *
 *   sigstate PROGRESS VERDICT
 *
 * Before it says ready (by ticking) it installs SA_SIGINFO handlers for
 * SIGUSR1, SIGUSR2, SIGRTMIN+1 and SIGRTMIN+2 (SIGUSR2 on an alternate
 * signal stack with SA_ONSTACK), ignores SIGPIPE, blocks the four signals,
 * and queues, to itself:
 *   SIGUSR1              kill(): process-wide, si_code SI_USER
 *   SIGUSR2              tgkill(): this thread only, si_code SI_TKILL
 *   SIGRTMIN+1 value 11  sigqueue(): process-wide, SI_QUEUE
 *   SIGRTMIN+1 value 22  (a second one: real-time signals queue)
 *   SIGRTMIN+2 value 33  rt_tgsigqueueinfo() with si_code SI_QUEUE to this
 *                        thread only
 * While ticking it checks the pending sets (process-wide and its own) stay
 * exactly these. On SIGTERM it checks the dispositions and the alternate
 * stack, unblocks the signals and checks each arrived exactly once, with
 * its value and code, the two SIGRTMIN+1 in queue order and SIGUSR2 on the
 * alternate stack.
 */
#include "state.h"

#include <sys/syscall.h>

#define ALTSTACK_SIZE (64 * 1024)

struct got {
	int signo, code, value;
	int on_altstack;
};

static struct got got[16];
static volatile sig_atomic_t ngot;
static char *altstack;

static void handler(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	char here;
	if (ngot < 16) {
		struct got *g = &got[ngot];
		g->signo = sig;
		g->code = si->si_code;
		g->value = si->si_value.sival_int;
		g->on_altstack = &here >= altstack && &here < altstack + ALTSTACK_SIZE;
		ngot++;
	}
}

static int sigs[] = { SIGUSR1, SIGUSR2, 0, 0 };

static int check_handlers(char *why, size_t n)
{
	for (int i = 0; i < 4; i++) {
		struct sigaction sa;
		if (sigaction(sigs[i], NULL, &sa) != 0) {
			snprintf(why, n, "sigaction(%d): %s", sigs[i], strerror(errno));
			return -1;
		}
		int want = SA_SIGINFO | SA_RESTART | (sigs[i] == SIGUSR2 ? SA_ONSTACK : 0);
		if (sa.sa_sigaction != handler || (sa.sa_flags & want) != want || !sigismember(&sa.sa_mask, SIGPIPE)) {
			snprintf(why, n, "signal %d: handler %p flags %#x, want %p %#x with SIGPIPE in the mask", sigs[i],
				 (void *)sa.sa_sigaction, sa.sa_flags, (void *)handler, want);
			return -1;
		}
	}
	struct sigaction ign;
	sigaction(SIGPIPE, NULL, &ign);
	if (ign.sa_handler != SIG_IGN) {
		snprintf(why, n, "SIGPIPE is no longer ignored");
		return -1;
	}
	stack_t ss;
	if (sigaltstack(NULL, &ss) != 0 || ss.ss_sp != altstack || ss.ss_size != ALTSTACK_SIZE || ss.ss_flags != 0) {
		snprintf(why, n, "sigaltstack: sp %p size %zu flags %#x, want %p %d 0", ss.ss_sp, ss.ss_size, ss.ss_flags,
			 (void *)altstack, ALTSTACK_SIZE);
		return -1;
	}
	return 0;
}

/* check_pending compares the pending sets with what was queued. */
static int check_pending(char *why, size_t n)
{
	sigset_t all;
	sigpending(&all); /* process-wide and this thread's */
	for (int s = 1; s < 65; s++) {
		int want = s == sigs[0] || s == sigs[1] || s == sigs[2] || s == sigs[3];
		if (sigismember(&all, s) != want) {
			snprintf(why, n, "signal %d is %spending", s, want ? "not " : "");
			return -1;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	char why[512];
	state_init(argc, argv, 3, "sigstate PROGRESS VERDICT");
	sigs[2] = SIGRTMIN + 1;
	sigs[3] = SIGRTMIN + 2;

	altstack = malloc(ALTSTACK_SIZE);
	stack_t ss = { .ss_sp = altstack, .ss_size = ALTSTACK_SIZE };
	if (!altstack || sigaltstack(&ss, NULL) != 0)
		die("sigaltstack");
	sigset_t block;
	sigemptyset(&block);
	for (int i = 0; i < 4; i++) {
		struct sigaction sa = { .sa_sigaction = handler };
		sa.sa_flags = SA_SIGINFO | SA_RESTART | (sigs[i] == SIGUSR2 ? SA_ONSTACK : 0);
		sigemptyset(&sa.sa_mask);
		sigaddset(&sa.sa_mask, SIGPIPE);
		if (sigaction(sigs[i], &sa, NULL) != 0)
			die("sigaction");
		sigaddset(&block, sigs[i]);
	}
	signal(SIGPIPE, SIG_IGN);
	if (sigprocmask(SIG_BLOCK, &block, NULL) != 0)
		die("sigprocmask");

	pid_t pid = getpid();
	if (kill(pid, SIGUSR1) != 0 || syscall(SYS_tgkill, pid, syscall(SYS_gettid), SIGUSR2) != 0)
		die("kill");
	if (sigqueue(pid, SIGRTMIN + 1, (union sigval){ .sival_int = 11 }) != 0 ||
	    sigqueue(pid, SIGRTMIN + 1, (union sigval){ .sival_int = 22 }) != 0)
		die("sigqueue");
	siginfo_t si = { 0 };
	si.si_signo = SIGRTMIN + 2;
	si.si_code = SI_QUEUE;
	si.si_pid = pid;
	si.si_uid = getuid();
	si.si_value.sival_int = 33;
	if (syscall(SYS_rt_tgsigqueueinfo, pid, syscall(SYS_gettid), SIGRTMIN + 2, &si) != 0)
		die("rt_tgsigqueueinfo");

	if (check_handlers(why, sizeof why) != 0 || check_pending(why, sizeof why) != 0) {
		fprintf(stderr, "sigstate: setup: %s\n", why);
		return 2;
	}
	while (!got_term) {
		tick();
		if (check_pending(why, sizeof why) != 0)
			return verdict("FAIL at tick %llu: %s", (unsigned long long)ticks, why);
		if (ngot != 0)
			return verdict("FAIL at tick %llu: signal %d delivered while blocked", (unsigned long long)ticks, got[0].signo);
		sleep_ns(TICK_NS, (volatile int *)&got_term);
	}

	if (check_handlers(why, sizeof why) != 0)
		return verdict("FAIL %s", why);
	if (check_pending(why, sizeof why) != 0)
		return verdict("FAIL at SIGTERM: %s", why);
	/* Unblocking delivers them all at once, nested (the last dequeued
	 * handler runs first), so only the order of the two SIGRTMIN+1 is
	 * fixed: a real-time signal's queue. */
	sigprocmask(SIG_UNBLOCK, &block, NULL);
	struct got want[] = {
		{ SIGUSR1, SI_USER, 0, 0 },
		{ SIGUSR2, SI_TKILL, 0, 1 },
		{ SIGRTMIN + 1, SI_QUEUE, 11, 0 },
		{ SIGRTMIN + 1, SI_QUEUE, 22, 0 },
		{ SIGRTMIN + 2, SI_QUEUE, 33, 0 },
	};
	int nwant = sizeof want / sizeof want[0];
	if (ngot != nwant)
		return verdict("FAIL %d signals delivered after unblocking, want %d", (int)ngot, nwant);
	int at[5];
	for (int i = 0; i < nwant; i++) {
		struct got *w = &want[i];
		int found = 0;
		for (int j = 0; j < ngot; j++) {
			struct got *g = &got[j];
			if (g->signo == w->signo && g->code == w->code && (w->code != SI_QUEUE || g->value == w->value)) {
				found++;
				at[i] = j;
				/* The handlers nest on whatever stack the first
				 * one got: only SA_ONSTACK's is known. */
				if (w->on_altstack && !g->on_altstack)
					return verdict("FAIL signal %d ran off the alternate stack", g->signo);
			}
		}
		if (found != 1) {
			char list[256] = "";
			for (int j = 0; j < ngot; j++)
				snprintf(list + strlen(list), sizeof list - strlen(list), " %d/%d/%d", got[j].signo,
					 got[j].code, got[j].value);
			return verdict("FAIL signal %d code %d value %d delivered %d times (got signo/code/value:%s)",
				       w->signo, w->code, w->value, found, list);
		}
	}
	if (at[2] > at[3])
		return verdict("FAIL the two SIGRTMIN+1 were delivered out of queue order");
	sigset_t left;
	sigpending(&left);
	if (!sigisemptyset(&left))
		return verdict("FAIL signals still pending after delivery");
	return verdict("PASS %llu", (unsigned long long)ticks);
}
