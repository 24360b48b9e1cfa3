// memtest sets up memory of every kind cr-pages must handle, prints where,
// says "ready", and waits until its stdin closes.
//
//   memtest layout DIR   heap, stack, anon, private and shared file mappings,
//                        untouched, zero-read, shared anon, PROT_NONE, THP,
//                        pages written with zeros
//   memtest hog MIB      MIB of random (incompressible) anonymous memory
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096UL

static void die(const char *what) { perror(what); exit(1); }

static void *map(size_t len, int prot, int flags, int fd) {
	void *p = mmap(NULL, len, prot, flags, fd, 0);
	if (p == MAP_FAILED) die("mmap");
	return p;
}

// fill writes a pattern that differs per page and per region.
static void fill(void *p, size_t len, unsigned seed) {
	uint64_t *w = p;
	uint64_t x = 0x9e3779b97f4a7c15ULL * (seed + 1);
	for (size_t i = 0; i < len / 8; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		w[i] = x;
	}
}

static void show(const char *name, void *p, size_t len) {
	printf("%s %lx %lx\n", name, (unsigned long)p, (unsigned long)p + len);
}

static int file(const char *dir, const char *name, size_t len) {
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0) die("open");
	char *b = malloc(len);
	memset(b, 'F', len);
	if (write(fd, b, len) != (ssize_t)len) die("write");
	free(b);
	return fd;
}

static void wait_stdin(void) {
	printf("ready\n");
	fflush(stdout);
	char c;
	while (read(0, &c, 1) > 0)
		;
}

static int layout(const char *dir) {
	volatile char stack[64 * 1024];
	fill((void *)stack, sizeof stack, 1);

	mallopt(M_MMAP_THRESHOLD, 1 << 30); // keep the heap on brk
	char *heap = malloc(300 * 1024);
	fill(heap, 300 * 1024, 2);

	// Even pages written, odd pages never touched.
	char *anon = map(1024 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	for (size_t i = 0; i < 1024; i += 2) fill(anon + i * PG, PG, 100 + i);

	// Private file mapping: pages 2, 3, 10 written (COW), the rest read.
	int pf = file(dir, "private", 16 * PG);
	char *priv = map(16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, pf);
	volatile char sink = 0;
	for (size_t i = 0; i < 16; i++) sink += priv[i * PG];
	fill(priv + 2 * PG, 2 * PG, 3);
	fill(priv + 10 * PG, PG, 4);

	// Shared file mapping: written, but the pages are the file's.
	int sf = file(dir, "shared", 8 * PG);
	char *shf = map(8 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, sf);
	fill(shf, 8 * PG, 5);

	// 1 GiB never touched, and 16 MiB only read (the zero page).
	char *big = map(1UL << 30, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1);
	char *zero = map(16UL << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	for (size_t i = 0; i < (16UL << 20); i += PG) sink += zero[i];

	// Shared anonymous: pages 0 and 5 written; page 5 then dropped from the
	// page table (MADV_DONTNEED keeps shmem contents).
	char *shanon = map(256 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1);
	fill(shanon, PG, 6);
	fill(shanon + 5 * PG, PG, 7);
	if (madvise(shanon + 5 * PG, PG, MADV_DONTNEED)) die("madvise");

	// Written, then made inaccessible / read-only.
	char *none = map(16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	fill(none, 16 * PG, 8);
	if (mprotect(none, 16 * PG, PROT_NONE)) die("mprotect");
	char *ro = map(8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	fill(ro, 8 * PG, 9);
	if (mprotect(ro, 8 * PG, PROT_READ)) die("mprotect");

	// Transparent huge pages: 4 MiB at a 2 MiB boundary.
	char *t = map(6UL << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	char *thp = (char *)(((uintptr_t)t + (2UL << 20) - 1) & ~((2UL << 20) - 1));
	if (madvise(thp, 4UL << 20, MADV_HUGEPAGE)) die("madvise");
	fill(thp, 4UL << 20, 10);

	// Written with zeros (real pages): 0-3 and 8 all zeros, 4 zeros but
	// its last byte, 5 zeros but its first, 6-7 a pattern. A page of the
	// private file mapping written with zeros (COWed) is not the file's.
	char *zeroed = map(16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	memset(zeroed, 0, 9 * PG);
	zeroed[5 * PG - 1] = 1;
	zeroed[5 * PG] = 1;
	fill(zeroed + 6 * PG, 2 * PG, 12);
	memset(priv + 12 * PG, 0, PG);

	show("stack", (void *)stack, sizeof stack);
	show("heap", heap, 300 * 1024);
	show("anon", anon, 1024 * PG);
	show("private", priv, 16 * PG);
	show("shared", shf, 8 * PG);
	show("big", big, 1UL << 30);
	show("zero", zero, 16UL << 20);
	show("shanon", shanon, 256 * PG);
	show("none", none, 16 * PG);
	show("ro", ro, 8 * PG);
	show("thp", thp, 4UL << 20);
	show("zeroed", zeroed, 16 * PG);
	wait_stdin();
	return sink == 42;
}

static int hog(size_t mib) {
	size_t len = mib << 20;
	char *p = map(len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	fill(p, len, 11);
	show("hog", p, len);
	wait_stdin();
	return 0;
}

int main(int argc, char **argv) {
	if (argc == 3 && !strcmp(argv[1], "layout")) return layout(argv[2]);
	if (argc == 3 && !strcmp(argv[1], "hog")) return hog(strtoul(argv[2], 0, 10));
	fprintf(stderr, "usage: memtest layout DIR | memtest hog MIB\n");
	return 2;
}
