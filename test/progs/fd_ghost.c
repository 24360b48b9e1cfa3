/*
 * fd_ghost: files unlinked while open or mapped, whose contents the image
 * keeps (ghost files).
 *
 *   fd_ghost PROGRESS VERDICT DIR [big|fork]
 *
 *   20  "ghost1", opened with O_NOFOLLOW (as mkstemp does), unlinked: 1 MiB
 *       of a pattern, a hole of 4 MiB, 4 KiB of another pattern at
 *       5 MiB + 123; mode 0640, owner 1234:5678, offset 777
 *   21  a second, read-only description of it (/proc/self/fd/20), offset 42
 *   22  a dup of 20 (one description)
 *   23  "ghost2", write-only and O_APPEND, unlinked: 4 pages; pages 1-2
 *       mapped shared (ms, written through before the dump), pages 0-3
 *       mapped private (mp, page 2 written: copied on write)
 *   --  "ghost3": 2 pages mapped private, read and exec, its fd closed and
 *       the file unlinked: only the mapping holds it
 *   25  a file made with O_TMPFILE in DIR (never linked): 3 pages of a
 *       pattern; the kernel keeps O_TMPFILE (and O_DIRECTORY) in its flags
 *   big: also fd 24, "big": 100 MiB, sparse, unlinked (more than the
 *        default --ghost-limit of 64 MiB)
 *   fork: a child holds all of it too (it sleeps until killed): the
 *        descriptions and the shared mapping are the parent's again
 */
#include "fdprog.h"

#include <sys/mman.h>
#include <sys/uio.h>

#define PG 4096
#define MIB (1 << 20)
#define TAIL_OFF (5L * MIB + 123)
#define SIZE1 (TAIL_OFF + PG)
#define BIG (100L * MIB)

static unsigned char pat(long i, int k) { return (unsigned char)(mix64(i * 4 + k) | 1); }

static unsigned char *ms, *mp, *m3;
static char dir[4096];
static int big;
static pid_t child;

static int create(const char *name, int flags)
{
	return must(open(name, flags | O_CREAT | O_EXCL, 0644), name);
}

static void fill(int fd, long off, long n, int k)
{
	static unsigned char buf[MIB];
	for (long i = 0; i < n; i++)
		buf[i] = pat(off + i, k);
	if (pwrite(fd, buf, n, off) != n)
		die("pwrite");
}

static void setup(const char *arg)
{
	big = arg && !strcmp(arg, "big");
	if (!getcwd(dir, sizeof dir))
		die("getcwd");

	at(create("ghost1", O_RDWR | O_NOFOLLOW), 20); /* as mkstemp makes it */
	fill(20, 0, MIB, 0);
	fill(20, TAIL_OFF, PG, 1);
	must(fchown(20, 1234, 5678), "fchown");
	must(fchmod(20, 0640), "fchmod");
	must(lseek(20, 777, SEEK_SET), "lseek");
	at(must(open("/proc/self/fd/20", O_RDONLY), "reopen"), 21);
	must(lseek(21, 42, SEEK_SET), "lseek 21");
	must(dup2(20, 22), "dup2");
	must(unlink("ghost1"), "unlink ghost1");

	int g2 = create("ghost2", O_RDWR);
	fill(g2, 0, 4 * PG, 2);
	ms = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, g2, PG);
	mp = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, g2, 0);
	if (ms == MAP_FAILED || mp == MAP_FAILED)
		die("mmap ghost2");
	ms[0] = 'S';                 /* file page 1, through the shared mapping */
	memset(mp + 2 * PG, 'P', PG); /* a private copy of page 2 */
	char p[64];
	snprintf(p, sizeof p, "/proc/self/fd/%d", g2);
	at(must(open(p, O_WRONLY | O_APPEND), "reopen ghost2"), 23);
	close(g2);
	must(unlink("ghost2"), "unlink ghost2");

	int g3 = create("ghost3", O_RDWR);
	fill(g3, 0, 2 * PG, 3);
	m3 = mmap(NULL, 2 * PG, PROT_READ | PROT_EXEC, MAP_PRIVATE, g3, 0);
	if (m3 == MAP_FAILED)
		die("mmap ghost3");
	close(g3);
	must(unlink("ghost3"), "unlink ghost3");

	at(must(open(".", O_TMPFILE | O_RDWR, 0600), "O_TMPFILE"), 25);
	fill(25, 0, 3 * PG, 4);

	if (big) {
		at(create("big", O_RDWR), 24);
		must(ftruncate(24, BIG), "ftruncate big");
		must(unlink("big"), "unlink big");
	}
	if (arg && !strcmp(arg, "fork")) {
		child = must(fork(), "fork");
		if (child == 0)
			for (;;)
				pause();
	}
}

