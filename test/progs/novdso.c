/*
 * novdso: a process laid out as valgrind leaves the program it runs: its
 * vDSO unmapped ([vvar] kept), and an fd right under its hard limit of
 * open files (valgrind keeps its own fds there).
 *
 *   novdso PROGRESS VERDICT
 *
 * The check: no [vdso] in /proc/self/maps, [vvar] still there, and fd
 * HARD-2 open on PROGRESS. Once the vDSO is gone, nothing here may call
 * what glibc takes from it (clock_gettime, gettimeofday, time): it would
 * jump into unmapped memory.
 */
#include "state.h"

#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>

static int high_fd = -1;

/* mapping finds the line of /proc/self/maps that ends in name: 1 (and its
 * range), 0, or -1 when maps cannot be read. */
static int mapping(const char *name, unsigned long *lo, unsigned long *hi)
{
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return -1;
	char line[512];
	int found = 0;
	size_t n = strlen(name);
	while (!found && fgets(line, sizeof line, f)) {
		size_t len = strcspn(line, "\n");
		line[len] = 0;
		found = len >= n && !strcmp(line + len - n, name) && sscanf(line, "%lx-%lx", lo, hi) == 2;
	}
	fclose(f);
	return found;
}

static const char *check(char *why, size_t n)
{
	unsigned long lo, hi;
	if (mapping("[vdso]", &lo, &hi) != 0) {
		snprintf(why, n, "a [vdso] is mapped");
		return why;
	}
	if (mapping("[vvar]", &lo, &hi) != 1) {
		snprintf(why, n, "no [vvar] is mapped");
		return why;
	}
	struct stat a, b;
	if (fstat(high_fd, &a) != 0 || fstat(progress_fd, &b) != 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev) {
		snprintf(why, n, "fd %d is not the progress file (%s)", high_fd, strerror(errno));
		return why;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "novdso PROGRESS VERDICT");
	struct rlimit nofile;
	if (getrlimit(RLIMIT_NOFILE, &nofile) != 0)
		die("getrlimit");
	nofile.rlim_cur = nofile.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &nofile) != 0)
		die("setrlimit");
	high_fd = (int)nofile.rlim_max - 2;
	if (dup3(progress_fd, high_fd, O_CLOEXEC) != high_fd)
		die("dup3");
	unsigned long lo, hi;
	if (mapping("[vdso]", &lo, &hi) != 1) {
		fprintf(stderr, "novdso: no [vdso] to unmap\n");
		return 2;
	}
	if (munmap((void *)lo, hi - lo) != 0)
		die("munmap [vdso]");
	return state_run("novdso", check);
}
