/*
 * fd_shelljob: a job started from an interactive shell: its stdin, stdout
 * and stderr are one open file description of the shell's terminal.
 * Dumped with cr-files --shell-job, it is restored onto the terminal
 * cr-restore runs on.
 *
 *   fd_shelljob PROGRESS VERDICT DIR [devtty]   (stdio on a terminal)
 *
 * With "devtty" the terminal is its controlling terminal (its shell's
 * session's), and fd 20 is /dev/tty.
 * Check: fds 0, 1 and 2 are a terminal, one description (O_NONBLOCK set
 * through 0 shows on 2); then it writes "bye from the job" to stdout. With
 * "devtty": fd 20 is /dev/tty on the terminal of fd 0, /dev/tty opens, and
 * it writes "bye via /dev/tty" to fd 20.
 */
#define FDPROG_KEEP_STDIO
#include "fdprog.h"

#include <sys/ioctl.h>
#include <sys/sysmacros.h>

static int devtty;

static void setup(const char *arg)
{
	for (int fd = 0; fd <= 2; fd++)
		if (!isatty(fd))
			die("stdio is not a terminal");
	if (arg && !strcmp(arg, "devtty")) {
		devtty = 1;
		at(must(open("/dev/tty", O_RDWR), "/dev/tty"), 20);
	}
}

static void check_devtty(void)
{
	struct stat st, s0;
	unsigned int dev = 0;
	if (fstat(20, &st) || st.st_rdev != makedev(5, 0))
		fail("fd 20 is not /dev/tty");
	else if (fstat(0, &s0) || ioctl(20, TIOCGDEV, &dev) || dev != s0.st_rdev)
		fail("fd 20 is /dev/tty on device %#x, stdin is %#lx", dev, (unsigned long)s0.st_rdev);
	int fd = open("/dev/tty", O_RDWR);
	if (fd < 0)
		fail("no controlling terminal after restore: /dev/tty: %s", strerror(errno));
	else
		close(fd);
	const char *bye = "bye via /dev/tty\n";
	if (write(20, bye, strlen(bye)) != (ssize_t)strlen(bye))
		fail("write to /dev/tty: %s", strerror(errno));
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
	if (devtty)
		check_devtty();
}
