/*
 * fd_shelljob: a job started from an interactive shell: its stdin, stdout
 * and stderr are one open file description of the shell's terminal.
 * Dumped with cr-files --shell-job, it is restored onto the terminal
 * cr-restore runs on.
 *
 *   fd_shelljob PROGRESS VERDICT DIR     (stdio on a terminal)
 *
 * Check: fds 0, 1 and 2 are a terminal, one description (O_NONBLOCK set
 * through 0 shows on 2); then it writes "bye from the job" to stdout.
 */
#define FDPROG_KEEP_STDIO
#include "fdprog.h"

static void setup(const char *arg)
{
	(void)arg;
	for (int fd = 0; fd <= 2; fd++)
		if (!isatty(fd))
			die("stdio is not a terminal");
}

static void check(void)
{
	for (int fd = 0; fd <= 2; fd++)
		if (!isatty(fd))
			fail("fd %d is not a terminal after restore", fd);
	int fl = fcntl(0, F_GETFL);
	fcntl(0, F_SETFL, fl | O_NONBLOCK);
	if (!(fcntl(2, F_GETFL) & O_NONBLOCK))
		fail("fds 0 and 2 are not one description any more");
	fcntl(0, F_SETFL, fl);
	const char *bye = "bye from the job\n";
	if (write(1, bye, strlen(bye)) != (ssize_t)strlen(bye))
		fail("write to the terminal: %s", strerror(errno));
}
