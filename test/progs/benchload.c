/*
 * benchload: the workloads of make bench (bench/), each checking its own
 * memory after a restore.
 *
 *   benchload READY VERDICT procs N MB KIND    N processes (the root and N-1
 *                                              children), MB MiB each
 *   benchload READY VERDICT threads N MB KIND  one process, N threads, MB MiB
 *   benchload READY VERDICT maps N             one process, N one-page
 *                                              mappings with gaps between them
 *
 * KIND is random (incompressible words), compressible (each 4 KiB page
 * repeats 4 words) or zero (every page touched, all zeros); with "-thp"
 * appended (random-thp) the memory is given MADV_HUGEPAGE first. Process i fills
 * its memory from a seed of its own. When everything is set up the root
 * writes "ADDR LEN" of its own memory to READY (hex, decimal; for the
 * harness's process_vm_readv limit) and everybody sleeps.
 *
 * On SIGTERM the root passes SIGTERM to its children, checks its own memory
 * and its threads, collects the children's verdicts (their exit statuses)
 * and writes "PASS" or "FAIL <why>" to VERDICT.
 */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

static volatile int stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

enum kind { RANDOM, COMPRESSIBLE, ZERO };

static uint64_t word(enum kind k, uint64_t seed, size_t i)
{
	switch (k) {
	case RANDOM:
		return mix64(i ^ (seed << 40));
	case COMPRESSIBLE:
		return mix64(((i / 512) % 64) ^ (i % 4) ^ (seed << 40));
	default:
		return 0;
	}
}

static int huge; /* KIND ends in "-thp": MADV_HUGEPAGE on the memory */

static uint64_t *fill(size_t len, enum kind k, uint64_t seed)
{
	if (len == 0)
		return NULL;
	uint64_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	if (huge && madvise(m, len, MADV_HUGEPAGE) != 0) {
		perror("madvise");
		exit(2);
	}
	size_t n = len / 8;
	if (k == ZERO) {
		for (size_t i = 0; i < n; i += 512)
			*(volatile uint64_t *)&m[i] = 0;
	} else {
		for (size_t i = 0; i < n; i++)
			m[i] = word(k, seed, i);
	}
	return m;
}

/* check returns the index of the first wrong word, or -1. */
static long check(const uint64_t *m, size_t len, enum kind k, uint64_t seed)
{
	for (size_t i = 0; i < len / 8; i++)
		if (m[i] != word(k, seed, i))
			return (long)i;
	return -1;
}

static void sleep_until_stop(void)
{
	while (!stop)
		sleep_ns(1000000000L, &stop);
}

/* threads: each sleeps until the process is told to stop. */
static volatile int threads_seen;

static void *sleeper(void *arg)
{
	(void)arg;
	__atomic_add_fetch(&threads_seen, 1, __ATOMIC_SEQ_CST);
	while (!stop)
		pause();
	return NULL;
}

static int write_ready(const char *path, void *addr, size_t len)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f || fprintf(f, "%lx %zu\n", (unsigned long)addr, len) < 0 || fclose(f) != 0 || rename(tmp, path) != 0)
		return -1;
	return 0;
}

static int verdict(const char *path, const char *why)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *v = fopen(tmp, "w");
	if (!v)
		return 2;
	if (why)
		fprintf(v, "FAIL %s\n", why);
	else
		fprintf(v, "PASS\n");
	fclose(v);
	rename(tmp, path);
	return why ? 1 : 0;
}

static enum kind parse_kind(const char *arg)
{
	char s[64];
	snprintf(s, sizeof s, "%s", arg);
	size_t n = strlen(s);
	if (n > 4 && !strcmp(s + n - 4, "-thp")) {
		huge = 1;
		s[n - 4] = 0;
	}
	if (!strcmp(s, "random"))
		return RANDOM;
	if (!strcmp(s, "compressible"))
		return COMPRESSIBLE;
	if (!strcmp(s, "zero"))
		return ZERO;
	fprintf(stderr, "benchload: unknown kind %s\n", s);
	exit(2);
}

static void usage(void)
{
	fprintf(stderr, "usage: benchload READY VERDICT procs N MB KIND | threads N MB KIND | maps N\n");
	exit(2);
}

