/*
 * fd_many: thousands of fds, each its own open file description.
 *
 *   fd_many PROGRESS VERDICT DIR
 *
 *   100 + 2i <- 101 + 2i   pipe i (i < PIPES) holding one unread byte, i's
 *   FIRST_FILE + i          DIR/data opened again (i < FILES), at offset i
 *
 * It sets its own RLIMIT_NOFILE to LIMIT (soft) and HARD_LIMIT (hard), which
 * the test gives cr-restore; setup fails (exit 2) where the hard limit is
 * below that.
 */
#include "fdprog.h"

#include <sys/resource.h>

#define PIPES 1500
#define FILES 1500
#define FIRST_FILE (100 + 2 * PIPES)
#define LIMIT (FIRST_FILE + FILES + 100)
#define HARD_LIMIT 6000

static unsigned char byte_of(int i) { return (unsigned char)(mix64(i) & 0xff); }

static void setup(const char *arg)
{
	(void)arg;
	struct rlimit rl;
	must(getrlimit(RLIMIT_NOFILE, &rl), "getrlimit");
	if (rl.rlim_max < HARD_LIMIT)
		die("RLIMIT_NOFILE: the hard limit is too low");
	rl.rlim_cur = LIMIT;
	rl.rlim_max = HARD_LIMIT;
	must(setrlimit(RLIMIT_NOFILE, &rl), "setrlimit");
	for (int i = 0; i < PIPES; i++) {
		int p[2];
		must(pipe2(p, 0), "pipe");
		at(p[0], 100 + 2 * i);
		at(p[1], 101 + 2 * i);
		unsigned char b = byte_of(i);
		if (write(101 + 2 * i, &b, 1) != 1)
			die("write");
	}
	int f = must(open("data", O_RDWR | O_CREAT | O_TRUNC, 0600), "data");
	must(ftruncate(f, FILES), "ftruncate");
	close(f);
	for (int i = 0; i < FILES; i++) {
		at(must(open("data", O_RDONLY), "open data"), FIRST_FILE + i);
		must(lseek(FIRST_FILE + i, i, SEEK_SET), "lseek");
	}
}

static void check(void)
{
	for (int i = 0; i < PIPES; i++) {
		unsigned char b;
		int n = read(100 + 2 * i, &b, 1);
		if (n != 1 || b != byte_of(i)) {
			fail("pipe %d (fd %d): read %d, byte %#x, want %#x", i, 100 + 2 * i, n, n == 1 ? b : 0, byte_of(i));
			return;
		}
	}
	for (int i = 0; i < FILES; i++) {
		long pos = lseek(FIRST_FILE + i, 0, SEEK_CUR);
		if (pos != i) {
			fail("fd %d: offset %ld, want %d", FIRST_FILE + i, pos, i);
			return;
		}
	}
}
