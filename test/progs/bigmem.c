/*
 * bigmem: the benchmark workload: one anonymous mapping, every page touched.
 *
 *   bigmem MB READYFILE [random|compressible|zero]
 *
 * Fills MB MiB of anonymous memory (random: incompressible words;
 * compressible: each 4 KiB page repeats a short pattern; zero: written
 * with zeros, i.e. touched but empty), then writes "ADDR LEN" (hex address,
 * decimal length) to READYFILE and sleeps until killed.
 */
#include "common.h"

#include <sys/mman.h>

int main(int argc, char **argv)
{
	close_inherited();
	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: bigmem MB READYFILE [random|compressible|zero]\n");
		return 2;
	}
	size_t len = (size_t)strtoul(argv[1], NULL, 10) << 20;
	const char *kind = argc == 4 ? argv[3] : "random";
	if (len == 0) {
		fprintf(stderr, "bigmem: MB must be at least 1\n");
		return 2;
	}
	if (strcmp(kind, "random") && strcmp(kind, "compressible") && strcmp(kind, "zero")) {
		fprintf(stderr, "bigmem: unknown kind %s\n", kind);
		return 2;
	}
	uint64_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	size_t n = len / 8;
	if (!strcmp(kind, "random")) {
		for (size_t i = 0; i < n; i++)
			m[i] = mix64(i);
	} else if (!strcmp(kind, "compressible")) {
		for (size_t i = 0; i < n; i++)
			m[i] = mix64((i / 512) ^ (i % 4)); /* 4 distinct words per page */
	} else {
		for (size_t i = 0; i < n; i += 512)
			*(volatile uint64_t *)&m[i] = 0;
	}
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", argv[2]);
	FILE *f = fopen(tmp, "w");
	if (!f || fprintf(f, "%lx %zu\n", (unsigned long)m, len) < 0 || fclose(f) != 0 || rename(tmp, argv[2]) != 0) {
		perror(argv[2]);
		return 1;
	}
	detach();
	for (;;)
		sleep_ns(1000000000L, NULL);
}
