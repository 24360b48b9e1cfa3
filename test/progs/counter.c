/*
 * counter: a crpipe test program that checks its own memory survived.
 *
 *   counter PROGRESS VERDICT MAPFILE [ANON_MB]
 *
 * It keeps state in four kinds of memory:
 *   heap   48 KiB from malloc (below the mmap threshold, so it is brk heap)
 *   stack  a 32 KiB local array in main
 *   anon   an anonymous private mapping (1 MiB, or ANON_MB MiB)
 *   file   a MAP_PRIVATE, writable mapping of MAPFILE (copy-on-write pages)
 * Every 10 ms ("a tick") it rewrites a few words of each region, derived
 * from the old value and the tick number, and updates a running checksum
 * of each region incrementally. It writes the tick count to PROGRESS
 * (pwrite at offset 0, so a reader always sees the latest count).
 *
 * On SIGTERM (caught by a handler, so a lost handler shows as a missing
 * verdict) it recomputes every region's checksum from scratch and compares
 * it with the running one, checks MAPFILE on disk is unchanged (the writes
 * were private), that its PID is the one it started with and that its tick
 * counters agree, then writes "PASS <ticks>" or "FAIL <reason>" to VERDICT
 * (atomically, via rename) and exits 0 or 1.
 */
#include "common.h"

#include <signal.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define TICK_NS 10000000L
#define HEAP_WORDS (48 * 1024 / 8)
#define STACK_WORDS (32 * 1024 / 8)
#define WORDS_PER_TICK 8

struct region {
	const char *name;
	uint64_t *w;
	size_t n;
	uint64_t sum; /* running checksum, updated word by word */
};

enum { R_HEAP, R_STACK, R_ANON, R_FILE, NREGIONS };

static struct region regions[NREGIONS];
static volatile sig_atomic_t got_term;
static uint64_t ticks;     /* in .bss */
static uint64_t file_sum0; /* checksum of MAPFILE's contents at start */
static pid_t pid0;
static const char *verdict_path;

/* term of word i with value v in a region's checksum: position-dependent,
 * so swapped or misplaced pages change the sum. */
static inline uint64_t term(size_t i, uint64_t v)
{
	return mix64(v ^ (i * 0xd6e8feb86659fd93ULL));
}

static uint64_t full_sum(const uint64_t *w, size_t n)
{
	uint64_t s = 0;
	for (size_t i = 0; i < n; i++)
		s += term(i, w[i]);
	return s;
}

static void fill(struct region *r, uint64_t seed)
{
	for (size_t i = 0; i < r->n; i++)
		r->w[i] = mix64(seed + i);
	r->sum = full_sum(r->w, r->n);
}

static void mutate(struct region *r, unsigned ri, uint64_t t)
{
	for (unsigned j = 0; j < WORDS_PER_TICK; j++) {
		size_t i = mix64(t * 64 + ri * 8 + j) % r->n;
		uint64_t old = r->w[i], new = mix64(old ^ t);
		r->w[i] = new;
		r->sum += term(i, new) - term(i, old);
	}
}

static void on_term(int sig)
{
	(void)sig;
	got_term = 1;
}

static void die(const char *what)
{
	fprintf(stderr, "counter: %s: %s\n", what, strerror(errno));
	exit(2);
}

static int file_sum(const char *path, size_t len, uint64_t *out)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	uint64_t *buf = malloc(len);
	if (!buf) {
		close(fd);
		return -1;
	}
	ssize_t n = pread(fd, buf, len, 0);
	close(fd);
	if (n != (ssize_t)len) {
		free(buf);
		return -1;
	}
	*out = full_sum(buf, len / 8);
	free(buf);
	return 0;
}

