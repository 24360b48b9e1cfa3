/*
 * cloneshare: two processes that share their fd table (clone with
 * CLONE_FILES) or their working directory, root and umask (CLONE_FS),
 * which crpipe refuses to checkpoint: a restore gives each its own.
 *
 *   cloneshare PROGRESS VERDICT files|fs
 *
 * The child sleeps until it is killed; the parent ticks and, on SIGTERM,
 * kills the child and writes "PASS <ticks>".
 */
#include "state.h"

#include <sched.h>
#include <sys/syscall.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	state_init(argc, argv, 4, "cloneshare PROGRESS VERDICT files|fs");
	long flags = !strcmp(argv[3], "files") ? CLONE_FILES : !strcmp(argv[3], "fs") ? CLONE_FS : 0;
	if (!flags) {
		fprintf(stderr, "cloneshare: files or fs, not %s\n", argv[3]);
		return 2;
	}
	/* fork semantics (a copy of the memory), sharing one more thing */
	pid_t child = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
	if (child < 0)
		die("clone");
	if (child == 0) {
		for (;;)
			pause();
	}
	while (!got_term) {
		tick();
		sleep_ns(TICK_NS, (volatile int *)&got_term);
	}
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	return verdict("PASS %llu", (unsigned long long)ticks);
}
