/*
 * seccomp-strict: a process in seccomp strict mode (only read, write,
 * _exit and sigreturn allowed) must be checkpointed and restored without
 * being killed by its own mode, and still be in strict mode afterwards.
 *
 *   seccomp-strict PROGRESS VERDICT
 *
 * It maps PROGRESS shared (strict mode forbids pwrite), calibrates a spin
 * loop of 10 ms (strict mode also disables the time stamp counter, and the
 * vDSO may fall back to a syscall), enters strict mode, and ticks by
 * spinning. SIGTERM's handler returns with rt_sigreturn; the program then
 * writes "PASS <ticks>" with write(2) and leaves with _exit(2), not
 * exit_group(2). Whether strict mode survived is seen from outside
 * (/proc/PID/status Seccomp: 1): any other syscall here would kill it.
 */
#include "state.h"

#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static volatile uint64_t sink;

static void spin(uint64_t n)
{
	for (uint64_t i = 0; i < n && !got_term; i++)
		sink += i;
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "seccomp-strict PROGRESS VERDICT");
	if (ftruncate(progress_fd, 21) != 0)
		die("ftruncate");
	char *prog = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, progress_fd, 0);
	if (prog == MAP_FAILED)
		die("mmap progress");
	uint64_t n = 1 << 16;
	for (;;) {
		int64_t t0 = mono_ns();
		spin(n);
		int64_t el = mono_ns() - t0;
		if (el > 20 * 1000000L) {
			n = n * TICK_NS / el;
			break;
		}
		n *= 2;
	}

	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0)
		die("PR_SET_SECCOMP");
	/* From here on: read, write, _exit and rt_sigreturn only. */
	while (!got_term) {
		ticks++;
		char line[32];
		snprintf(line, sizeof line, "%20llu\n", (unsigned long long)ticks);
		memcpy(prog, line, 21);
		spin(n);
	}
	char msg[64];
	int len = snprintf(msg, sizeof msg, "PASS %llu\n", (unsigned long long)ticks);
	if (write(verdict_fd, msg, len) != len)
		syscall(SYS_exit, 1);
	syscall(SYS_exit, 0);
	return 0;
}
