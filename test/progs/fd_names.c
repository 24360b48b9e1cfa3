/*
 * fd_names: files whose names /proc shows in ways that are easy to misread,
 * each open at fd 20 + i (offset 100 + i) and its second page mapped shared.
 *
 *   fd_names PROGRESS VERDICT DIR
 *
 *   "with space", "new\nline" (maps shows it as new\012line), "x (deleted)"
 *   (a live file: maps and fd links show deleted files so), "tab\there",
 *   "latin1-\xe9t\xe9" (not UTF-8: Linux names are bytes), and a path of two
 *   200-character directory names.
 */
#include "fdprog.h"

#include <sys/mman.h>

#define PG 4096
#define N 6

static const char *names[N] = {"with space", "new\nline", "x (deleted)", "tab\there", "latin1-\xe9t\xe9", NULL};
static char longname[512];
static char *maps[N];
static char dir[4096];

static void setup(const char *arg)
{
	(void)arg;
	if (!getcwd(dir, sizeof dir))
		die("getcwd");
	char d1[201], d2[201];
	memset(d1, 'd', 200), d1[200] = 0;
	memset(d2, 'e', 200), d2[200] = 0;
	must(mkdir(d1, 0700), "mkdir");
	snprintf(longname, sizeof longname, "%s/%s", d1, d2);
	names[N - 1] = longname;
	for (int i = 0; i < N; i++) {
		int f = must(open(names[i], O_RDWR | O_CREAT | O_TRUNC, 0600), names[i]);
		must(ftruncate(f, 2 * PG), "ftruncate");
		maps[i] = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, f, PG);
		if (maps[i] == MAP_FAILED)
			die("mmap");
		maps[i][0] = (char)('A' + i);
		must(lseek(f, 100 + i, SEEK_SET), "lseek");
		at(f, 20 + i);
	}
}

static void check(void)
{
	for (int i = 0; i < N; i++) {
		char link[64], got[8192], want[8192];
		snprintf(link, sizeof link, "/proc/self/fd/%d", 20 + i);
		ssize_t n = readlink(link, got, sizeof got - 1);
		got[n < 0 ? 0 : n] = 0;
		snprintf(want, sizeof want, "%s/%s", dir, names[i]);
		if (strcmp(got, want) != 0) {
			fail("fd %d names %s, want %s", 20 + i, got, want);
			return;
		}
		if (lseek(20 + i, 0, SEEK_CUR) != 100 + i) {
			fail("fd %d: offset %ld", 20 + i, (long)lseek(20 + i, 0, SEEK_CUR));
			return;
		}
		char c = 0;
		if (pread(20 + i, &c, 1, PG) != 1 || c != 'A' + i || maps[i][0] != 'A' + i) {
			fail("%s: the mapped page holds %c, the file %c, want %c", names[i], maps[i][0], c, 'A' + i);
			return;
		}
	}
}
