/*
 * threads: 8 threads, each with distinct thread-local storage, its own
 * signal mask and AVX registers mid-computation, for crpipe's thread restore.
 *
 *   threads PROGRESS VERDICT [MIB]
 *
 * Each worker counts in the four 64-bit lanes of ymm0 (starting from its
 * index) in long register-only loops, so a checkpoint lands inside one: a
 * lost or mixed-up ymm register, TLS block or signal mask shows as a wrong
 * result. The main thread ticks PROGRESS every 10 ms; on SIGTERM it stops
 * the workers and writes "PASS <ticks>" or "FAIL <why>" to VERDICT.
 * With MIB, the main thread first fills MIB MiB of memory with a pattern,
 * checked on SIGTERM (enough of it, and cr-dump's cr-pages has the process
 * lend its pages through the main thread while the workers are held).
 * The main thread sleeps with ymm0-ymm7 holding a pattern across the
 * system call, which the kernel keeps, and so must whatever runs on the
 * thread meanwhile (cr-pages' page lender folds in those registers).
 */
#include "common.h"

#include <pthread.h>
#include <signal.h>

#define NTHREADS 8
#define LOOPS 20000000ULL

static volatile int stop;
static __thread long tls_id = -1;
static char failure[NTHREADS][160];
static unsigned long long rounds[NTHREADS];

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static void *worker(void *arg)
{
	long id = (long)arg;
	tls_id = id;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGRTMIN + (int)id);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	while (!stop) {
		unsigned long long out[4];
		unsigned long long start = (unsigned long long)id << 40;
		__asm__ volatile(
			"vmovq %1, %%xmm2\n"
			"vpbroadcastq %%xmm2, %%ymm0\n"
			"vpcmpeqq %%ymm1, %%ymm1, %%ymm1\n"
			"mov %2, %%rcx\n"
			"1: vpsubq %%ymm1, %%ymm0, %%ymm0\n"
			"dec %%rcx\n"
			"jnz 1b\n"
			"vmovdqu %%ymm0, %0\n"
			"vzeroupper\n"
			: "=m"(out)
			: "r"(start), "r"(LOOPS)
			: "rcx", "xmm0", "xmm1", "xmm2", "memory");
		for (int k = 0; k < 4; k++) {
			if (out[k] != start + LOOPS) {
				snprintf(failure[id], sizeof(failure[id]), "thread %ld: ymm0 lane %d = %#llx, want %#llx", id, k, out[k], start + LOOPS);
				return NULL;
			}
		}
		if (tls_id != id) {
			snprintf(failure[id], sizeof(failure[id]), "thread %ld: TLS says %ld", id, tls_id);
			return NULL;
		}
		sigset_t cur;
		pthread_sigmask(SIG_BLOCK, NULL, &cur);
		for (int j = 0; j < NTHREADS; j++) {
			if (sigismember(&cur, SIGRTMIN + j) != (j == id)) {
				snprintf(failure[id], sizeof(failure[id]), "thread %ld: SIGRTMIN+%d %sblocked", id, j, j == id ? "not " : "");
				return NULL;
			}
		}
		rounds[id]++;
	}
	return NULL;
}

/* sleep_keeping_ymm sleeps ns (a raw nanosleep: no libc code between the
 * registers and the call) with ymm0-ymm7 set from seed, and says which
 * came back changed (NULL: none). */
static const char *sleep_keeping_ymm(long ns, unsigned long long seed)
{
	struct timespec ts = { 0, ns };
	unsigned long long want[4] = { mix64(seed), mix64(seed + 1), mix64(seed + 2), mix64(seed + 3) }, got[8][4];
	long ret;
	__asm__ volatile(
		"vmovdqu %[w], %%ymm0\n"
		"vpaddq %%ymm0, %%ymm0, %%ymm1\n"
		"vpaddq %%ymm1, %%ymm0, %%ymm2\n"
		"vpaddq %%ymm2, %%ymm0, %%ymm3\n"
		"vpaddq %%ymm3, %%ymm0, %%ymm4\n"
		"vpaddq %%ymm4, %%ymm0, %%ymm5\n"
		"vpaddq %%ymm5, %%ymm0, %%ymm6\n"
		"vpaddq %%ymm6, %%ymm0, %%ymm7\n"
		"syscall\n"
		"vmovdqu %%ymm0, 0(%[g])\n"
		"vmovdqu %%ymm1, 32(%[g])\n"
		"vmovdqu %%ymm2, 64(%[g])\n"
		"vmovdqu %%ymm3, 96(%[g])\n"
		"vmovdqu %%ymm4, 128(%[g])\n"
		"vmovdqu %%ymm5, 160(%[g])\n"
		"vmovdqu %%ymm6, 192(%[g])\n"
		"vmovdqu %%ymm7, 224(%[g])\n"
		"vzeroupper\n"
		: "=a"(ret)
		: "0"(35L /* nanosleep */), "D"(&ts), "S"(0L), [w] "m"(want), [g] "r"(got)
		: "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7");
	(void)ret; /* EINTR (SIGTERM) just ends this tick early */
	static char why[96];
	for (int r = 0; r < 8; r++)
		for (int k = 0; k < 4; k++)
			if (got[r][k] != want[k] * (unsigned long long)(r + 1)) {
				snprintf(why, sizeof(why), "main thread: ymm%d lane %d changed across a system call", r, k);
				return why;
			}
	return NULL;
}

int main(int argc, char **argv)
{
	close_inherited();
	if (argc != 3 && argc != 4) {
		fprintf(stderr, "usage: threads PROGRESS VERDICT [MIB]\n");
		return 2;
	}
	size_t words = argc == 4 ? ((size_t)atoi(argv[3]) << 20) / 8 : 0;
	uint64_t *mem = words ? malloc(words * 8) : NULL;
	if (words && !mem)
		return 2;
	for (size_t i = 0; i < words; i++)
		mem[i] = mix64(i);
	detach();
	signal(SIGTERM, on_term);
	int prog = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (prog < 0)
		return 2;
	pthread_t th[NTHREADS];
	for (long i = 0; i < NTHREADS; i++)
		if (pthread_create(&th[i], NULL, worker, (void *)i) != 0)
			return 2;
	unsigned long long ticks = 0;
	char line[32];
	const char *why = NULL;
	while (!stop) {
		ticks++;
		int n = snprintf(line, sizeof(line), "%llu\n", ticks);
		pwrite(prog, line, n, 0);
		if (!why)
			why = sleep_keeping_ymm(10000000L, ticks);
		else
			sleep_ns(10000000L, &stop);
	}
	for (size_t i = 0; i < words && !why; i++)
		if (mem[i] != mix64(i))
			why = "the pattern memory changed";
	for (int i = 0; i < NTHREADS; i++) {
		pthread_join(th[i], NULL);
		if (!why && failure[i][0])
			why = failure[i];
		if (!why && rounds[i] == 0)
			why = "a thread never finished a round";
	}
	FILE *v = fopen(argv[2], "w");
	if (!v)
		return 2;
	if (why)
		fprintf(v, "FAIL %s\n", why);
	else
		fprintf(v, "PASS %llu\n", ticks);
	fclose(v);
	return why ? 1 : 0;
}