int main(int argc, char **argv)
{
	close_inherited();
	if (argc < 5)
		usage();
	const char *ready = argv[1], *vpath = argv[2], *mode = argv[3];
	long n = strtol(argv[4], NULL, 10);
	if (n < 1)
		usage();
	size_t len = 0;
	enum kind k = RANDOM;
	if (!strcmp(mode, "procs") || !strcmp(mode, "threads")) {
		if (argc != 7)
			usage();
		len = (size_t)strtoul(argv[5], NULL, 10) << 20;
		k = parse_kind(argv[6]);
	} else if (strcmp(mode, "maps") || argc != 5) {
		usage();
	}
	detach();
	signal(SIGTERM, on_term);

	if (!strcmp(mode, "maps")) {
		/* n one-page mappings, each followed by an unmapped page. */
		long pg = 4096;
		char *base = mmap(NULL, 2 * n * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (base == MAP_FAILED)
			return 2;
		for (long i = 0; i < n; i++) {
			munmap(base + (2 * i + 1) * pg, pg);
			if (mprotect(base + 2 * i * pg, pg, PROT_READ | PROT_WRITE) != 0)
				return 2;
			for (long j = 0; j < pg / 8; j++)
				((uint64_t *)(base + 2 * i * pg))[j] = word(RANDOM, 1, i * 512 + j);
		}
		if (write_ready(ready, base, 2 * n * pg) != 0)
			return 2;
		sleep_until_stop();
		for (long i = 0; i < n; i++)
			for (long j = 0; j < pg / 8; j++)
				if (((uint64_t *)(base + 2 * i * pg))[j] != word(RANDOM, 1, i * 512 + j))
					return verdict(vpath, "a mapping's contents changed");
		return verdict(vpath, NULL);
	}

	if (!strcmp(mode, "threads")) {
		uint64_t *m = fill(len, k, 0);
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setstacksize(&attr, 64 << 10);
		pthread_t *th = calloc(n, sizeof *th);
		for (long i = 1; i < n; i++)
			if (pthread_create(&th[i], &attr, sleeper, NULL) != 0) {
				perror("pthread_create");
				return 2;
			}
		while (__atomic_load_n(&threads_seen, __ATOMIC_SEQ_CST) < n - 1)
			sleep_ns(1000000L, NULL);
		if (write_ready(ready, m, len) != 0)
			return 2;
		sleep_until_stop();
		/* Wake the sleepers (their pause() returns on this signal) and join them. */
		for (long i = 1; i < n; i++)
			pthread_kill(th[i], SIGTERM);
		for (long i = 1; i < n; i++)
			pthread_join(th[i], NULL);
		if (m && check(m, len, k, 0) >= 0)
			return verdict(vpath, "memory changed");
		return verdict(vpath, NULL);
	}

	/* procs: children report readiness through a pipe that is closed
	 * before the root says ready, so no pipe is left to dump. */
	int p[2];
	if (pipe(p) != 0)
		return 2;
	pid_t *kids = calloc(n, sizeof *kids);
	for (long i = 1; i < n; i++) {
		pid_t c = fork();
		if (c < 0) {
			perror("fork");
			return 2;
		}
		if (c == 0) {
			close(p[0]);
			uint64_t *m = fill(len, k, i);
			if (write(p[1], "x", 1) != 1)
				_exit(2);
			close(p[1]);
			sleep_until_stop();
			_exit(m && check(m, len, k, i) >= 0 ? 1 : 0);
		}
		kids[i] = c;
	}
	close(p[1]);
	uint64_t *m = fill(len, k, 0);
	char c;
	for (long i = 1; i < n; i++)
		if (read(p[0], &c, 1) != 1)
			return 2;
	close(p[0]);
	if (write_ready(ready, m, len) != 0)
		return 2;
	sleep_until_stop();
	for (long i = 1; i < n; i++)
		kill(kids[i], SIGTERM);
	const char *why = NULL;
	if (m && check(m, len, k, 0) >= 0)
		why = "the root's memory changed";
	for (long i = 1; i < n; i++) {
		int st;
		if (waitpid(kids[i], &st, 0) != kids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			if (!why)
				why = "a child's memory changed (or it died)";
	}
	return verdict(vpath, why);
}
