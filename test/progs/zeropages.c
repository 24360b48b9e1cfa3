/*
 * zeropages: pages written with zeros, which cr-pages leaves out of the
 * image, must read as zeros after restore — also in a child whose memory
 * came from its parent by fork.
 *
 *   zeropages PROGRESS VERDICT
 *
 * The parent fills 64 pages of private anonymous memory with a pattern and
 * forks. The child then writes zeros over pages 0-15 (the parent's copies
 * keep the pattern), zeros but a last byte 1 over page 16, and the parent
 * writes zeros over pages 32-39 (the child's copies keep the pattern). The
 * child also maps 32 pages of its own: zeros written over 0-7, a pattern
 * over 8-15, the rest never touched. The parent ticks PROGRESS every 10 ms;
 * on SIGTERM each process checks its own memory, the child reports by its
 * exit status, and the parent writes "PASS <ticks>" or "FAIL <why>".
 */
#include "common.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define PG 4096UL
#define PAGES 64
#define OWN 32

static volatile int stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static uint64_t *word(char *m, size_t page, size_t i) { return (uint64_t *)(m + page * PG) + i; }

static void fill(char *m, size_t from, size_t to, uint64_t seed)
{
	for (size_t p = from; p < to; p++)
		for (size_t i = 0; i < PG / 8; i++)
			*word(m, p, i) = mix64(seed + p * PG + i);
}

/* check returns NULL when pages [from, to) hold what fill(seed) or zeros wrote. */
static const char *check(char *m, size_t from, size_t to, uint64_t seed, int zero, const char *why)
{
	for (size_t p = from; p < to; p++)
		for (size_t i = 0; i < PG / 8; i++)
			if (*word(m, p, i) != (zero ? 0 : mix64(seed + p * PG + i)))
				return why;
	return NULL;
}

static const char *child_check(char *m, char *own)
{
	const char *why = check(m, 0, 16, 1, 1, "child: pages written with zeros are not zeros");
	for (size_t i = 0; !why && i < PG - 1; i++)
		if (m[16 * PG + i] != 0)
			why = "child: page 16 is not zeros";
	if (!why && m[17 * PG - 1] != 1)
		why = "child: page 16 lost its last byte";
	if (!why)
		why = check(m, 17, PAGES, 1, 0, "child: inherited pattern damaged");
	if (!why)
		why = check(own, 0, 8, 2, 1, "child: own pages written with zeros are not zeros");
	if (!why)
		why = check(own, 8, 16, 2, 0, "child: own pattern damaged");
	if (!why)
		why = check(own, 16, OWN, 2, 1, "child: untouched pages are not zeros");
	return why;
}

int main(int argc, char **argv)
{
	close_inherited();
	if (argc != 3) {
		fprintf(stderr, "usage: zeropages PROGRESS VERDICT\n");
		return 2;
	}
	detach();
	int prog = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (prog < 0)
		return 2;
	char *m = mmap(NULL, PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return 2;
	fill(m, 0, PAGES, 1);
	signal(SIGTERM, on_term);
	int ready[2];
	if (pipe(ready) < 0)
		return 2;
	pid_t child = fork();
	if (child < 0)
		return 2;
	if (child == 0) {
		close(ready[0]);
		char *own = mmap(NULL, OWN * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (own == MAP_FAILED)
			_exit(2);
		memset(m, 0, 16 * PG);
		memset(m + 16 * PG, 0, PG);
		m[17 * PG - 1] = 1;
		memset(own, 0, 8 * PG);
		fill(own, 8, 16, 2);
		close(ready[1]);
		while (!stop)
			pause();
		_exit(child_check(m, own) ? 1 : 0);
	}
	close(ready[1]);
	char c;
	while (read(ready[0], &c, 1) < 0 && errno == EINTR)
		;
	close(ready[0]);
	memset(m + 32 * PG, 0, 8 * PG);
	uint64_t ticks = 0;
	char line[32];
	while (!stop) {
		ticks++;
		int len = snprintf(line, sizeof(line), "%llu\n", (unsigned long long)ticks);
		pwrite(prog, line, len, 0);
		sleep_ns(10000000L, &stop);
	}
	const char *why = check(m, 0, 32, 1, 0, "parent: pattern damaged");
	if (!why)
		why = check(m, 32, 40, 1, 1, "parent: pages written with zeros are not zeros");
	if (!why)
		why = check(m, 40, PAGES, 1, 0, "parent: pattern damaged");
	kill(child, SIGTERM);
	int st;
	if (waitpid(child, &st, 0) != child)
		why = why ? why : "parent: child gone";
	else if (!why && (!WIFEXITED(st) || WEXITSTATUS(st) != 0))
		why = "the child's memory is wrong (it checks: zeros where zeros were written, its patterns elsewhere)";
	FILE *v = fopen(argv[2], "w");
	if (!v)
		return 2;
	if (why)
		fprintf(v, "FAIL %s\n", why);
	else
		fprintf(v, "PASS %llu\n", (unsigned long long)ticks);
	fclose(v);
	return why ? 1 : 0;
}
