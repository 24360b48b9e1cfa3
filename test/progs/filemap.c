/*
 * filemap: one file mapped shared twice, read-only below and read-write
 * above, as a program that reads through one view and writes through
 * another does.
 *
 *   filemap PROGRESS VERDICT DIR
 *
 * DIR/data (2 pages) is mapped MAP_SHARED with PROT_READ, a page left
 * unmapped after it, then MAP_SHARED with PROT_READ|PROT_WRITE. Each tick
 * writes the tick count into the writable view; check() reads it back
 * through the read-only one and from the file.
 */
#define HAVE_TICK
#include "fdprog.h"

#include <sys/mman.h>

#define PG 4096

static volatile uint64_t *ro, *rw;

static void setup(const char *arg)
{
	(void)arg;
	int f = must(open("data", O_RDWR | O_CREAT | O_TRUNC, 0600), "data");
	must(ftruncate(f, 2 * PG), "ftruncate");
	char *base = mmap(NULL, 5 * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED)
		die("mmap");
	if (mmap(base, 2 * PG, PROT_READ, MAP_SHARED | MAP_FIXED, f, 0) == MAP_FAILED)
		die("mmap read-only");
	must(munmap(base + 2 * PG, PG), "munmap");
	if (mmap(base + 3 * PG, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, f, 0) == MAP_FAILED)
		die("mmap read-write");
	close(f);
	ro = (volatile uint64_t *)base;
	rw = (volatile uint64_t *)(base + 3 * PG);
}

static void tick(void)
{
	rw[0] = ticks;
	rw[PG / 8] = ~ticks;
}

static void check(void)
{
	uint64_t want = rw[0];
	if (ro[0] != want || ro[PG / 8] != ~want) {
		fail("the read-only view reads %llu, the writable one holds %llu", (unsigned long long)ro[0], (unsigned long long)want);
		return;
	}
	uint64_t v = 0;
	int f = open("data", O_RDONLY);
	if (f < 0 || pread(f, &v, sizeof v, 0) != sizeof v || v != want)
		fail("the file holds %llu, the writable view %llu", (unsigned long long)v, (unsigned long long)want);
	if (f >= 0)
		close(f);
}
