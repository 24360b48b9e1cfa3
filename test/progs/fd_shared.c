/*
 * fd_shared: open file descriptions shared between fds, and between
 * processes, must be shared again after a restore.
 *
 *   fd_shared PROGRESS VERDICT DIR [fork]
 *
 *   20, 21  one description of DIR/shared (dup2): offset 5
 *   22      another description of the same file: offset 2
 *   23, 24  one description of DIR/log, O_WRONLY|O_APPEND; 24 close-on-exec
 * With "fork", a child holds 20 and 21 too (it sleeps until killed).
 *
 * Check: offsets, flags and close-on-exec as set up; moving the offset of
 * 20 moves 21 (and the child's 20), not 22; O_NONBLOCK set through 21 shows
 * on 20.
 */
#include "fdprog.h"

static pid_t child;

static void setup(const char *arg)
{
	int fd = must(open("shared", O_RDWR | O_CREAT | O_TRUNC, 0644), "shared");
	if (write(fd, "0123456789abcdef", 16) != 16)
		die("write shared");
	at(fd, 20);
	must(dup2(20, 21), "dup2 21");
	must(lseek(20, 5, SEEK_SET), "lseek 20");
	at(must(open("shared", O_RDONLY), "shared again"), 22);
	must(lseek(22, 2, SEEK_SET), "lseek 22");
	at(must(open("log", O_WRONLY | O_CREAT | O_APPEND, 0644), "log"), 23);
	must(dup3(23, 24, O_CLOEXEC), "dup3 24");
	if (arg && !strcmp(arg, "fork")) {
		child = must(fork(), "fork");
		if (child == 0) {
			for (;;)
				pause();
		}
	}
}

static off_t pos(int fd)
{
	return lseek(fd, 0, SEEK_CUR);
}

static void check(void)
{
	if (pos(20) != 5 || pos(21) != 5 || pos(22) != 2)
		fail("offsets 20:%ld 21:%ld 22:%ld, want 5 5 2", (long)pos(20), (long)pos(21), (long)pos(22));
	if ((fcntl(20, F_GETFD) & FD_CLOEXEC) || (fcntl(21, F_GETFD) & FD_CLOEXEC) ||
	    (fcntl(23, F_GETFD) & FD_CLOEXEC) || !(fcntl(24, F_GETFD) & FD_CLOEXEC))
		fail("close-on-exec flags are wrong");
	if (!(fcntl(23, F_GETFL) & O_APPEND) || (fcntl(23, F_GETFL) & O_ACCMODE) != O_WRONLY)
		fail("log flags %#o", fcntl(23, F_GETFL));
	lseek(20, 9, SEEK_SET);
	if (pos(21) != 9)
		fail("fds 20 and 21 no longer share their offset (21 at %ld)", (long)pos(21));
	if (pos(22) != 2)
		fail("fd 22 moved with 20: it should have its own description");
	char c;
	if (read(21, &c, 1) != 1 || c != '9')
		fail("read through 21 after seeking 20");
	fcntl(21, F_SETFL, O_NONBLOCK);
	if (!(fcntl(20, F_GETFL) & O_NONBLOCK))
		fail("O_NONBLOCK set through 21 does not show on 20");
	if (fcntl(22, F_GETFL) & O_NONBLOCK)
		fail("O_NONBLOCK set through 21 shows on 22");
	if (write(24, "x", 1) != 1 || pos(23) != 1)
		fail("appending through 24 did not move 23 (at %ld)", (long)pos(23));
	if (child) {
		lseek(21, 3, SEEK_SET);
		if (fd_pos(child, 20) != 3 || fd_pos(child, 21) != 3)
			fail("the child's fds 20/21 are at %ld/%ld after the parent moved to 3", fd_pos(child, 20), fd_pos(child, 21));
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
}
