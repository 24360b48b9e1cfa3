/*
 * procstate: per-process and per-thread settings must survive a checkpoint.
 *
 *   procstate PROGRESS VERDICT [rr]
 *
 * Before the first tick it sets:
 *   resource limits   RLIMIT_NOFILE 200/400, RLIMIT_CORE 1 MiB/2 MiB,
 *                     RLIMIT_MSGQUEUE 4096/8192, RLIMIT_CPU 100000 s/unlimited
 *                     (lower than inherited: raising a hard limit needs
 *                     CAP_SYS_RESOURCE, which root lacks on some machines)
 *   scheduling        SCHED_BATCH with nice 7 and SCHED_RESET_ON_FORK, or
 *                     with "rr": SCHED_RR priority 3
 *   CPU affinity      the last CPU it may use only
 *   personality       ADDR_NO_RANDOMIZE | UNAME26
 *   prctl             name "procstate-x", dumpable 0, child subreaper, THP
 *                     disabled, timer slack 123457 ns (not with "rr": a
 *                     real-time thread has none)
 *   I/O priority      best-effort, level 6
 *   OOM score adj     345
 *   core dump filter  0x7e (the default is 0x33)
 *   KSM               for every mapping (PR_SET_MEMORY_MERGE), where the
 *                     kernel has KSM
 *   umask             027
 * and records the robust futex list glibc registered for the thread. On
 * SIGTERM it reads every one back.
 */
#include "state.h"

#include <sched.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif
#ifndef SCHED_RESET_ON_FORK
#define SCHED_RESET_ON_FORK 0x40000000
#endif

struct sched_attr {
	uint32_t size, policy;
	uint64_t flags;
	int32_t nice;
	uint32_t priority;
	uint64_t runtime, deadline, period;
};

struct lim {
	int res;
	const char *name;
	rlim_t cur, max;
};

static const struct lim lims[] = {
	{ RLIMIT_NOFILE, "RLIMIT_NOFILE", 200, 400 },
	{ RLIMIT_CORE, "RLIMIT_CORE", 1 << 20, 2 << 20 },
	{ RLIMIT_MSGQUEUE, "RLIMIT_MSGQUEUE", 4096, 8192 },
	{ RLIMIT_CPU, "RLIMIT_CPU", 100000, RLIM_INFINITY },
};
#define NLIMS (sizeof lims / sizeof lims[0])

#define PERSONA (ADDR_NO_RANDOMIZE | UNAME26)
#define IOPRIO ((2 << 13) | 6) /* IOPRIO_CLASS_BE, level 6 */
#define SLACK 123457
#define OOM_ADJ 345
#define COREDUMP_FILTER 0x7e

static int oom_adj(void)
{
	char b[16] = "";
	FILE *f = fopen("/proc/self/oom_score_adj", "r");
	if (!f)
		return -9999;
	if (!fgets(b, sizeof b, f))
		b[0] = 0;
	fclose(f);
	return atoi(b);
}

static unsigned coredump_filter(void)
{
	unsigned v = 0;
	FILE *f = fopen("/proc/self/coredump_filter", "r");
	if (!f || fscanf(f, "%x", &v) != 1)
		v = ~0U;
	if (f)
		fclose(f);
	return v;
}

static int rr;
static int cpu;
static int ksm = 1; /* the kernel has KSM */
static void *robust_head;
static size_t robust_len;

