/*
 * scribble: private anonymous memory rewritten page after page, over and
 * over, for crpipe's dump of a process left running that lends its pages
 * (cr-dump --leave-running into a file): the image must hold the memory of
 * the moment the process was frozen, however soon after the thaw it writes
 * again, and a restore must go on from there.
 *
 *   scribble PROGRESS VERDICT [MIB]
 *
 * Fills MIB MiB (default 32) with generation 1: word w of page i holds
 * mix64(gen, i, w). Then, until SIGTERM, it rewrites the pages in order with
 * the next generation (a tick per pass), the page it is at in a variable of
 * its own: pages before it hold the generation being written, the others
 * the one before. On SIGTERM, which it looks at between two pages, it
 * checks every word of every page against that and writes the verdict.
 */
#include "state.h"

#include <sys/mman.h>

#define PAGE 4096
#define WORDS (PAGE / 8)

static uint64_t word(uint64_t gen, size_t page, size_t w)
{
	return mix64(gen << 40 ^ (uint64_t)page * WORDS ^ w);
}

static void fill(uint64_t *p, uint64_t gen, size_t page)
{
	for (size_t w = 0; w < WORDS; w++)
		p[w] = word(gen, page, w);
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "scribble PROGRESS VERDICT [MIB]");
	size_t mib = argc > 3 ? strtoul(argv[3], NULL, 10) : 32;
	size_t pages = (mib << 20) / PAGE;
	if (pages == 0) {
		fprintf(stderr, "scribble: MIB must be at least 1\n");
		return 2;
	}
	uint64_t *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	uint64_t gen = 1;
	for (size_t i = 0; i < pages; i++)
		fill(mem + i * WORDS, gen, i);
	size_t at = 0; /* pages [0, at) hold gen, [at, pages) gen - 1 */
	gen = 2;
	while (!got_term) {
		fill(mem + at * WORDS, gen, at);
		if (++at == pages) {
			at = 0;
			gen++;
			tick();
		}
	}
	for (size_t i = 0; i < pages; i++) {
		uint64_t want = i < at ? gen : gen - 1;
		for (size_t w = 0; w < WORDS; w++)
			if (mem[i * WORDS + w] != word(want, i, w))
				return verdict("FAIL page %zu word %zu: not generation %llu (at page %zu of generation %llu)",
					       i, w, (unsigned long long)want, at, (unsigned long long)gen);
	}
	return verdict("PASS %llu", (unsigned long long)ticks);
}
