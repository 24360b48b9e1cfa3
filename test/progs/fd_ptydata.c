/*
 * fd_ptydata: unread data in two pseudo-terminal pairs inside the process,
 * and a /dev/tty fd on the controlling terminal.
 *
 *   fd_ptydata PROGRESS VERDICT DIR
 *
 *   20  master A, O_NONBLOCK           21  slave A: canonical, ECHO, ICRNL,
 *                                          ONLCR (a new pty's termios); the
 *                                          session's controlling terminal
 *   22  master B, O_NONBLOCK           23  slave B: raw (cfmakeraw)
 *   24  /dev/tty, opened on slave A
 *
 * Queued at setup, never read before the check:
 *   A input:  "hello world\n", "cr line\r" (ICRNL makes it a line), and
 *             the unfinished line "partial"
 *   A output: their echo, then "out one\n" written to the slave (ONLCR)
 *   B input:  bytes that would be special in canonical mode: CR, ^C, DEL,
 *             ^D, ^Q, ^S, 0xff, NUL
 *   B output: "raw out\n" as written (no OPOST)
 * Check: both termios unchanged; every queue holds exactly those bytes, in
 * the same lines; the unfinished line is still unfinished (no read until
 * the master ends it); fd 24 is /dev/tty on slave A and writes reach master
 * A.
 */
#include "fdprog.h"

#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <termios.h>

static struct termios tioA, tioB;

static const char inB[] = "raw\r\x03\x7f\x04\x11\x13\xff\x00 end";
#define IN_B_LEN (sizeof inB - 1)
static const char outA[] = "hello world\r\ncr line\r\npartialout one\r\n";
static const char outB[] = "raw out\n";

static void openpty_at(int m, int s, int ctty)
{
	at(must(posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK), "posix_openpt"), m);
	must(grantpt(m), "grantpt");
	must(unlockpt(m), "unlockpt");
	at(must(open(ptsname(m), ctty ? O_RDWR : O_RDWR | O_NOCTTY), "open slave"), s);
}

/* settle waits until fd's queue holds n bytes (the kernel's flip buffer
 * worker moves what the other side wrote). */
static void settle(int fd, int n)
{
	int q = -1;
	for (int i = 0; i < 1000; i++) {
		if (ioctl(fd, FIONREAD, &q) == 0 && q >= n)
			return;
		sleep_ns(1000000, NULL);
	}
	fprintf(stderr, "queue of fd %d holds %d bytes, want %d\n", fd, q, n);
	exit(2);
}

static void setup(const char *arg)
{
	(void)arg;
	openpty_at(20, 21, 1);
	openpty_at(22, 23, 0);
	tcgetattr(21, &tioA);
	if (!(tioA.c_lflag & ICANON) || !(tioA.c_lflag & ECHO) || !(tioA.c_oflag & ONLCR) || !(tioA.c_iflag & ICRNL))
		die("a new pty is not canonical with ECHO, ICRNL and ONLCR");
	struct termios t = tioA;
	cfmakeraw(&t);
	must(tcsetattr(23, TCSANOW, &t), "tcsetattr B");
	tcgetattr(23, &tioB);
	at(must(open("/dev/tty", O_RDWR), "/dev/tty"), 24);

	const char *in = "hello world\ncr line\rpartial";
	must(write(20, in, strlen(in)), "write A");
	settle(20, strlen("hello world\r\ncr line\r\npartial")); /* the echo */
	must(write(21, "out one\n", 8), "write slave A");
	settle(20, strlen(outA));
	must(write(22, inB, IN_B_LEN), "write B");
	settle(23, IN_B_LEN);
	must(write(23, outB, strlen(outB)), "write slave B");
	settle(22, strlen(outB));
}

static int same_termios(const struct termios *a, const struct termios *b)
{
	return a->c_iflag == b->c_iflag && a->c_oflag == b->c_oflag && a->c_cflag == b->c_cflag &&
	       a->c_lflag == b->c_lflag && !memcmp(a->c_cc, b->c_cc, sizeof a->c_cc);
}

/* expect reads one read(2) from fd (non-blocking) and compares it. */
static void expect(int fd, const char *what, const char *want, size_t n)
{
	char buf[256];
	ssize_t r = read(fd, buf, sizeof buf);
	if (r < 0) {
		fail("%s: read fd %d: %s", what, fd, strerror(errno));
		return;
	}
	if ((size_t)r != n || memcmp(buf, want, n)) {
		buf[r > 0 && r < (ssize_t)sizeof buf ? r : 0] = 0;
		fail("%s: read %zd bytes \"%s\", want %zu", what, r, buf, n);
	}
}

static void check(void)
{
	struct termios t;
	if (tcgetattr(21, &t) || !same_termios(&t, &tioA))
		fail("termios of A changed (lflag %#x, was %#x; iflag %#x, was %#x)", t.c_lflag, tioA.c_lflag, t.c_iflag, tioA.c_iflag);
	if (tcgetattr(23, &t) || !same_termios(&t, &tioB))
		fail("termios of B changed (lflag %#x, was %#x)", t.c_lflag, tioB.c_lflag);
	fcntl(21, F_SETFL, fcntl(21, F_GETFL) | O_NONBLOCK);
	fcntl(23, F_SETFL, fcntl(23, F_GETFL) | O_NONBLOCK);

	expect(21, "A input line 1", "hello world\n", 12);
	expect(21, "A input line 2", "cr line\n", 8);
	char c;
	if (read(21, &c, 1) != -1 || errno != EAGAIN)
		fail("A: the unfinished line \"partial\" reads as a line");
	expect(20, "A output", outA, strlen(outA));
	expect(22, "B output", outB, strlen(outB));
	expect(23, "B input", inB, IN_B_LEN);

	/* End the unfinished line: it comes back whole, and echoed. */
	if (write(20, "\n", 1) != 1)
		fail("write master A: %s", strerror(errno));
	for (int i = 0; i < 1000; i++) {
		int q = 0;
		if (ioctl(21, FIONREAD, &q) == 0 && q > 0)
			break;
		sleep_ns(1000000, NULL);
	}
	expect(21, "A unfinished line", "partial\n", 8);

	struct stat st, sa;
	unsigned int dev = 0;
	if (fstat(24, &st) || st.st_rdev != makedev(5, 0))
		fail("fd 24 is not /dev/tty");
	else if (fstat(21, &sa) || ioctl(24, TIOCGDEV, &dev) || dev != sa.st_rdev)
		fail("fd 24 is /dev/tty on device %#x, want slave A %#lx", dev, (unsigned long)sa.st_rdev);
	if (write(24, "via tty\n", 8) != 8)
		fail("write /dev/tty: %s", strerror(errno));
	for (int i = 0; i < 1000; i++) {
		int q = 0;
		if (ioctl(20, FIONREAD, &q) == 0 && q >= (int)strlen("\r\nvia tty\r\n"))
			break;
		sleep_ns(1000000, NULL);
	}
	expect(20, "A output after restore", "\r\nvia tty\r\n", strlen("\r\nvia tty\r\n"));
}
