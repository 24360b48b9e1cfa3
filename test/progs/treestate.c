/*
 * treestate: each process of a tree keeps its own task state: a child
 * with a parent-death signal, other credentials, its own resource limit and
 * interval timer, under a parent that stays root.
 *
 *   treestate PROGRESS VERDICT
 *
 * The parent (root) forks a child that sets RLIMIT_NOFILE 64/128,
 * ITIMER_REAL every 30 ms, leaves root for uid and gid 1500, makes itself
 * dumpable again and sets PR_SET_PDEATHSIG to SIGUSR2 (the uid change
 * cleared both). The
 * parent sets RLIMIT_NOFILE 300/600 and blocks SIGUSR1 with one pending.
 * On SIGTERM the parent checks its own state, sends SIGTERM to the child
 * and reaps it: the child checks its state and exits 0, or 10 + the number
 * of the check that failed.
 */
#include "state.h"

#include <grp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
	(void)sig;
	alarms++;
}

static int child_checks(void)
{
	int sig = 0;
	prctl(PR_GET_PDEATHSIG, &sig);
	if (sig != SIGUSR2)
		return 1;
	struct rlimit r;
	getrlimit(RLIMIT_NOFILE, &r);
	if (r.rlim_cur != 64 || r.rlim_max != 128)
		return 2;
	if (getuid() != 1500 || geteuid() != 1500 || getgid() != 1500)
		return 3;
	struct itimerval it;
	getitimer(ITIMER_REAL, &it);
	if (it.it_interval.tv_usec != 30000 || it.it_interval.tv_sec != 0)
		return 4;
	if (prctl(PR_GET_DUMPABLE) != 1)
		return 5;
	return 0;
}

static void child(void)
{
	struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, NULL);
	struct rlimit r = { 64, 128 };
	struct itimerval it = { { 0, 30000 }, { 0, 30000 } };
	/* A credential change clears the parent-death signal: it comes last. */
	if (setrlimit(RLIMIT_NOFILE, &r) != 0 || setitimer(ITIMER_REAL, &it, NULL) != 0 || setgroups(0, NULL) != 0 ||
	    setresgid(1500, 1500, 1500) != 0 || setresuid(1500, 1500, 1500) != 0 || prctl(PR_SET_DUMPABLE, 1) != 0 ||
	    prctl(PR_SET_PDEATHSIG, SIGUSR2) != 0)
		_exit(9);
	while (!got_term)
		sleep_ns(TICK_NS, (volatile int *)&got_term);
	int k = child_checks();
	if (k == 0 && alarms < 10)
		k = 6; /* the timer stopped */
	_exit(k ? 10 + k : 0);
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "treestate PROGRESS VERDICT");
	struct rlimit r = { 300, 600 };
	if (setrlimit(RLIMIT_NOFILE, &r) != 0)
		die("setrlimit");
	pid_t c = fork();
	if (c < 0)
		die("fork");
	if (c == 0)
		child();
	sigset_t b;
	sigemptyset(&b);
	sigaddset(&b, SIGUSR1);
	sigprocmask(SIG_BLOCK, &b, NULL);
	kill(getpid(), SIGUSR1);
	while (!got_term) {
		tick();
		sleep_ns(TICK_NS, (volatile int *)&got_term);
	}
	getrlimit(RLIMIT_NOFILE, &r);
	if (r.rlim_cur != 300 || r.rlim_max != 600)
		return verdict("FAIL parent RLIMIT_NOFILE %llu/%llu, want 300/600", (unsigned long long)r.rlim_cur,
			       (unsigned long long)r.rlim_max);
	if (getuid() != 0)
		return verdict("FAIL parent uid %d, want 0", getuid());
	sigset_t p;
	sigpending(&p);
	if (!sigismember(&p, SIGUSR1))
		return verdict("FAIL parent's pending SIGUSR1 is lost");
	if (kill(c, SIGTERM) != 0)
		return verdict("FAIL child %d: %s", c, strerror(errno));
	int st;
	if (waitpid(c, &st, 0) != c)
		return verdict("FAIL waitpid %d: %s", c, strerror(errno));
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		return verdict("FAIL child ended with status %#x (exit 1x: check x failed)", st);
	return verdict("PASS %llu", (unsigned long long)ticks);
}
