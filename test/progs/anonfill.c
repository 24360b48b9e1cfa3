/*
 * anonfill: private anonymous memory of every shape a restore fills (with
 * UFFDIO_COPY where it can, process_vm_writev elsewhere) must come back
 * with its contents, its holes and nothing registered with userfaultfd.
 *
 *   anonfill PROGRESS VERDICT [BIG_MIB [RUNS]]
 *
 * Before the first tick it maps and fills with a pattern of its own each:
 *   big   4 MiB (or BIG_MIB; with 48, cr-dump's cr-pages has the process lend its
 *         pages, lib/pages/lend.go) read-write; pages 10-19 never touched, 20-29 written with
 *         zeros, page 30 zeros but its last byte 1
 *   ro    1 MiB, then made read-only
 *   none  256 KiB, then made PROT_NONE
 *   nores 1 MiB with MAP_NORESERVE
 *   down  256 KiB with MAP_GROWSDOWN
 *   runs  RUNS (default none) blocks of 128 KiB, each a filled 64 KiB and a
 *         64 KiB hole never touched: as many runs of pages (with 4,097 or
 *         more, cr-pages' lender takes them in two goes, MaxLendRuns)
 * On SIGTERM it checks every pattern and hole (reading "none" after a
 * moment of PROT_READ), that the untouched pages of "big" take writes,
 * and that no VMA of its smaps says "um" (registered for missing-page
 * faults).
 */
#include "state.h"

#include <ctype.h>
#include <sys/mman.h>

#define PG 4096UL

struct region {
	const char *name;
	size_t size;
	int prot; /* its protection once filled */
	int flags;
	char *p;
};

static struct region regions[] = {
	{ "big", 4 << 20, PROT_READ | PROT_WRITE, 0, 0 },
	{ "ro", 1 << 20, PROT_READ, 0, 0 },
	{ "none", 256 << 10, PROT_NONE, 0, 0 },
	{ "nores", 1 << 20, PROT_READ | PROT_WRITE, MAP_NORESERVE, 0 },
	{ "down", 256 << 10, PROT_READ | PROT_WRITE, MAP_GROWSDOWN, 0 },
	{ "runs", 0, PROT_READ | PROT_WRITE, 0, 0 },
};
#define NREGIONS (sizeof regions / sizeof regions[0])
#define RUNS (NREGIONS - 1)
#define RUN_BLOCK (128UL << 10)

/* What page pg of region i holds: 0 for a hole, 1 for zeros with a last
 * byte 1, 2 for the pattern. */
static int page_kind(unsigned i, size_t pg)
{
	if (i == RUNS)
		return pg * PG % RUN_BLOCK < RUN_BLOCK / 2 ? 2 : 0;
	if (i != 0 || pg < 10 || pg > 30)
		return 2;
	return pg == 30 ? 1 : 0;
}

static uint64_t pattern(unsigned i, size_t off) { return mix64(((uint64_t)(i + 1) << 40) ^ off); }

static void fill(unsigned i)
{
	struct region *r = &regions[i];
	for (size_t pg = 0; pg < r->size / PG; pg++) {
		char *page = r->p + pg * PG;
		switch (page_kind(i, pg)) {
		case 2:
			for (size_t k = 0; k < PG; k += 8)
				*(uint64_t *)(page + k) = pattern(i, pg * PG + k);
			break;
		case 1:
			page[PG - 1] = 1;
			break;
		default:
			if (i == 0 && pg >= 20)
				memset(page, 0, PG); /* touched, all zeros */
		}
	}
}

static const char *check_region(unsigned i, char *why, size_t n)
{
	struct region *r = &regions[i];
	for (size_t pg = 0; pg < r->size / PG; pg++) {
		const char *page = r->p + pg * PG;
		int kind = page_kind(i, pg);
		for (size_t k = 0; k < PG; k += 8) {
			uint64_t want = kind == 2 ? pattern(i, pg * PG + k) : 0;
			if (kind == 1 && k == PG - 8)
				want = (uint64_t)1 << 56;
			if (*(const uint64_t *)(page + k) != want) {
				snprintf(why, n, "%s: page %zu word %zu is %#llx, want %#llx", r->name, pg, k / 8,
					 (unsigned long long)*(const uint64_t *)(page + k), (unsigned long long)want);
				return why;
			}
		}
	}
	return NULL;
}

/* registered_vma names a VMA whose VmFlags say "um", if any. */
static const char *registered_vma(char *why, size_t n)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	if (!f) {
		snprintf(why, n, "open smaps: %s", strerror(errno));
		return why;
	}
	char line[512], vma[128] = "";
	const char *bad = NULL;
	while (!bad && fgets(line, sizeof line, f)) {
		if (strncmp(line, "VmFlags:", 8) != 0) {
			if (isdigit((unsigned char)line[0]) || islower((unsigned char)line[0])) /* a VMA's first line */
				snprintf(vma, sizeof vma, "%.*s", (int)strcspn(line, " "), line);
			continue;
		}
		if (strstr(line, " um") || strstr(line, " uw") || strstr(line, " ui")) {
			snprintf(why, n, "VMA %s is still registered with userfaultfd: %s", vma, line);
			bad = why;
		}
	}
	fclose(f);
	return bad;
}

/* drop_run_holes gives the holes of "runs" back after check has read them:
 * a kernel without the shared zero page (a PVM guest's pvm_no_zero_page)
 * fills a page on a read fault, and the runs would join into one. */
static void drop_run_holes(void)
{
	struct region *r = &regions[RUNS];
	for (size_t off = RUN_BLOCK / 2; off < r->size; off += RUN_BLOCK)
		if (madvise(r->p + off, RUN_BLOCK / 2, MADV_DONTNEED) != 0)
			die("madvise MADV_DONTNEED");
}

static const char *check(char *why, size_t n)
{
	for (unsigned i = 0; i < NREGIONS; i++) {
		struct region *r = &regions[i];
		if (r->size == 0)
			continue;
		if (r->prot == PROT_NONE && mprotect(r->p, r->size, PROT_READ) != 0) {
			snprintf(why, n, "%s: mprotect: %s", r->name, strerror(errno));
			return why;
		}
		const char *bad = check_region(i, why, n);
		if (r->prot == PROT_NONE)
			mprotect(r->p, r->size, PROT_NONE);
		if (bad)
			return bad;
	}
	/* The holes take writes (a registration left behind would stop here). */
	for (size_t pg = 10; pg < 20; pg++)
		regions[0].p[pg * PG] = 0;
	drop_run_holes();
	return registered_vma(why, n);
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "anonfill PROGRESS VERDICT [BIG_MIB [RUNS]]");
	if (argc > 3)
		regions[0].size = (size_t)atoi(argv[3]) << 20;
	if (argc > 4)
		regions[RUNS].size = (size_t)atoi(argv[4]) * RUN_BLOCK;
	for (unsigned i = 0; i < NREGIONS; i++) {
		struct region *r = &regions[i];
		if (r->size == 0)
			continue;
		r->p = mmap(NULL, r->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | r->flags, -1, 0);
		if (r->p == MAP_FAILED)
			die("mmap");
		fill(i);
		if (r->prot != (PROT_READ | PROT_WRITE) && mprotect(r->p, r->size, r->prot) != 0)
			die("mprotect");
	}
	return state_run("anonfill", check);
}
