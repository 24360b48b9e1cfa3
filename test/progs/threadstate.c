/*
 * threadstate: per-thread state of a multi-threaded process must survive a
 * checkpoint, thread by thread.
 *
 *   threadstate PROGRESS VERDICT
 *
 * It starts 4 workers. Worker i sets its own name "worker-i", nice i+1,
 * CPU affinity (CPU i modulo the CPUs it may use) and alternate signal
 * stack, blocks SIGUSR1 and records its robust futex list. Then the main
 * thread queues a SIGUSR1 to each worker (tgkill: pending for that thread
 * only) and a SIGUSR2 to the process (blocked everywhere), arms a POSIX
 * timer that signals worker 2 (SIGEV_THREAD_ID, SIGRTMIN+6 every 40 ms),
 * installs a seccomp filter for every thread (SECCOMP_FILTER_FLAG_TSYNC:
 * getppid fails with errno 99), and leaves root for uid and gid 1001
 * (glibc changes every thread's credentials).
 * On SIGTERM every worker checks, in itself, its alternate stack, uid and
 * filter, unblocks SIGUSR1 and sees it delivered once, to itself; the main
 * thread checks each worker's name, nice, affinity, robust list and pending
 * set from /proc, that the timer signals only worker 2 and kept firing, and
 * that the process-wide SIGUSR2 arrives once.
 */
#include "state.h"

#include <grp.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#define NW 4
#define ALTSTACK_SIZE (64 * 1024)

struct worker {
	pthread_t th;
	pid_t tid;
	int cpu;
	char *altstack;
	void *robust_head;
	size_t robust_len;
	volatile int ready, done;
	volatile int usr1; /* SIGUSR1 deliveries in this thread */
	char why[256];     /* empty: its own checks passed */
};

static struct worker w[NW];
static volatile int phase; /* 1: check yourselves */
static volatile sig_atomic_t usr2, timer_hits, timer_wrong;
static pid_t main_tid;

static pid_t gettid_(void) { return syscall(SYS_gettid); }

static struct worker *self(void)
{
	pid_t t = gettid_();
	for (int i = 0; i < NW; i++)
		if (w[i].tid == t)
			return &w[i];
	return NULL;
}

static void on_sig(int sig, siginfo_t *si, void *uc)
{
	(void)si;
	(void)uc;
	if (sig == SIGUSR1) {
		struct worker *me = self();
		if (me)
			me->usr1++;
	} else if (sig == SIGUSR2)
		usr2++;
	else if (sig == SIGRTMIN + 6) {
		timer_hits++;
		if (gettid_() != w[2].tid)
			timer_wrong++;
	}
}

static void *work(void *arg)
{
	struct worker *me = arg;
	int i = me - w;
	me->tid = gettid_();
	char name[16];
	snprintf(name, sizeof name, "worker-%d", i);
	prctl(PR_SET_NAME, name);
	setpriority(PRIO_PROCESS, me->tid, i + 1);
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(me->cpu, &set);
	sched_setaffinity(0, sizeof set, &set);
	me->altstack = malloc(ALTSTACK_SIZE);
	stack_t ss = { .ss_sp = me->altstack, .ss_size = ALTSTACK_SIZE };
	sigaltstack(&ss, NULL);
	sigset_t b;
	sigemptyset(&b);
	sigaddset(&b, SIGUSR1);
	sigaddset(&b, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &b, NULL);
	syscall(SYS_get_robust_list, 0, &me->robust_head, &me->robust_len);
	me->ready = 1;
	while (!phase)
		sleep_ns(TICK_NS, NULL);

	stack_t now;
	sigaltstack(NULL, &now);
	errno = 0;
	long pp = syscall(SYS_getppid);
	int e = errno;
	if (now.ss_sp != me->altstack || now.ss_size != ALTSTACK_SIZE || now.ss_flags != 0)
		snprintf(me->why, sizeof me->why, "worker %d: sigaltstack %p/%zu/%#x, want %p", i, now.ss_sp, now.ss_size,
			 now.ss_flags, (void *)me->altstack);
	else if (getuid() != 1001 || geteuid() != 1001 || getgid() != 1001)
		snprintf(me->why, sizeof me->why, "worker %d: uid %d euid %d gid %d, want 1001", i, getuid(), geteuid(),
			 getgid());
	else if (pp != -1 || e != 99)
		snprintf(me->why, sizeof me->why, "worker %d: getppid %ld errno %d: the seccomp filter is gone", i, pp, e);
	else if (me->usr1 != 0)
		snprintf(me->why, sizeof me->why, "worker %d: SIGUSR1 delivered while blocked", i);
	else {
		sigset_t u;
		sigemptyset(&u);
		sigaddset(&u, SIGUSR1);
		pthread_sigmask(SIG_UNBLOCK, &u, NULL);
		if (me->usr1 != 1)
			snprintf(me->why, sizeof me->why, "worker %d: SIGUSR1 delivered %d times, want 1", i, me->usr1);
	}
	me->done = 1;
	for (;;)
		pause();
	return NULL;
}

static struct sock_filter filter[] = {
	BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
	BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
	BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 99),
	BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
};

static long proc_task_hex(pid_t tid, const char *key, unsigned long long *v)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/self/task/%d/status", tid);
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	size_t n = strlen(key);
	long found = -1;
	while (fgets(line, sizeof line, f))
		if (strncmp(line, key, n) == 0 && line[n] == ':') {
			*v = strtoull(line + n + 1, NULL, 16);
			found = 0;
		}
	fclose(f);
	return found;
}

