/* target: a test subject for crpipe's dump-side stages.
 *
 * It installs a SIGUSR1 handler (SA_SIGINFO|SA_RESTART, SIGUSR2 in its mask)
 * and ignores SIGPIPE, prints "info handler=0x... restorer=0x... tidaddr=0x..."
 * and "ready", then runs one mode:
 *   sleep N   nanosleep N seconds once; print "slept ok" or "slept bad ERR"
 *   busy N    an LCG run N*10^8 steps in registers; print "busy x=HEX"
 *   tick      print "tick N" every 20 ms until killed
 *   thread    start a second thread, then tick
 *   child [MB] fork a child that pauses (after touching MB MiB), then tick
 *   pause     pause() until killed
 *   rseq      spin forever inside an rseq critical section (glibc's
 *             registration, or its own); print "rseq cs=0x... start=0x...
 *             end=0x..." (cs: the address of the struct rseq's rseq_cs
 *             field) before "ready", and "rseq abort N" each time the
 *             kernel aborts the section, which it must on every resume
 *             after a preemption, then enter it again
 *   unshare K leave a namespace, then tick: K is "net" (the process),
 *             "user" (the process), "pidnext" (CLONE_NEWPID: its next
 *             children's), "childnet" (a child that pauses), "threadnet"
 *             (a second thread that pauses)
 * SIGTERM makes it print "term" and exit 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t usr1;

static void on_usr1(int sig, siginfo_t *si, void *uc) { (void)sig; (void)si; (void)uc; usr1++; }
static void on_term(int sig) { (void)sig; static const char m[] = "term\n"; write(1, m, sizeof m - 1); _exit(0); }

static void *spin(void *arg) { (void)arg; for (;;) pause(); return 0; }

/* The critical section: [1, 2) spins forever; 4, after the signature, is
 * where the kernel aborts it to. rseq_cs is set just before entering. */
extern const char rseq_start[], rseq_end[];
static void rseq_spin(volatile uint64_t *cs_field) {
	__asm__ volatile(
		".pushsection .data.rseq_cs, \"aw\"\n"
		".balign 32\n"
		"3: .long 0, 0\n"
		".quad rseq_start, (rseq_end - rseq_start), 4f\n"
		".popsection\n"
		"leaq 3b(%%rip), %%rax\n"
		"movq %%rax, (%[cs])\n"
		".globl rseq_start\n"
		"rseq_start: jmp rseq_start\n"
		".globl rseq_end\n"
		"rseq_end:\n"
		".long 0x53053053\n"
		"4:\n"
		: : [cs] "r"(cs_field) : "rax", "memory");
}

/* unshare_in runs unshare(flags) in a new child or thread (where), or in
 * the process itself, and returns once it is done. */
static int unshare_pipe[2];
static int unshare_flags;
static void *unshare_then_pause(void *arg) {
	(void)arg;
	char ok = unshare(unshare_flags) == 0;
	if (write(unshare_pipe[1], &ok, 1) != 1) _exit(1);
	for (;;) pause();
	return 0;
}
static void unshare_in(const char *where, int flags) {
	unshare_flags = flags;
	if (!strcmp(where, "process")) {
		if (unshare(flags)) { perror("unshare"); exit(1); }
		return;
	}
	char ok = 0;
	if (pipe(unshare_pipe)) { perror("pipe"); exit(1); }
	if (!strcmp(where, "child")) {
		pid_t c = fork();
		if (c == 0) unshare_then_pause(0);
		printf("child %d\n", c); /* testprog kills it */
	} else {
		pthread_t t;
		pthread_create(&t, 0, unshare_then_pause, 0);
	}
	if (read(unshare_pipe[0], &ok, 1) != 1 || !ok) { fprintf(stderr, "unshare in a %s failed\n", where); exit(1); }
}

static void tick(void) {
	for (unsigned long n = 0;; n++) {
		printf("tick %lu\n", n);
		fflush(stdout);
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, 0);
	}
}

int main(int argc, char **argv) {
	/* Only stdio: descriptors leaked by whoever started the test are not
	 * the target's (and cr-files would refuse a stray pipe). */
	close_range(3, ~0U, 0);
	if (argc < 2) {
		fprintf(stderr, "usage: target sleep N|busy N|tick|thread|child|pause|rseq|unshare K\n");
		return 2;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_usr1;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGUSR2);
	if (sigaction(SIGUSR1, &sa, 0)) { perror("sigaction"); return 1; }
	struct sigaction cur;
	sigaction(SIGUSR1, 0, &cur);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, on_term);
	int *tidaddr = 0;
	prctl(PR_GET_TID_ADDRESS, &tidaddr);
	/* glibc fills sa_restorer itself; read it back from the kernel. */
	void *restorer = 0;
