/*
 * ptracer: a stand-in debugger for tests that need a process traced by
 * someone else. It attaches to PID with PTRACE_SEIZE (which does not stop
 * it), creates READY, and waits to be killed; the kernel detaches the
 * tracee when it dies.
 *
 *   ptracer PID READY
 */
#include "common.h"

#include <sys/ptrace.h>

int main(int argc, char **argv)
{
	close_inherited();
	if (argc != 3) {
		fprintf(stderr, "usage: ptracer PID READY\n");
		return 2;
	}
	pid_t pid = atoi(argv[1]);
	if (ptrace(PTRACE_SEIZE, pid, 0, 0) != 0) {
		fprintf(stderr, "ptracer: seize %d: %s\n", pid, strerror(errno));
		return 1;
	}
	int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		fprintf(stderr, "ptracer: %s: %s\n", argv[2], strerror(errno));
		return 1;
	}
	close(fd);
	for (;;)
		pause();
}
