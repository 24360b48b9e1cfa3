/*
 * fd_pipe: pipes and a FIFO, with unread data, buffer sizes and flags.
 *
 *   fd_pipe PROGRESS VERDICT DIR [fork]
 *
 *   20 <- 21  "hello pipe" unread; buffer 128 KiB; 20 O_NONBLOCK
 *   22        read end whose writer is closed: "eof" unread, then end of file
 *   23        write end whose reader is closed: writing fails with EPIPE
 *   24 <- 25  60000 bytes of a pattern unread (most of the 64 KiB buffer)
 *   26 <- 27  FIFO DIR/fifo: 26 O_RDONLY|O_NONBLOCK, 27 O_WRONLY; "fifo data"
 * With "fork": 28 <- 29 across processes: a child wrote "from child" into
 * its 29 before the dump and sleeps; the parent (without 29) reads it on 28.
 */
#include "fdprog.h"

#include <sys/ioctl.h>

static pid_t child;

static unsigned char pat(int i) { return (unsigned char)(mix64(i) & 0xff); }

static void setup(const char *arg)
{
	int p[2];
	signal(SIGPIPE, SIG_IGN);
	must(pipe2(p, 0), "pipe");
	at(p[0], 20);
	at(p[1], 21);
	must(fcntl(20, F_SETPIPE_SZ, 128 << 10), "F_SETPIPE_SZ");
	must(fcntl(20, F_SETFL, O_NONBLOCK), "O_NONBLOCK");
	if (write(21, "hello pipe", 10) != 10)
		die("write 21");

	must(pipe2(p, 0), "pipe");
	at(p[0], 22);
	if (write(p[1], "eof", 3) != 3)
		die("write eof");
	close(p[1]);

	must(pipe2(p, 0), "pipe");
	close(p[0]);
	at(p[1], 23);

	must(pipe2(p, 0), "pipe");
	at(p[0], 24);
	at(p[1], 25);
	unsigned char buf[60000];
	for (int i = 0; i < 60000; i++)
		buf[i] = pat(i);
	if (write(25, buf, sizeof buf) != sizeof buf)
		die("write 25");

	must(mkfifo("fifo", 0600), "mkfifo");
	at(must(open("fifo", O_RDONLY | O_NONBLOCK), "fifo r"), 26);
	at(must(open("fifo", O_WRONLY), "fifo w"), 27);
	if (write(27, "fifo data", 9) != 9)
		die("write fifo");

	if (arg && !strcmp(arg, "fork")) {
		must(pipe2(p, 0), "pipe");
		at(p[0], 28);
		at(p[1], 29);
		child = must(fork(), "fork");
		if (child == 0) {
			close(28);
			if (write(29, "from child", 10) != 10)
				_exit(1);
			for (;;)
				pause();
		}
		close(29);
		/* the child's write lands before the parent is ready */
		/* Ready only once the child's bytes are in the pipe. */
		for (int n = 0; n < 10;) {
			if (ioctl(28, FIONREAD, &n) < 0)
				die("FIONREAD");
			if (n < 10)
				sleep_ns(1000000, NULL);
		}
	}
}

static void expect_read(int fd, const char *want)
{
	char buf[64];
	int n = read(fd, buf, sizeof buf);
	if (n != (int)strlen(want) || memcmp(buf, want, n))
		fail("fd %d: read %d bytes (%.*s), want \"%s\" (%s)", fd, n, n > 0 ? n : 0, buf, want, n < 0 ? strerror(errno) : "");
}

static void check(void)
{
	if (fcntl(20, F_GETPIPE_SZ) != 128 << 10)
		fail("pipe buffer %d, want %d", fcntl(20, F_GETPIPE_SZ), 128 << 10);
	if (!(fcntl(20, F_GETFL) & O_NONBLOCK) || (fcntl(21, F_GETFL) & O_NONBLOCK))
		fail("O_NONBLOCK: 20 %#o 21 %#o", fcntl(20, F_GETFL), fcntl(21, F_GETFL));
	expect_read(20, "hello pipe");
	char c;
	if (read(20, &c, 1) != -1 || errno != EAGAIN)
		fail("fd 20 should be empty and non-blocking");
	if (write(21, "more", 4) != 4)
		fail("write 21: %s", strerror(errno));
	expect_read(20, "more");

	expect_read(22, "eof");
	if (read(22, &c, 1) != 0)
		fail("fd 22: no end of file after its data");

	if (write(23, "x", 1) != -1 || errno != EPIPE)
		fail("fd 23: write to a pipe without reader did not fail with EPIPE");

	static unsigned char buf[65536];
	int got = 0;
	while (got < 60000) {
		int n = read(24, buf + got, 60000 - got);
		if (n <= 0)
			break;
		got += n;
	}
	if (got != 60000)
		fail("fd 24: read %d of 60000 bytes", got);
	for (int i = 0; i < got; i++)
		if (buf[i] != pat(i)) {
			fail("fd 24: byte %d is %#x, want %#x", i, buf[i], pat(i));
			break;
		}

	expect_read(26, "fifo data");
	struct stat a, b;
	if (fstat(26, &a) || stat("fifo", &b) || !S_ISFIFO(a.st_mode) || a.st_ino != b.st_ino)
		fail("fd 26 is not DIR/fifo");
	if (write(27, "again", 5) != 5)
		fail("write 27: %s", strerror(errno));
	expect_read(26, "again");

	if (child) {
		expect_read(28, "from child");
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
}