static const char *check_from_main(char *why, size_t n)
{
	for (int i = 0; i < NW; i++) {
		char path[64], name[32] = "", want[16];
		snprintf(path, sizeof path, "/proc/self/task/%d/comm", w[i].tid);
		FILE *f = fopen(path, "re");
		if (!f || !fgets(name, sizeof name, f)) {
			snprintf(why, n, "worker %d (tid %d) is gone", i, w[i].tid);
			if (f)
				fclose(f);
			return why;
		}
		fclose(f);
		name[strcspn(name, "\n")] = 0;
		snprintf(want, sizeof want, "worker-%d", i);
		if (strcmp(name, want) != 0) {
			snprintf(why, n, "tid %d is named %s, want %s", w[i].tid, name, want);
			return why;
		}
		errno = 0;
		int nice = getpriority(PRIO_PROCESS, w[i].tid);
		if (nice != i + 1) {
			snprintf(why, n, "worker %d: nice %d, want %d", i, nice, i + 1);
			return why;
		}
		cpu_set_t set;
		sched_getaffinity(w[i].tid, sizeof set, &set);
		if (CPU_COUNT(&set) != 1 || !CPU_ISSET(w[i].cpu, &set)) {
			snprintf(why, n, "worker %d: %d CPUs, want CPU %d only", i, CPU_COUNT(&set), w[i].cpu);
			return why;
		}
		void *head = NULL;
		size_t len = 0;
		syscall(SYS_get_robust_list, w[i].tid, &head, &len);
		if (head != w[i].robust_head || len != w[i].robust_len) {
			snprintf(why, n, "worker %d: robust list %p/%zu, want %p/%zu", i, head, len, w[i].robust_head,
				 w[i].robust_len);
			return why;
		}
		unsigned long long pnd = 0, blk = 0;
		proc_task_hex(w[i].tid, "SigPnd", &pnd);
		proc_task_hex(w[i].tid, "SigBlk", &blk);
		unsigned long long usr1 = 1ULL << (SIGUSR1 - 1), usr2b = 1ULL << (SIGUSR2 - 1);
		/* Worker 2's timer signal may be pending for a moment: not ours to check here. */
		pnd &= ~(1ULL << (SIGRTMIN + 6 - 1));
		if (pnd != usr1 || (blk & (usr1 | usr2b)) != (usr1 | usr2b)) {
			snprintf(why, n, "worker %d: pending %#llx blocked %#llx, want SIGUSR1 pending and blocked", i, pnd, blk);
			return why;
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	char why[512];
	state_init(argc, argv, 3, "threadstate PROGRESS VERDICT");
	main_tid = gettid_();
	struct sigaction sa = { .sa_sigaction = on_sig, .sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	sigaction(SIGRTMIN + 6, &sa, NULL);
	sigset_t b;
	sigemptyset(&b);
	sigaddset(&b, SIGUSR2);
	sigprocmask(SIG_BLOCK, &b, NULL);

	cpu_set_t mine;
	sched_getaffinity(0, sizeof mine, &mine);
	int cpus[CPU_SETSIZE], ncpu = 0;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &mine))
			cpus[ncpu++] = c;
	for (int i = 0; i < NW; i++) {
		w[i].cpu = cpus[i % ncpu];
		if (pthread_create(&w[i].th, NULL, work, &w[i]) != 0)
			die("pthread_create");
	}
	for (int i = 0; i < NW; i++)
		while (!w[i].ready)
			sleep_ns(1000000, NULL);
	for (int i = 0; i < NW; i++)
		if (syscall(SYS_tgkill, getpid(), w[i].tid, SIGUSR1) != 0)
			die("tgkill");
	kill(getpid(), SIGUSR2);

	struct sigevent ev = { .sigev_notify = SIGEV_THREAD_ID, .sigev_signo = SIGRTMIN + 6 };
	ev._sigev_un._tid = w[2].tid;
	timer_t tm;
	struct itimerspec its = { { 0, 40000000 }, { 0, 40000000 } };
	if (timer_create(CLOCK_MONOTONIC, &ev, &tm) != 0 || timer_settime(tm, 0, &its, NULL) != 0)
		die("timer");
	struct sock_fprog prog = { sizeof filter / sizeof filter[0], filter };
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0)
		die("seccomp TSYNC");
	if (setgroups(0, NULL) != 0 || setresgid(1001, 1001, 1001) != 0 || setresuid(1001, 1001, 1001) != 0)
		die("setresuid");
	if (check_from_main(why, sizeof why)) {
		fprintf(stderr, "threadstate: setup: %s\n", why);
		return 2;
	}

	while (!got_term) {
		tick();
		sleep_ns(TICK_NS, (volatile int *)&got_term);
	}
	int hits = timer_hits;
	if (check_from_main(why, sizeof why))
		return verdict("FAIL %s", why);
	phase = 1;
	for (int i = 0; i < NW; i++) {
		for (int j = 0; !w[i].done; j++) {
			if (j > 5000)
				return verdict("FAIL worker %d did not check itself within 5 s", i);
			sleep_ns(1000000, NULL);
		}
		if (w[i].why[0])
			return verdict("FAIL %s", w[i].why);
	}
	if (getuid() != 1001)
		return verdict("FAIL main thread uid %d, want 1001", getuid());
	if (timer_wrong)
		return verdict("FAIL the timer signalled a thread other than worker 2");
	/* 40 ms per hit, 10 ms (and a little) per tick. */
	if ((uint64_t)hits < ticks / 4 / 2)
		return verdict("FAIL the timer fired %d times in %llu ticks", hits, (unsigned long long)ticks);
	if (usr2 != 0)
		return verdict("FAIL SIGUSR2 delivered while blocked");
	sigprocmask(SIG_UNBLOCK, &b, NULL);
	if (usr2 != 1)
		return verdict("FAIL SIGUSR2 delivered %d times, want 1", (int)usr2);
	return verdict("PASS %llu", (unsigned long long)ticks);
}