/* check_file checks fd's file is unlinked, with size and the link name. */
static void check_file(int fd, const char *name, long size)
{
	struct stat st;
	if (fstat(fd, &st)) {
		fail("fstat %d: %s", fd, strerror(errno));
		return;
	}
	if (st.st_nlink != 0 || st.st_size != size || !S_ISREG(st.st_mode))
		fail("fd %d: nlink %ld size %ld mode %o, want 0 %ld regular", fd, (long)st.st_nlink, (long)st.st_size, st.st_mode, size);
	char link[4200], want[4200], p[64];
	snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
	int n = readlink(p, link, sizeof link - 1);
	link[n > 0 ? n : 0] = 0;
	snprintf(want, sizeof want, "%s/%s (deleted)", dir, name);
	if (strcmp(link, want))
		fail("fd %d is %s, want %s", fd, link, want);
}

/* maps_line finds the /proc/self/maps line of the mapping at addr. */
static void maps_line(void *addr, char *out, size_t len)
{
	char want[32];
	snprintf(want, sizeof want, "%lx-", (unsigned long)addr);
	out[0] = 0;
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return;
	char line[4400];
	while (fgets(line, sizeof line, f))
		if (!strncmp(line, want, strlen(want))) {
			line[strcspn(line, "\n")] = 0;
			snprintf(out, len, "%s", line);
			break;
		}
	fclose(f);
}

