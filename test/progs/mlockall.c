/*
 * mlockall: what mlockall(MCL_FUTURE) leaves for mappings made later must
 * survive a checkpoint; it shows nowhere in /proc until a mapping is made.
 *
 *   mlockall PROGRESS VERDICT MODE
 *
 * MODE is "future" (mlockall(MCL_FUTURE)), "onfault" (MCL_FUTURE |
 * MCL_ONFAULT) or "none" (no mlockall: a restore must not add one).
 * The check maps a fresh 64 KiB region and looks at it: locked or not
 * (VmFlags lo in /proc/self/smaps, and VmLck grown by 64 kB), resident at
 * once or not (mincore) — "future" populates it, "onfault" does not —
 * then unmaps it. The check runs before the first tick and on SIGTERM,
 * after raising its soft RLIMIT_AS to the hard limit.
 */
#include "state.h"

#include <sys/mman.h>
#include <sys/resource.h>

#ifndef MCL_ONFAULT
#define MCL_ONFAULT 4
#endif

#define SIZE (64 << 10)

static const char *mode;

/* vm_lck is VmLck of /proc/self/status in kB, or -1. */
static long vm_lck(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	if (!f)
		return -1;
	char line[256];
	long kb = -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "VmLck: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

static const char *check(char *why, size_t n)
{
	/* A test may have left no room for one more mapping under the soft
	 * RLIMIT_AS (to keep cr-parasite's stub out): make room. */
	struct rlimit as;
	if (getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != as.rlim_max) {
		as.rlim_cur = as.rlim_max;
		setrlimit(RLIMIT_AS, &as);
	}
	int want_locked = strcmp(mode, "none") != 0, want_resident = !strcmp(mode, "future");
	long before = vm_lck();
	char *p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		snprintf(why, n, "mmap: %s", strerror(errno));
		return why;
	}
	long after = vm_lck();
	int lo = vma_has_flag(p, "lo");
	unsigned char vec[SIZE / 4096];
	int resident = 0;
	if (mincore(p, SIZE, vec) == 0)
		for (unsigned i = 0; i < sizeof vec; i++)
			resident += vec[i] & 1;
	munmap(p, SIZE);
	if (lo != want_locked || after - before != (want_locked ? SIZE >> 10 : 0)) {
		snprintf(why, n, "a new mapping is %slocked (VmFlags lo %d, VmLck %ld -> %ld kB), want %slocked",
			 lo ? "" : "not ", lo, before, after, want_locked ? "" : "not ");
		return why;
	}
	if ((resident == SIZE / 4096) != want_resident || (resident != 0 && !want_resident)) {
		snprintf(why, n, "%d of %d pages of a new mapping are resident at once, want %s", resident, SIZE / 4096,
			 want_resident ? "all" : "none");
		return why;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 4, "mlockall PROGRESS VERDICT future|onfault|none");
	mode = argv[3];
	int flags = !strcmp(mode, "future") ? MCL_FUTURE : !strcmp(mode, "onfault") ? MCL_FUTURE | MCL_ONFAULT : 0;
	if (!flags && strcmp(mode, "none")) {
		fprintf(stderr, "mlockall: unknown mode %s\n", mode);
		return 2;
	}
	if (flags && mlockall(flags) != 0)
		die("mlockall");
	return state_run("mlockall", check);
}
