/*
 * cow: a tree of 8 processes sharing, copy-on-write, the private memory the
 * root filled before forking, for crpipe's restore of memory inherited over
 * fork (it must stay shared, not come back as 8 copies).
 *
 *   cow PROGRESS VERDICT [MIB]
 *
 * The root fills MIB MiB (default 256) of private anonymous memory and a
 * heap buffer with a pattern, then forks the tree
 *
 *   root -> a -> a1, a2
 *        -> b -> b1 -> b11
 *        -> c
 *
 * Every non-root process makes a few pages its own before it forks its
 * children (who inherit them): it writes its id into some, zeros one,
 * drops one with MADV_DONTNEED (it then reads zeros) and unmaps one. The
 * root counts ticks into PROGRESS once every process is ready. On SIGTERM each process passes SIGTERM to its children, checks
 * every page of its own memory, waits for its children and exits 0 only if
 * all is well; the root writes PASS or FAIL to VERDICT.
 */
#include "common.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define PAGE 4096
#define HEAP_SIZE (1 << 20)
#define NPROC 8

static volatile int stop;
static size_t npages;
static uint64_t *mem;	/* npages pages */
static uint64_t *heap;	/* HEAP_SIZE bytes of malloc */
static int *ready;	/* shared: processes ready */
static int id;		/* 0 root, 1.. the others */
static pid_t kids[4];
static int nkids;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static const int parent_of[NPROC] = { -1, 0, 0, 0, 1, 1, 2, 6 };

/* Pages process i changes: owned when page % 61 == i. */
static int owns(int i, size_t page) { return i && page % 61 == (size_t)i; }
static size_t zeroed(int i) { return 7 * (size_t)i + 3; }
static size_t dropped(int i) { return 11 * (size_t)i + 5; }
static size_t unmapped(int i) { return 13 * (size_t)i + 2; }

/* is_ancestor: a is id or one of its ancestors (the root excluded). */
static int is_ancestor(int a)
{
	for (int i = id; i > 0; i = parent_of[i])
		if (i == a)
			return 1;
	return 0;
}

/* page_state: what id's ancestors' changes and its own made of a page:
 * unmapped (*gone), zeroed (returns 1), or XORed with *x. */
static int page_state(size_t page, uint64_t *x, int *gone)
{
	int chain[NPROC], n = 0, zero = 0;
	for (int i = id; i > 0; i = parent_of[i])
		chain[n++] = i;
	*x = 0;
	*gone = 0;
	while (n-- > 0) {
		int a = chain[n];
		if (owns(a, page))
			*x ^= (uint64_t)a;
		if (page == zeroed(a) || page == dropped(a))
			zero = 1, *x = 0;
		if (page == unmapped(a))
			*gone = 1;
	}
	return zero;
}

static void modify(void)
{
	int gone;
	uint64_t x;
	for (size_t p = 0; p < npages; p++)
		if (owns(id, p) && (page_state(p, &x, &gone), !gone))
			for (size_t w = 0; w < 512; w++)
				mem[p * 512 + w] ^= (uint64_t)id;
	memset(&mem[zeroed(id) * 512], 0, PAGE);
	madvise(&mem[dropped(id) * 512], PAGE, MADV_DONTNEED);
	munmap(&mem[unmapped(id) * 512], PAGE);
	heap[id] = (uint64_t)id;
}

static void finish(const char *verdict, uint64_t ticks);

/* child forks process new_id, which changes its pages and then forks its
 * own children (body). */
static void child(int new_id, void (*body)(void))
{
	pid_t pid = fork();
	if (pid < 0)
		exit(2);
	if (pid > 0) {
		kids[nkids++] = pid;
		return;
	}
	id = new_id;
	nkids = 0;
	modify();
	if (body)
		body();
	__atomic_add_fetch(ready, 1, __ATOMIC_SEQ_CST);
	while (!stop)
		sleep_ns(10000000L, &stop);
	finish(NULL, 0);
}

static const char *check(void)
{
	for (size_t p = 0; p < npages; p++) {
		int gone;
		uint64_t x;
		int zero = page_state(p, &x, &gone);
		if (gone) {
			unsigned char v;
			if (mincore(&mem[p * 512], PAGE, &v) == 0 || errno != ENOMEM)
				return "an unmapped page is mapped again";
			continue;
		}
		/* Every page, a few words of each: errors here are whole pages. */
		for (size_t w = 0; w < 512; w += 73) {
			/* A zeroed page, XORed by a later owner, holds just x. */
			uint64_t want = zero ? x : mix64(p * 512 + w) ^ x;
			if (mem[p * 512 + w] != want)
				return "a page differs";
		}
	}
	for (int i = 1; i < NPROC; i++)
		if (heap[i] != (is_ancestor(i) ? (uint64_t)i : mix64(i)))
			return "the heap differs";
	return NULL;
}

/* finish passes SIGTERM on, checks, reaps the children and exits. */
static void finish(const char *verdict, uint64_t ticks)
{
	for (int i = 0; i < nkids; i++)
		kill(kids[i], SIGTERM);
	const char *why = check();
	for (int i = 0; i < nkids; i++) {
		int st;
		if (waitpid(kids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			if (!why)
				why = "a descendant found its memory damaged";
	}
	if (verdict) {
		FILE *v = fopen(verdict, "w");
		if (!v)
			exit(2);
		if (why)
			fprintf(v, "FAIL %s\n", why);
		else
			fprintf(v, "PASS %llu\n", (unsigned long long)ticks);
		fclose(v);
	}
	exit(why ? 1 : 0);
}

static void tree_a(void) { child(4, NULL); child(5, NULL); }
static void tree_b11(void) { child(7, NULL); }
static void tree_b(void) { child(6, tree_b11); }

int main(int argc, char **argv)
{
	close_inherited();
	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: cow PROGRESS VERDICT [MIB]\n");
		return 2;
	}
	size_t mib = argc == 4 ? strtoul(argv[3], NULL, 10) : 256;
	detach();
	int prog = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (prog < 0)
		return 2;
	signal(SIGTERM, on_term);
	npages = mib << 20 >> 12;
	mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ready = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	heap = malloc(HEAP_SIZE);
	if (mem == MAP_FAILED || ready == MAP_FAILED || !heap)
		return 2;
	for (size_t i = 0; i < npages * 512; i++)
		mem[i] = mix64(i);
	for (int i = 0; i < HEAP_SIZE / 8; i++)
		heap[i] = mix64(i);

	child(1, tree_a);
	child(2, tree_b);
	child(3, NULL);

	uint64_t ticks = 0;
	char line[32];
	while (!stop) {
		if (__atomic_load_n(ready, __ATOMIC_SEQ_CST) == NPROC - 1) {
			ticks++;
			int len = snprintf(line, sizeof(line), "%llu\n", (unsigned long long)ticks);
			pwrite(prog, line, len, 0);
		}
		sleep_ns(10000000L, &stop);
	}
	finish(argv[2], ticks);
}
