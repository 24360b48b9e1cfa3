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
	while (!stop) {
		ticks++;
		int n = snprintf(line, sizeof(line), "%llu\n", ticks);
		pwrite(prog, line, n, 0);
		sleep_ns(10000000L, &stop);
	}
	const char *why = NULL;
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
