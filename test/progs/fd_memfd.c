/*
 * fd_memfd: memfds with contents, size, seals, mode and offsets.
 *
 *   fd_memfd PROGRESS VERDICT DIR
 *
 *   20  memfd "crpipe-data": 3 MiB, a pattern in the first and last MiB
 *       (zeros between), offset 12345, sealed F_SEAL_SHRINK|F_SEAL_GROW
 *   21  a second, read-only description of it (/proc/self/fd/20), offset 7
 *   22  memfd "plain": 5 bytes, not sealable (F_SEAL_SEAL only), mode 0600
 */
#include "fdprog.h"

#include <sys/mman.h>

#define SIZE (3 << 20)

static unsigned char pat(long i) { return (unsigned char)(mix64(i) | 1); }

static void setup(const char *arg)
{
	(void)arg;
	at(must(memfd_create("crpipe-data", MFD_ALLOW_SEALING), "memfd"), 20);
	must(ftruncate(20, SIZE), "ftruncate");
	static unsigned char buf[1 << 20];
	for (long i = 0; i < (1 << 20); i++)
		buf[i] = pat(i);
	if (pwrite(20, buf, sizeof buf, 0) != sizeof buf || pwrite(20, buf, sizeof buf, SIZE - sizeof buf) != sizeof buf)
		die("pwrite");
	must(fcntl(20, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), "seals");
	must(lseek(20, 12345, SEEK_SET), "lseek");
	at(must(open("/proc/self/fd/20", O_RDONLY), "reopen"), 21);
	must(lseek(21, 7, SEEK_SET), "lseek 21");

	at(must(memfd_create("plain", 0), "memfd plain"), 22);
	if (write(22, "hello", 5) != 5)
		die("write plain");
	must(fchmod(22, 0600), "fchmod");
}

static void check(void)
{
	char link[256];
	int n = readlink("/proc/self/fd/20", link, sizeof link - 1);
	link[n > 0 ? n : 0] = 0;
	if (strcmp(link, "/memfd:crpipe-data (deleted)"))
		fail("fd 20 is %s", link);
	struct stat st;
	if (fstat(20, &st) || st.st_size != SIZE)
		fail("memfd size %ld, want %d", (long)st.st_size, SIZE);
	if (lseek(20, 0, SEEK_CUR) != 12345 || lseek(21, 0, SEEK_CUR) != 7)
		fail("offsets %ld %ld, want 12345 7", (long)lseek(20, 0, SEEK_CUR), (long)lseek(21, 0, SEEK_CUR));
	if (fcntl(20, F_GET_SEALS) != (F_SEAL_SHRINK | F_SEAL_GROW))
		fail("seals %#x", fcntl(20, F_GET_SEALS));
	if ((fcntl(21, F_GETFL) & O_ACCMODE) != O_RDONLY)
		fail("fd 21 is not read-only");
	static unsigned char buf[1 << 20];
	for (long part = 0; part < 3; part++) {
		if (pread(21, buf, sizeof buf, part << 20) != sizeof buf) {
			fail("pread part %ld", part);
			return;
		}
		for (long i = 0; i < (1 << 20); i++) {
			unsigned char want = part == 1 ? 0 : pat(i);
			if (buf[i] != want) {
				fail("byte %ld of MiB %ld is %#x, want %#x", i, part, buf[i], want);
				return;
			}
		}
	}
	/* One file: a write through 20 shows through 21. */
	if (pwrite(20, "Z", 1, 100) != 1 || pread(21, buf, 1, 100) != 1 || buf[0] != 'Z')
		fail("fds 20 and 21 are not the same memfd");
	if (ftruncate(20, SIZE * 2) != -1 || errno != EPERM)
		fail("F_SEAL_GROW does not hold");

	if (fcntl(22, F_GET_SEALS) != F_SEAL_SEAL)
		fail("memfd 22 seals %#x, want F_SEAL_SEAL", fcntl(22, F_GET_SEALS));
	if (fstat(22, &st) || (st.st_mode & 0777) != 0600 || st.st_size != 5)
		fail("memfd 22 mode %o size %ld", st.st_mode & 0777, (long)st.st_size);
	if (pread(22, buf, 5, 0) != 5 || memcmp(buf, "hello", 5))
		fail("memfd 22 contents");
	if (lseek(22, 0, SEEK_CUR) != 5)
		fail("memfd 22 offset %ld", (long)lseek(22, 0, SEEK_CUR));
}