static void check(void)
{
	static unsigned char buf[MIB];
	check_file(20, "ghost1", SIZE1);
	struct stat st;
	if (fstat(20, &st) == 0 && ((st.st_mode & 07777) != 0640 || st.st_uid != 1234 || st.st_gid != 5678))
		fail("ghost1 mode %o owner %d:%d, want 0640 1234:5678", st.st_mode & 07777, st.st_uid, st.st_gid);
	/* Contents: the pattern, zeros, the other pattern. */
	for (long off = 0; off < SIZE1; off += MIB) {
		long n = SIZE1 - off < MIB ? SIZE1 - off : MIB;
		if (pread(21, buf, n, off) != n) {
			fail("pread ghost1 at %ld", off);
			return;
		}
		for (long i = 0; i < n; i++) {
			long at = off + i;
			unsigned char want = at < MIB ? pat(at, 0) : at >= TAIL_OFF ? pat(at, 1) : 0;
			if (buf[i] != want) {
				fail("ghost1 byte %ld is %#x, want %#x", at, buf[i], want);
				return;
			}
		}
	}
	if (lseek(20, 0, SEEK_CUR) != 777 || lseek(22, 0, SEEK_CUR) != 777 || lseek(21, 0, SEEK_CUR) != 42)
		fail("offsets %ld %ld %ld, want 777 42 777", (long)lseek(20, 0, SEEK_CUR), (long)lseek(21, 0, SEEK_CUR), (long)lseek(22, 0, SEEK_CUR));
	lseek(22, 900, SEEK_SET);
	if (lseek(20, 0, SEEK_CUR) != 900)
		fail("fds 20 and 22 do not share a description");
	if ((fcntl(20, F_GETFL) & O_ACCMODE) != O_RDWR || (fcntl(21, F_GETFL) & O_ACCMODE) != O_RDONLY)
		fail("access modes %#x %#x", fcntl(20, F_GETFL), fcntl(21, F_GETFL));
	/* Writes still work, and 20 and 21 are one file. */
	if (pwrite(20, "xyz", 3, 10) != 3 || pread(21, buf, 3, 10) != 3 || memcmp(buf, "xyz", 3))
		fail("a write through fd 20 does not show through fd 21");

	struct stat tst;
	if (fstat(25, &tst) || tst.st_nlink != 0 || tst.st_size != 3 * PG || !S_ISREG(tst.st_mode) || (fcntl(25, F_GETFL) & O_ACCMODE) != O_RDWR)
		fail("the O_TMPFILE file: nlink %ld size %ld mode %o flags %#x", (long)tst.st_nlink, (long)tst.st_size, tst.st_mode, fcntl(25, F_GETFL));
	else if (pread(25, buf, 3 * PG, 0) != 3 * PG)
		fail("pread the O_TMPFILE file");
	else
		for (long i = 0; i < 3 * PG; i++)
			if (buf[i] != pat(i, 4)) {
				fail("the O_TMPFILE file's byte %ld is %#x, want %#x", i, buf[i], pat(i, 4));
				break;
			}

	check_file(23, "ghost2", 4 * PG);
	int fl = fcntl(23, F_GETFL);
	if ((fl & O_ACCMODE) != O_WRONLY || !(fl & O_APPEND))
		fail("fd 23 flags %#x, want O_WRONLY|O_APPEND", fl);
	for (long i = 0; i < 4 * PG; i++) {
		long page = i / PG;
		unsigned char want = page == 2 ? 'P' : i == PG ? 'S' : pat(i, 2);
		if (mp[i] != want) {
			fail("private mapping of ghost2: byte %ld is %#x, want %#x", i, mp[i], want);
			break;
		}
		if (page >= 1 && page <= 2 && ms[i - PG] != (i == PG ? 'S' : pat(i, 2))) {
			fail("shared mapping of ghost2: byte %ld is %#x", i - PG, ms[i - PG]);
			break;
		}
	}
	/* The shared mapping and fd 23 are one file. */
	int r = open("/proc/self/fd/23", O_RDONLY);
	ms[1] = 'T';
	if (r < 0 || pread(r, buf, 2, PG) != 2 || memcmp(buf, "ST", 2))
		fail("a write through the shared mapping does not show through fd 23");
	if (write(23, "tail", 4) != 4 || fstat(23, &st) || st.st_size != 4 * PG + 4)
		fail("append to fd 23: size %ld", (long)st.st_size);
	if (r >= 0)
		close(r);
	char line[4400];
	maps_line(ms, line, sizeof line);
	if (!strstr(line, "/ghost2 (deleted)") || !strstr(line, " rw-s 00001000 "))
		fail("maps: %s", line);

	for (long i = 0; i < 2 * PG; i++)
		if (m3[i] != pat(i, 3)) {
			fail("mapping of ghost3: byte %ld is %#x, want %#x", i, m3[i], pat(i, 3));
			break;
		}
	maps_line(m3, line, sizeof line);
	if (!strstr(line, "/ghost3 (deleted)") || !strstr(line, " r-xp 00000000 "))
		fail("maps: %s", line);

	if (big)
		check_file(24, "big", BIG);

	if (child) {
		/* One description of ghost1 across both, one ghost2 in both maps. */
		lseek(20, 1234, SEEK_SET);
		if (fd_pos(child, 20) != 1234 || fd_pos(child, 21) != 42)
			fail("the child's fds 20, 21 are at %ld %ld, want 1234 42", fd_pos(child, 20), fd_pos(child, 21));
		char c = 0;
		ms[2] = 'U';
		struct iovec local = { &c, 1 }, remote = { ms + 2, 1 };
		if (process_vm_readv(child, &local, 1, &remote, 1, 0) != 1 || c != 'U')
			fail("the child's shared mapping of ghost2 is another file (%#x)", c);
		/* It would outlive us (orphans go to init, where no test finds them). */
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
}
