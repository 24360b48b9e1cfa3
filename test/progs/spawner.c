/*
 * spawner: a process that is not a lone single-threaded one, which this
 * stage of crpipe must refuse to dump (and leave running where it was).
 *
 *   spawner threads|child PROGRESS
 *
 * threads: starts a second thread; child: forks a child (which dies with
 * its parent). Then ticks PROGRESS every 10 ms like counter, and exits 0 on
 * SIGTERM.
 */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>

static volatile sig_atomic_t got_term;

static void on_term(int sig)
{
	(void)sig;
	got_term = 1;
}

static void *idle(void *arg)
{
	(void)arg;
	for (;;)
		sleep_ns(1000000000L, NULL);
	return NULL;
}

int main(int argc, char **argv)
{
	close_inherited();
	if (argc != 3 || (strcmp(argv[1], "threads") && strcmp(argv[1], "child"))) {
		fprintf(stderr, "usage: spawner threads|child PROGRESS\n");
		return 2;
	}
	int prog = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (prog < 0) {
		perror(argv[2]);
		return 1;
	}
	detach();
	struct sigaction sa = { .sa_handler = on_term };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	if (!strcmp(argv[1], "threads")) {
		pthread_t t;
		if (pthread_create(&t, NULL, idle, NULL) != 0)
			return 1;
	} else {
		pid_t parent = getpid();
		pid_t c = fork();
		if (c < 0)
			return 1;
		if (c == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != parent)
				_exit(0);
			idle(NULL);
		}
	}
	char line[32];
	for (unsigned long long n = 1; !got_term; n++) {
		snprintf(line, sizeof line, "%20llu\n", n);
		if (pwrite(prog, line, 21, 0) != 21)
			return 1;
		sleep_ns(10000000L, (volatile int *)&got_term);
	}
	return 0;
}
