/*
 * fd_pty: a pseudo-terminal pair inside the process tree, which is also
 * the controlling terminal of the program's session.
 *
 *   fd_pty PROGRESS VERDICT DIR [fork]
 *
 *   20  the master (/dev/ptmx), O_NONBLOCK
 *   21  the slave, opened without O_NOCTTY: the session's controlling
 *       terminal; raw mode, window 33x101
 * With "fork": a child in its own process group is the terminal's
 * foreground group (the parent then only reads through the master).
 * Check: same pty index, termios, window size, controlling terminal
 * (tcgetsid of the slave; the child's too: it inherited it) and foreground
 * group; bytes pass both ways.
 */
#include "fdprog.h"

#include <sys/ioctl.h>
#include <termios.h>

static char name[64];
static struct termios tio0;
static pid_t child;

static void setup(const char *arg)
{
	at(must(posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK), "posix_openpt"), 20);
	must(grantpt(20), "grantpt");
	must(unlockpt(20), "unlockpt");
	snprintf(name, sizeof name, "%s", ptsname(20));
	int s = must(open(name, O_RDWR), name); /* becomes our controlling terminal */
	at(s, 21);
	struct termios t;
	must(tcgetattr(21, &t), "tcgetattr");
	cfmakeraw(&t);
	must(tcsetattr(21, TCSANOW, &t), "tcsetattr");
	tcgetattr(21, &tio0);
	struct winsize ws = { .ws_row = 33, .ws_col = 101 };
	must(ioctl(21, TIOCSWINSZ, &ws), "TIOCSWINSZ");
	if (arg && !strcmp(arg, "fork")) {
		child = must(fork(), "fork");
		if (child == 0) {
			setpgid(0, 0);
			for (;;)
				pause();
		}
		setpgid(child, child);
		signal(SIGTTOU, SIG_IGN);
		must(tcsetpgrp(21, child), "tcsetpgrp");
	}
}

/* tty_nr is field 7 of /proc/PID/stat: the controlling terminal. */
static long tty_nr(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	long v = -1;
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %ld", &v) != 1)
		return -1;
	return v;
}

static void check(void)
{
	const char *n = ptsname(20);
	if (!n || strcmp(n, name))
		fail("master 20 is %s, was %s", n ? n : "?", name);
	char link[64];
	int l = readlink("/proc/self/fd/21", link, sizeof link - 1);
	link[l > 0 ? l : 0] = 0;
	if (strcmp(link, name))
		fail("fd 21 is %s, want %s", link, name);
	struct termios t;
	if (tcgetattr(21, &t) || t.c_iflag != tio0.c_iflag || t.c_oflag != tio0.c_oflag || t.c_cflag != tio0.c_cflag ||
	    t.c_lflag != tio0.c_lflag || memcmp(t.c_cc, tio0.c_cc, sizeof t.c_cc))
		fail("termios of fd 21 changed (lflag %#x, was %#x)", t.c_lflag, tio0.c_lflag);
	struct winsize ws;
	if (ioctl(21, TIOCGWINSZ, &ws) || ws.ws_row != 33 || ws.ws_col != 101)
		fail("window %dx%d, want 33x101", ws.ws_row, ws.ws_col);
	if (!(fcntl(20, F_GETFL) & O_NONBLOCK))
		fail("master lost O_NONBLOCK");
	/* tcgetsid works only on the caller's controlling terminal. */
	if (tcgetsid(21) != getsid(0))
		fail("fd 21 is not the session's controlling terminal (tcgetsid %d: %s)", tcgetsid(21), strerror(errno));
	int tty = open("/dev/tty", O_RDWR | O_NOCTTY);
	if (tty < 0)
		fail("no controlling terminal: /dev/tty: %s", strerror(errno));
	else
		close(tty);
	if (child && tty_nr(child) != tty_nr(getpid()))
		fail("the child's controlling terminal is %#lx, its session's %#lx", tty_nr(child), tty_nr(getpid()));
	pid_t fg = tcgetpgrp(21);
	if (fg != (child ? child : getpgrp()))
		fail("foreground group %d, want %d", fg, child ? child : getpgrp());
	if (write(21, "out", 3) != 3)
		fail("write 21: %s", strerror(errno));
	char buf[16];
	ssize_t r = -1;
	for (int i = 0; i < 1000 && r < 0; i++) {
		r = read(20, buf, sizeof buf);
		if (r < 0)
			sleep_ns(1000000, NULL);
	}
	if (r != 3 || memcmp(buf, "out", 3))
		fail("master read %zd bytes", r);
	if (!child) {
		if (write(20, "in", 2) != 2)
			fail("write 20: %s", strerror(errno));
		r = read(21, buf, sizeof buf);
		if (r != 2 || memcmp(buf, "in", 2))
			fail("slave read %zd bytes", r);
	} else {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
}
