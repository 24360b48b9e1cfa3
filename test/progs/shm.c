/*
 * shm: a parent and a child sharing MAP_SHARED anonymous memory, for
 * crpipe's restore of memory shared between processes.
 *
 *   shm PROGRESS VERDICT
 *
 * The child echoes every token the parent writes into the shared page and
 * counts its echoes there. On SIGTERM the parent checks that the shared
 * pattern is intact and that a fresh token is echoed (so writes cross
 * between the two processes after restore), then writes PASS or FAIL.
 */
#include "common.h"

#include <signal.h>
#include <sys/mman.h>

#define SIZE (4 << 20)

struct shared {
	volatile uint64_t token, echo, echoes;
	uint64_t pattern[];
};

static volatile int stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

int main(int argc, char **argv)
{
	close_inherited();
	if (argc != 3) {
		fprintf(stderr, "usage: shm PROGRESS VERDICT\n");
		return 2;
	}
	detach();
	int prog = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (prog < 0)
		return 2;
	struct shared *s = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (s == MAP_FAILED)
		return 2;
	size_t n = (SIZE - sizeof(*s)) / 8;
	for (size_t i = 0; i < n; i++)
		s->pattern[i] = mix64(i);
	pid_t child = fork();
	if (child == 0) {
		for (;;) {
			if (s->echo != s->token) {
				s->echo = s->token;
				s->echoes++;
			}
			sleep_ns(1000000L, NULL);
		}
	}
	signal(SIGTERM, on_term);
	uint64_t ticks = 0;
	char line[32];
	while (!stop) {
		ticks++;
		s->token = ticks;
		int len = snprintf(line, sizeof(line), "%llu\n", (unsigned long long)ticks);
		pwrite(prog, line, len, 0);
		sleep_ns(10000000L, &stop);
	}
	const char *why = NULL;
	for (size_t i = 0; i < n && !why; i++)
		if (s->pattern[i] != mix64(i))
			why = "shared pattern damaged";
	uint64_t want = ticks + 1000000;
	s->token = want;
	for (int i = 0; i < 2000 && s->echo != want; i++)
		sleep_ns(1000000L, NULL);
	if (!why && s->echo != want)
		why = "the child no longer sees the parent's writes (memory not shared)";
	kill(child, SIGKILL);
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
