/*
 * numapol: the NUMA memory policy of each thread (set_mempolicy(2), what
 * `numactl --interleave` gives a program) must survive a checkpoint.
 *
 *   numapol PROGRESS VERDICT
 *
 * The main thread interleaves over node 0; a second thread binds to node 0
 * with MPOL_F_STATIC_NODES. Each thread checks its own policy (mode, mode
 * flags and node mask, get_mempolicy) every tick; the check waits for a
 * fresh look of the second thread. A kernel without NUMA skips it all.
 */
#include "state.h"

#include <pthread.h>
#include <sys/syscall.h>

#define MPOL_BIND 2
#define MPOL_INTERLEAVE 3
#define MPOL_F_STATIC_NODES (1 << 15)
#define MASK_BITS 1024

static int numa = 1;
static volatile int second_ok, second_looks;

/* policy_is says whether the calling thread's policy is mode over node 0
 * only. */
static int policy_is(int mode)
{
	int got = -1;
	unsigned long mask[MASK_BITS / 64] = { 0 };
	if (syscall(SYS_get_mempolicy, &got, NULL, 0, NULL, 0) != 0 ||
	    syscall(SYS_get_mempolicy, NULL, mask, MASK_BITS, NULL, 0) != 0)
		return 0;
	if (got != mode || mask[0] != 1)
		return 0;
	for (int i = 1; i < MASK_BITS / 64; i++)
		if (mask[i])
			return 0;
	return 1;
}

static void set_policy(int mode)
{
	unsigned long node0 = 1;
	if (syscall(SYS_set_mempolicy, mode, &node0, 64 + 1) != 0)
		die("set_mempolicy");
}

static void *second(void *arg)
{
	(void)arg;
	set_policy(MPOL_BIND | MPOL_F_STATIC_NODES);
	for (;;) {
		__atomic_store_n(&second_ok, policy_is(MPOL_BIND | MPOL_F_STATIC_NODES), __ATOMIC_SEQ_CST);
		__atomic_add_fetch(&second_looks, 1, __ATOMIC_SEQ_CST);
		sleep_ns(TICK_NS, NULL);
	}
	return NULL;
}

static const char *check(char *why, size_t n)
{
	if (!numa)
		return NULL;
	if (!policy_is(MPOL_INTERLEAVE)) {
		snprintf(why, n, "the main thread's policy is not MPOL_INTERLEAVE over node 0");
		return why;
	}
	int looks = __atomic_load_n(&second_looks, __ATOMIC_SEQ_CST);
	for (int i = 0; i < 300 && __atomic_load_n(&second_looks, __ATOMIC_SEQ_CST) < looks + 2; i++)
		sleep_ns(TICK_NS, NULL);
	if (!__atomic_load_n(&second_ok, __ATOMIC_SEQ_CST)) {
		snprintf(why, n, "the second thread's policy is not MPOL_BIND|MPOL_F_STATIC_NODES over node 0");
		return why;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "numapol PROGRESS VERDICT");
	int mode;
	if (syscall(SYS_get_mempolicy, &mode, NULL, 0, NULL, 0) != 0 && errno == ENOSYS) {
		fprintf(stderr, "numapol: no NUMA in this kernel: not checked\n");
		numa = 0;
	}
	if (numa) {
		set_policy(MPOL_INTERLEAVE);
		pthread_t t;
		if (pthread_create(&t, NULL, second, NULL) != 0)
			die("pthread_create");
		while (!__atomic_load_n(&second_looks, __ATOMIC_SEQ_CST))
			sleep_ns(1000000L, NULL);
	}
	return state_run("numapol", check);
}
