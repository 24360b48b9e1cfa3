/*
 * fd_moved: files whose directory the test renames (or covers) while
 * they are open.
 *
 *   fd_moved PROGRESS VERDICT DIR
 *
 *   20  DIR/sub/file, read-write, "moved file", offset 3
 *   21  DIR/sub, the directory
 *
 * check: 20 and 21 are still the files opened (same device and inode),
 * wherever the test moved them, with the contents and offset.
 */
#include "fdprog.h"

static struct stat file0, dir0;

static void setup(const char *arg)
{
	(void)arg;
	must(mkdir("sub", 0755), "mkdir sub");
	at(must(open("sub/file", O_RDWR | O_CREAT | O_EXCL, 0644), "sub/file"), 20);
	if (write(20, "moved file", 10) != 10)
		die("write");
	must(lseek(20, 3, SEEK_SET), "lseek");
	at(must(open("sub", O_RDONLY | O_DIRECTORY), "sub"), 21);
	must(fstat(20, &file0), "fstat 20");
	must(fstat(21, &dir0), "fstat 21");
}

static void check(void)
{
	struct stat st;
	char link[4096];
	int n = readlink("/proc/self/fd/20", link, sizeof link - 1);
	link[n > 0 ? n : 0] = 0;
	if (fstat(20, &st) || st.st_dev != file0.st_dev || st.st_ino != file0.st_ino)
		fail("fd 20 (%s) is inode %lu, was %lu", link, (unsigned long)st.st_ino, (unsigned long)file0.st_ino);
	if (fstat(21, &st) || st.st_dev != dir0.st_dev || st.st_ino != dir0.st_ino)
		fail("fd 21 is inode %lu, was %lu", (unsigned long)st.st_ino, (unsigned long)dir0.st_ino);
	char buf[16] = { 0 };
	if (pread(20, buf, 10, 0) != 10 || memcmp(buf, "moved file", 10))
		fail("fd 20 (%s) holds %s", link, buf);
	if (lseek(20, 0, SEEK_CUR) != 3)
		fail("fd 20 offset %ld", (long)lseek(20, 0, SEEK_CUR));
}
