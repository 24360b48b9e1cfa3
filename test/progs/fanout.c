/*
 * fanout: a scale subject for crpipe: NPROC processes (the root and its
 * children), or one process with NTHREADS threads.
 *
 *   fanout procs|threads N PROGRESS
 *
 * Each child or thread touches 64 KiB of its own memory and sleeps; the
 * root ticks PROGRESS every 10 ms until killed.
 */
#include "common.h"

#include <pthread.h>
#include <signal.h>

static void touch_and_sleep(void)
{
	char *p = malloc(64 << 10);
	memset(p, 1, 64 << 10);
	for (;;)
		sleep_ns(1000000000L, NULL);
}

static void *thread_main(void *arg)
{
	(void)arg;
	touch_and_sleep();
	return NULL;
}

int main(int argc, char **argv)
{
	close_inherited();
	if (argc != 4) {
		fprintf(stderr, "usage: fanout procs|threads N PROGRESS\n");
		return 2;
	}
	int n = atoi(argv[2]);
	detach();
	int prog = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (prog < 0)
		return 2;
	for (int i = 1; i < n; i++) {
		if (strcmp(argv[1], "threads") == 0) {
			pthread_attr_t a;
			pthread_attr_init(&a);
			pthread_attr_setstacksize(&a, 128 << 10);
			pthread_t t;
			if (pthread_create(&t, &a, thread_main, NULL) != 0)
				return 2;
		} else if (fork() == 0) {
			close(prog);
			touch_and_sleep();
		}
	}
	unsigned long long ticks = 0;
	char line[32];
	for (;;) {
		ticks++;
		int len = snprintf(line, sizeof(line), "%llu\n", ticks);
		pwrite(prog, line, len, 0);
		sleep_ns(10000000L, NULL);
	}
}
