/*
 * pidfd: pidfds of a child survive a checkpoint, as pidfds of the restored
 * child (Go's os/exec holds one for every child it started).
 *
 *   pidfd PROGRESS VERDICT
 *
 * It forks a child that pauses, opens a pidfd of it (blocking), another
 * with PIDFD_NONBLOCK, and dups the first; and a second child that exits
 * with status 7 at once and stays a zombie, with a pidfd of it. The check:
 * each pidfd's fdinfo names its child's pid (as this process sees it), a
 * null signal through each of the first reaches it, waitid on the
 * non-blocking one says EAGAIN (the child runs), and the zombie's says it
 * exited with 7 (WNOWAIT). On SIGTERM it then kills the first child
 * through the first pidfd and reaps it through the dup, and reaps the
 * zombie through its pidfd: each must refer to its child.
 */
#include "state.h"

#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static pid_t child, zombie;
static int pfd, nbfd, dupfd, zfd;

static int fdinfo_pid(int fd)
{
	char path[64], line[128];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	FILE *f = fopen(path, "r");
	int pid = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "Pid: %d", &pid) == 1)
			break;
	fclose(f);
	return pid;
}

static const char *check(char *why, size_t n)
{
	int fds[] = { pfd, nbfd, dupfd };
	for (unsigned i = 0; i < 3; i++) {
		if (fdinfo_pid(fds[i]) != child) {
			snprintf(why, n, "pidfd %d refers to pid %d, want the child %d", fds[i], fdinfo_pid(fds[i]), child);
			return why;
		}
		if (syscall(SYS_pidfd_send_signal, fds[i], 0, NULL, 0) != 0) {
			snprintf(why, n, "a null signal through pidfd %d: %s", fds[i], strerror(errno));
			return why;
		}
	}
	if (!(fcntl(nbfd, F_GETFL) & O_NONBLOCK) || (fcntl(pfd, F_GETFL) & O_NONBLOCK)) {
		snprintf(why, n, "O_NONBLOCK: %#x and %#x, want only the second", fcntl(pfd, F_GETFL), fcntl(nbfd, F_GETFL));
		return why;
	}
	siginfo_t si;
	if (syscall(SYS_waitid, P_PIDFD, nbfd, &si, WEXITED, NULL) != -1 || errno != EAGAIN) {
		snprintf(why, n, "waitid on the PIDFD_NONBLOCK pidfd: %s, want EAGAIN", strerror(errno));
		return why;
	}
	if (fdinfo_pid(zfd) != zombie) {
		snprintf(why, n, "the zombie's pidfd refers to pid %d, want %d", fdinfo_pid(zfd), zombie);
		return why;
	}
	memset(&si, 0, sizeof si);
	if (syscall(SYS_waitid, P_PIDFD, zfd, &si, WEXITED | (got_term ? 0 : WNOWAIT), NULL) != 0 || si.si_pid != zombie ||
	    si.si_code != CLD_EXITED || si.si_status != 7) {
		snprintf(why, n, "waitid through the zombie's pidfd: pid %d code %d status %d (%s), want pid %d exited 7",
			 si.si_pid, si.si_code, si.si_status, strerror(errno), zombie);
		return why;
	}
	if (!got_term)
		return NULL;
	if (syscall(SYS_pidfd_send_signal, pfd, SIGKILL, NULL, 0) != 0) {
		snprintf(why, n, "SIGKILL through the pidfd: %s", strerror(errno));
		return why;
	}
	memset(&si, 0, sizeof si);
	if (syscall(SYS_waitid, P_PIDFD, dupfd, &si, WEXITED, NULL) != 0 || si.si_pid != child || si.si_status != SIGKILL) {
		snprintf(why, n, "waitid through the dup: pid %d status %d (%s), want pid %d killed", si.si_pid, si.si_status, strerror(errno), child);
		return why;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "pidfd PROGRESS VERDICT");
	child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		signal(SIGTERM, SIG_DFL);
		for (;;)
			pause();
	}
	pfd = syscall(SYS_pidfd_open, child, 0);
	nbfd = syscall(SYS_pidfd_open, child, PIDFD_NONBLOCK);
	if (pfd < 0 || nbfd < 0)
		die("pidfd_open");
	dupfd = dup(pfd);
	if (dupfd < 0)
		die("dup");
	zombie = fork();
	if (zombie < 0)
		die("fork");
	if (zombie == 0)
		_exit(7);
	siginfo_t si;
	if (waitid(P_PID, zombie, &si, WEXITED | WNOWAIT) != 0)
		die("waitid");
	zfd = syscall(SYS_pidfd_open, zombie, 0);
	if (zfd < 0)
		die("pidfd_open of the zombie");
	return state_run("pidfd", check);
}