#ifdef __x86_64__
	{
		struct { void *h; unsigned long f; void *r; uint64_t m; } k;
		syscall(13 /* rt_sigaction */, SIGUSR1, 0, &k, 8);
		restorer = k.r;
	}
#endif
	printf("info handler=%p restorer=%p tidaddr=%p\n", (void *)on_usr1, restorer, (void *)tidaddr);
	/* Threads and children exist before "ready". */
	if (!strcmp(argv[1], "thread")) {
		pthread_t t;
		pthread_create(&t, 0, spin, 0);
	}
	if (!strcmp(argv[1], "unshare") && argc > 2) {
		const char *k = argv[2];
		fflush(stdout);
		if (!strcmp(k, "net")) unshare_in("process", CLONE_NEWNET);
		else if (!strcmp(k, "user")) unshare_in("process", CLONE_NEWUSER);
		else if (!strcmp(k, "pidnext")) unshare_in("process", CLONE_NEWPID);
		else if (!strcmp(k, "childnet")) unshare_in("child", CLONE_NEWNET);
		else if (!strcmp(k, "threadnet")) unshare_in("thread", CLONE_NEWNET);
		else { fprintf(stderr, "unknown namespace case %s\n", k); return 2; }
	}
	if (!strcmp(argv[1], "child")) {
		fflush(stdout);
		pid_t c = fork();
		if (c == 0) {
			/* child MB: the child touches MB MiB first (its exit takes a
			 * while), in 4 KiB pages: huge pages would free at once */
			size_t len = argc > 2 ? strtoul(argv[2], 0, 10) << 20 : 0;
			char *m = len ? mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) : 0;
			if (m == MAP_FAILED) { perror("mmap"); _exit(1); }
			if (m) madvise(m, len, MADV_NOHUGEPAGE);
			for (size_t i = 0; m && i < len; i += 4096)
				m[i] = 1;
			for (;;) pause();
		}
		printf("child %d\n", c);
	}
	volatile uint64_t *cs_field = 0;
	if (!strcmp(argv[1], "rseq")) {
		static struct rseq own __attribute__((aligned(32)));
		if (__rseq_size > 0) {
			cs_field = (uint64_t *)((char *)__builtin_thread_pointer() + __rseq_offset + offsetof(struct rseq, rseq_cs));
		} else {
			if (syscall(SYS_rseq, &own, sizeof own, 0, RSEQ_SIG)) { perror("rseq"); return 1; }
			cs_field = (uint64_t *)&own.rseq_cs;
		}
		printf("rseq cs=%p start=%p end=%p\n", (void *)cs_field, (void *)rseq_start, (void *)rseq_end);
	}
	printf("ready\n");
	fflush(stdout);
	if (cs_field) {
		for (unsigned long n = 1;; n++) {
			rseq_spin(cs_field);
			printf("rseq abort %lu\n", n);
			fflush(stdout);
		}
	}

	if (!strcmp(argv[1], "sleep")) {
		struct timespec a, b, req = {argc > 2 ? atoi(argv[2]) : 2, 0};
		clock_gettime(CLOCK_MONOTONIC, &a);
		int r = nanosleep(&req, 0);
		int e = errno;
		clock_gettime(CLOCK_MONOTONIC, &b);
		double el = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
		if (r == 0 && el >= req.tv_sec)
			printf("slept ok\n");
		else
			printf("slept bad r=%d errno=%d elapsed=%.3f\n", r, r ? e : 0, el);
		fflush(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "busy")) {
		unsigned long n = (argc > 2 ? strtoul(argv[2], 0, 10) : 10) * 100000000UL;
		uint64_t x = 1;
		for (unsigned long i = 0; i < n; i++)
			x = x * 6364136223846793005ULL + 1442695040888963407ULL + (i >> 7);
		printf("busy x=%llx\n", (unsigned long long)x);
		fflush(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "tick"))
		tick();
	if (!strcmp(argv[1], "thread") || !strcmp(argv[1], "child") || !strcmp(argv[1], "unshare"))
		tick();
	if (!strcmp(argv[1], "pause")) {
		for (;;) pause();
	}
	fprintf(stderr, "unknown mode %s\n", argv[1]);
	return 2;
}
