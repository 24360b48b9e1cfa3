/*
 * numapol: the NUMA memory policy of each thread (set_mempolicy(2), what
 * `numactl --interleave` gives a program) must survive a checkpoint.
 *
 *   numapol PROGRESS VERDICT
 *
 * The main thread interleaves over node 0; a second thread binds to node 0
 * with MPOL_F_STATIC_NODES. Each thread checks its own policy (mode, mode
 * flags and node mask, get_mempolicy) every tick; the check waits for a
 * fresh look of the second thread.
 *
 * Mappings have policies of their own (mbind(2)), which must come back
 * too: the middle page of three private ones binds to node 0 with
 * MPOL_F_STATIC_NODES (splitting the mapping), a shared anonymous mapping
 * interleaves over node 0, and another private page is MPOL_LOCAL; the
 * pages around keep the default, and every page its contents. A child
 * forked then keeps those pages (shared since fork) and the policies of
 * the shared and local mappings, but puts the middle private page back to
 * the default: its look, every tick, is part of the check. A kernel
 * without NUMA skips it all.
 *
 * With "partial", the parent also binds the first page of a three-page
 * shared mapping after the fork: the child's mapping of it, not split, has
 * a policy on its first page only, which a dump must refuse.
 */
#include "state.h"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define MPOL_DEFAULT 0
#define MPOL_BIND 2
#define MPOL_INTERLEAVE 3
#define MPOL_LOCAL 4
#define MPOL_F_ADDR 2
#define MPOL_F_STATIC_NODES (1 << 15)
#define MASK_BITS 1024

static int numa = 1;
static volatile int second_ok, second_looks;
static char *priv, *shared, *local; /* mappings with policies (mbind) */
static long pg;
static int *child_looks; /* in shared memory: the child's looks, and whether the last was right */
static void child(void) __attribute__((noreturn));

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

/* vma_policy_is says whether the memory at addr has the policy mode, over
 * node 0 only when node0, over no node otherwise. */
static int vma_policy_is(const void *addr, int mode, int node0)
{
	int got = -1;
	unsigned long mask[MASK_BITS / 64] = { 0 };
	if (syscall(SYS_get_mempolicy, &got, mask, MASK_BITS, addr, MPOL_F_ADDR) != 0)
		return 0;
	if (got != mode || mask[0] != (node0 ? 1UL : 0UL))
		return 0;
	for (int i = 1; i < MASK_BITS / 64; i++)
		if (mask[i])
			return 0;
	return 1;
}

static void mbind_or_die(void *addr, size_t len, int mode, int node0)
{
	unsigned long node = 1;
	if (syscall(SYS_mbind, addr, len, mode, node0 ? &node : NULL, node0 ? 64 + 1 : 0, 0) != 0)
		die("mbind");
}

static void fill(char *p, size_t len, int seed)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (char)(i * 7 + seed);
}

static int filled(const char *p, size_t len, int seed)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != (char)(i * 7 + seed))
			return 0;
	return 1;
}

static void map_with_policies(int partial)
{
	pg = sysconf(_SC_PAGESIZE);
	priv = mmap(NULL, 3 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	shared = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	local = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (priv == MAP_FAILED || shared == MAP_FAILED || local == MAP_FAILED)
		die("mmap");
	mbind_or_die(priv + pg, pg, MPOL_BIND | MPOL_F_STATIC_NODES, 1);
	mbind_or_die(shared, 2 * pg, MPOL_INTERLEAVE, 1);
	mbind_or_die(local, pg, MPOL_LOCAL, 0);
	fill(priv, 3 * pg, 1);
	fill(shared, 2 * pg, 2);
	fill(local, pg, 3);
	child_looks = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (child_looks == MAP_FAILED)
		die("mmap");
	char *part = mmap(NULL, 3 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (part == MAP_FAILED)
		die("mmap");
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0)
		child();
	if (partial)
		mbind_or_die(part, pg, MPOL_BIND, 1);
}

/* child looks at its own policies every tick: those of the parent but
 * for the middle private page, which it puts back to the default. */
static void child(void)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	mbind_or_die(priv + pg, pg, MPOL_DEFAULT, 0);
	for (;;) {
		int ok = vma_policy_is(priv, MPOL_DEFAULT, 0) && vma_policy_is(priv + pg, MPOL_DEFAULT, 0) &&
			 vma_policy_is(priv + 2 * pg, MPOL_DEFAULT, 0) && vma_policy_is(shared, MPOL_INTERLEAVE, 1) &&
			 vma_policy_is(local, MPOL_LOCAL, 0) && filled(priv, 3 * pg, 1) && filled(local, pg, 3);
		__atomic_store_n(&child_looks[1], ok, __ATOMIC_SEQ_CST);
		__atomic_add_fetch(&child_looks[0], 1, __ATOMIC_SEQ_CST);
		sleep_ns(TICK_NS, NULL);
	}
}

static const char *check_vmas(char *why, size_t n)
{
	static const struct {
		int which, page, mode, node0;
	} want[] = {
		{ 0, 0, MPOL_DEFAULT, 0 }, { 0, 1, MPOL_BIND | MPOL_F_STATIC_NODES, 1 }, { 0, 2, MPOL_DEFAULT, 0 },
		{ 1, 0, MPOL_INTERLEAVE, 1 }, { 1, 1, MPOL_INTERLEAVE, 1 }, { 2, 0, MPOL_LOCAL, 0 },
	};
	char *base[] = { priv, shared, local };
	const char *name[] = { "private", "shared", "local" };
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
		if (!vma_policy_is(base[want[i].which] + want[i].page * pg, want[i].mode, want[i].node0)) {
			snprintf(why, n, "page %d of the %s mapping: its policy is not %#x", want[i].page, name[want[i].which], want[i].mode);
			return why;
		}
	if (!filled(priv, 3 * pg, 1) || !filled(shared, 2 * pg, 2) || !filled(local, pg, 3)) {
		snprintf(why, n, "a mapping with a policy lost its contents");
		return why;
	}
	int looks = __atomic_load_n(&child_looks[0], __ATOMIC_SEQ_CST);
	for (int i = 0; i < 300 && __atomic_load_n(&child_looks[0], __ATOMIC_SEQ_CST) < looks + 2; i++)
		sleep_ns(TICK_NS, NULL);
	if (__atomic_load_n(&child_looks[0], __ATOMIC_SEQ_CST) < looks + 2 || !__atomic_load_n(&child_looks[1], __ATOMIC_SEQ_CST)) {
		snprintf(why, n, "the child's mapping policies are not as it left them (or it does not look)");
		return why;
	}
	return NULL;
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
	return check_vmas(why, n);
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "numapol PROGRESS VERDICT [partial]");
	int mode;
	if (syscall(SYS_get_mempolicy, &mode, NULL, 0, NULL, 0) != 0 && errno == ENOSYS) {
		fprintf(stderr, "numapol: no NUMA in this kernel: not checked\n");
		numa = 0;
	}
	if (numa) {
		map_with_policies(argc > 3 && !strcmp(argv[3], "partial"));
		set_policy(MPOL_INTERLEAVE);
		pthread_t t;
		if (pthread_create(&t, NULL, second, NULL) != 0)
			die("pthread_create");
		while (!__atomic_load_n(&second_looks, __ATOMIC_SEQ_CST))
			sleep_ns(1000000L, NULL);
	}
	return state_run("numapol", check);
}
