/*
 * rseqcs: a thread caught inside an rseq critical section must be aborted
 * when it runs again after a restore, as the kernel does after any
 * preemption, and must go on being aborted after that.
 *
 *   rseqcs PROGRESS VERDICT
 *
 * A second thread spends its life inside a critical section that spins
 * (rseq_cs is set just before entering, as rseq users do); each abort
 * lands after the section, counts, and enters again. If the rseq_cs
 * pointer of its struct rseq were lost on the way (cleared by the kernel
 * while the thread ran somewhere else during the restore), the thread
 * would spin inside the section for good and the count would stop.
 * The check waits for the count to move, at start and on SIGTERM.
 */
#include "state.h"

#include <pthread.h>
#include <stddef.h>
#include <sys/rseq.h>

static volatile uint64_t aborts;

/* enter sets rseq_cs and spins in [cs_start, cs_end) until the kernel
 * aborts the section to label 4 (after the signature it checks). */
extern const char cs_start[], cs_end[];
static void enter(volatile uint64_t *rseq_cs)
{
	__asm__ volatile(".pushsection .data.rseqcs_desc, \"aw\"\n"
			 ".balign 32\n"
			 "3: .long 0, 0\n" /* version, flags */
			 ".quad cs_start, (cs_end - cs_start), 4f\n"
			 ".popsection\n"
			 "leaq 3b(%%rip), %%rax\n"
			 "movq %%rax, (%[cs])\n"
			 ".globl cs_start\n"
			 "cs_start: jmp cs_start\n"
			 ".globl cs_end\n"
			 "cs_end:\n"
			 ".long 0x53053053\n" /* RSEQ_SIG on x86 */
			 "4:\n"
			 :
			 : [cs] "r"(rseq_cs)
			 : "rax", "memory");
}

static void *spinner(void *arg)
{
	(void)arg;
	if (__rseq_size == 0) {
		fprintf(stderr, "rseqcs: glibc registered no rseq area\n");
		exit(2);
	}
	volatile uint64_t *rseq_cs =
		(uint64_t *)((char *)__builtin_thread_pointer() + __rseq_offset + offsetof(struct rseq, rseq_cs));
	for (;;) {
		enter(rseq_cs);
		__atomic_add_fetch(&aborts, 1, __ATOMIC_SEQ_CST);
	}
	return NULL;
}

static const char *check(char *why, size_t n)
{
	uint64_t was = __atomic_load_n(&aborts, __ATOMIC_SEQ_CST);
	for (int i = 0; i < 300; i++) {
		if (__atomic_load_n(&aborts, __ATOMIC_SEQ_CST) != was)
			return NULL;
		sleep_ns(10000000L, NULL);
	}
	snprintf(why, n, "the critical section was not aborted in 3 s (%llu aborts so far): its rseq_cs was lost",
		 (unsigned long long)was);
	return why;
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "rseqcs PROGRESS VERDICT");
	pthread_t t;
	if (pthread_create(&t, NULL, spinner, NULL) != 0)
		die("pthread_create");
	return state_run("rseqcs", check);
}