static int verdict(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int verdict(const char *fmt, ...)
{
	char tmp[4096], msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	snprintf(tmp, sizeof tmp, "%s.tmp", verdict_path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die("open verdict");
	size_t len = strlen(msg);
	msg[len++] = '\n';
	if (write(fd, msg, len) != (ssize_t)len || fsync(fd) != 0)
		die("write verdict");
	close(fd);
	if (rename(tmp, verdict_path) != 0)
		die("rename verdict");
	return strncmp(msg, "PASS", 4) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	uint64_t stack_words[STACK_WORDS]; /* the stack region */
	uint64_t my_ticks = 0;             /* a second count, on the stack */
	const char *mapfile;
	size_t anon_len = 1 << 20;
	char line[32];

	close_inherited();
	if (argc < 4 || argc > 5) {
		fprintf(stderr, "usage: counter PROGRESS VERDICT MAPFILE [ANON_MB]\n");
		return 2;
	}
	verdict_path = argv[2];
	mapfile = argv[3];
	if (argc == 5)
		anon_len = (size_t)strtoul(argv[4], NULL, 10) << 20;
	if (anon_len == 0) {
		fprintf(stderr, "counter: ANON_MB must be at least 1\n");
		return 2;
	}

	int prog = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (prog < 0)
		die("open progress");

	int mfd = open(mapfile, O_RDONLY | O_CLOEXEC);
	if (mfd < 0)
		die("open mapfile");
	struct stat st;
	if (fstat(mfd, &st) != 0)
		die("stat mapfile");
	if (st.st_size < 4096 || st.st_size % 4096 != 0) {
		fprintf(stderr, "counter: MAPFILE must be a non-empty multiple of 4096 bytes\n");
		return 2;
	}
	/* PROT_WRITE on a read-only fd is allowed for MAP_PRIVATE. */
	void *fm = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, mfd, 0);
	if (fm == MAP_FAILED)
		die("mmap mapfile");
	close(mfd); /* the mapping keeps the file; no fd needed */

	void *am = mmap(NULL, anon_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (am == MAP_FAILED)
		die("mmap anon");
	uint64_t *heap = malloc(HEAP_WORDS * 8);
	if (!heap)
		die("malloc");

	regions[R_HEAP] = (struct region){ "heap", heap, HEAP_WORDS, 0 };
	regions[R_STACK] = (struct region){ "stack", stack_words, STACK_WORDS, 0 };
	regions[R_ANON] = (struct region){ "anon", am, anon_len / 8, 0 };
	regions[R_FILE] = (struct region){ "file", fm, st.st_size / 8, 0 };
	fill(&regions[R_HEAP], 1ULL << 40);
	fill(&regions[R_STACK], 2ULL << 40);
	fill(&regions[R_ANON], 3ULL << 40);
	/* The file region starts with the file's contents. */
	regions[R_FILE].sum = full_sum(regions[R_FILE].w, regions[R_FILE].n);
	file_sum0 = regions[R_FILE].sum;

	struct sigaction sa = { .sa_handler = on_term };
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0)
		die("sigaction");

	pid0 = getpid();
	detach();

	while (!got_term) {
		ticks++;
		my_ticks++;
		for (unsigned r = 0; r < NREGIONS; r++)
			mutate(&regions[r], r, ticks);
		snprintf(line, sizeof line, "%20llu\n", (unsigned long long)ticks);
		if (pwrite(prog, line, 21, 0) != 21)
			return verdict("FAIL pwrite progress: %s", strerror(errno));
		sleep_ns(TICK_NS, (volatile int *)&got_term);
	}

	if (getpid() != pid0)
		return verdict("FAIL pid changed from %d to %d", pid0, getpid());
	if (my_ticks != ticks)
		return verdict("FAIL stack tick count %llu, global %llu",
			       (unsigned long long)my_ticks, (unsigned long long)ticks);
	if (regions[R_STACK].w != stack_words)
		return verdict("FAIL stack region moved from %p to %p", (void *)regions[R_STACK].w, (void *)stack_words);
	for (unsigned r = 0; r < NREGIONS; r++) {
		uint64_t s = full_sum(regions[r].w, regions[r].n);
		if (s != regions[r].sum)
			return verdict("FAIL %s region at %p (%zu bytes): checksum %016llx, running %016llx",
				       regions[r].name, (void *)regions[r].w, regions[r].n * 8,
				       (unsigned long long)s, (unsigned long long)regions[r].sum);
	}
	uint64_t fs;
	if (file_sum(mapfile, st.st_size, &fs) != 0)
		return verdict("FAIL reading %s: %s", mapfile, strerror(errno));
	if (fs != file_sum0)
		return verdict("FAIL %s changed on disk: the private mapping wrote through", mapfile);
	return verdict("PASS %llu", (unsigned long long)ticks);
}