static const char *check(char *why, size_t n)
{
	for (unsigned i = 0; i < NLIMS; i++) {
		struct rlimit r;
		getrlimit(lims[i].res, &r);
		if (r.rlim_cur != lims[i].cur || r.rlim_max != lims[i].max) {
			snprintf(why, n, "%s is %llu/%llu, want %llu/%llu", lims[i].name, (unsigned long long)r.rlim_cur,
				 (unsigned long long)r.rlim_max, (unsigned long long)lims[i].cur,
				 (unsigned long long)lims[i].max);
			return why;
		}
	}
	struct sched_attr a = { 0 };
	if (syscall(SYS_sched_getattr, 0, &a, sizeof a, 0) != 0) {
		snprintf(why, n, "sched_getattr: %s", strerror(errno));
		return why;
	}
	if (rr) {
		if (a.policy != SCHED_RR || a.priority != 3) {
			snprintf(why, n, "policy %u priority %u, want SCHED_RR 3", a.policy, a.priority);
			return why;
		}
	} else if (a.policy != SCHED_BATCH || a.nice != 7 || !(a.flags & 1 /* SCHED_FLAG_RESET_ON_FORK */)) {
		snprintf(why, n, "policy %u nice %d flags %#llx, want SCHED_BATCH nice 7 reset-on-fork", a.policy, a.nice,
			 (unsigned long long)a.flags);
		return why;
	}
	errno = 0;
	int prio = getpriority(PRIO_PROCESS, 0);
	if (!rr && prio != 7) {
		snprintf(why, n, "getpriority %d, want 7", prio);
		return why;
	}
	cpu_set_t set;
	sched_getaffinity(0, sizeof set, &set);
	if (CPU_COUNT(&set) != 1 || !CPU_ISSET(cpu, &set)) {
		snprintf(why, n, "affinity: %d CPUs, want CPU %d only", CPU_COUNT(&set), cpu);
		return why;
	}
	int p = personality(0xffffffff);
	if (p != PERSONA) {
		snprintf(why, n, "personality %#x, want %#x", p, PERSONA);
		return why;
	}
	char name[17] = "";
	prctl(PR_GET_NAME, name);
	if (strcmp(name, "procstate-x") != 0) {
		snprintf(why, n, "name \"%s\", want procstate-x", name);
		return why;
	}
	if (prctl(PR_GET_DUMPABLE) != 0) {
		snprintf(why, n, "dumpable %d, want 0", prctl(PR_GET_DUMPABLE));
		return why;
	}
	int sub = 0;
	prctl(PR_GET_CHILD_SUBREAPER, &sub);
	if (sub != 1) {
		snprintf(why, n, "child subreaper %d, want 1", sub);
		return why;
	}
	if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) != 1) {
		snprintf(why, n, "THP disable %d, want 1", prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0));
		return why;
	}
	if (!rr && prctl(PR_GET_TIMERSLACK) != SLACK) {
		snprintf(why, n, "timer slack %d ns, want %d", prctl(PR_GET_TIMERSLACK), SLACK);
		return why;
	}
	int io = syscall(SYS_ioprio_get, 1 /* IOPRIO_WHO_PROCESS */, 0);
	if (io != IOPRIO) {
		snprintf(why, n, "I/O priority %#x, want %#x", io, IOPRIO);
		return why;
	}
	if (oom_adj() != OOM_ADJ) {
		snprintf(why, n, "oom_score_adj %d, want %d", oom_adj(), OOM_ADJ);
		return why;
	}
	if (ksm && prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) != 1) {
		snprintf(why, n, "PR_GET_MEMORY_MERGE is %d, want 1", prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0));
		return why;
	}
	if (coredump_filter() != COREDUMP_FILTER) {
		snprintf(why, n, "coredump_filter %#x, want %#x", coredump_filter(), COREDUMP_FILTER);
		return why;
	}
	mode_t m = umask(0);
	umask(m);
	if (m != 027) {
		snprintf(why, n, "umask %03o, want 027", m);
		return why;
	}
	void *head = NULL;
	size_t len = 0;
	syscall(SYS_get_robust_list, 0, &head, &len);
	if (head != robust_head || len != robust_len || head == NULL) {
		snprintf(why, n, "robust list %p/%zu, want %p/%zu", head, len, robust_head, robust_len);
		return why;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "procstate PROGRESS VERDICT [rr]");
	rr = argc > 3 && strcmp(argv[3], "rr") == 0;

	for (unsigned i = 0; i < NLIMS; i++) {
		struct rlimit r = { lims[i].cur, lims[i].max };
		if (setrlimit(lims[i].res, &r) != 0)
			die(lims[i].name);
	}
	struct sched_attr a = { .size = sizeof a };
	if (rr) {
		a.policy = SCHED_RR;
		a.priority = 3;
	} else {
		a.policy = SCHED_BATCH;
		a.nice = 7;
		a.flags = 1; /* SCHED_FLAG_RESET_ON_FORK */
	}
	if (syscall(SYS_sched_setattr, 0, &a, 0) != 0)
		die("sched_setattr");
	cpu_set_t set;
	sched_getaffinity(0, sizeof set, &set);
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &set))
			cpu = c;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof set, &set) != 0)
		die("sched_setaffinity");
	if (personality(PERSONA) < 0)
		die("personality");
	FILE *f = fopen("/proc/self/coredump_filter", "w");
	if (!f || fprintf(f, "%#x", COREDUMP_FILTER) < 0 || fclose(f) != 0)
		die("coredump_filter");
	prctl(PR_SET_NAME, "procstate-x");
	if (prctl(PR_SET_DUMPABLE, 0) != 0 || prctl(PR_SET_CHILD_SUBREAPER, 1) != 0)
		die("prctl");
	umask(027);
	if (prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0) {
		if (errno != EINVAL)
			die("PR_SET_MEMORY_MERGE");
		ksm = 0;
	}
	if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 || prctl(PR_SET_TIMERSLACK, SLACK) != 0)
		die("prctl THP/timer slack");
	if (syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, 0, IOPRIO) != 0)
		die("ioprio_set");
	f = fopen("/proc/self/oom_score_adj", "w");
	if (!f || fprintf(f, "%d", OOM_ADJ) < 0 || fclose(f) != 0)
		die("oom_score_adj");
	syscall(SYS_get_robust_list, 0, &robust_head, &robust_len);

	return state_run("procstate", check);
}
