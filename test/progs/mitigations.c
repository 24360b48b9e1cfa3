/*
 * mitigations: the hardening a process asked for with prctl(2) must survive
 * a checkpoint: memory-deny-write-execute (PR_SET_MDWE, which systemd's
 * MemoryDenyWriteExecute= sets) and per-thread speculation mitigations
 * (PR_SET_SPECULATION_CTRL).
 *
 *   mitigations PROGRESS VERDICT
 *
 * The process sets PR_MDWE_REFUSE_EXEC_GAIN; its main thread disables
 * speculative store bypass, a second thread force-disables it. The check
 * reads PR_GET_MDWE, tries a writable executable mapping (which must be
 * refused), and reads each thread's Speculation_Store_Bypass line in
 * /proc/self/task/TID/status. A machine whose store bypass mitigation is
 * not under prctl control skips that part (setup says so on stderr).
 */
#include "state.h"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif

static pid_t second;
static int ssb_control = 1; /* the machine lets prctl control store bypass */

static void *force_disable(void *arg)
{
	(void)arg;
	if (prctl(PR_SET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, PR_SPEC_FORCE_DISABLE, 0, 0) != 0)
		die("PR_SPEC_FORCE_DISABLE");
	__atomic_store_n(&second, (pid_t)syscall(SYS_gettid), __ATOMIC_SEQ_CST);
	for (;;)
		pause();
	return NULL;
}

/* ssb_line copies the Speculation_Store_Bypass value of thread tid. */
static void ssb_line(pid_t tid, char *out, size_t n)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/self/task/%d/status", tid);
	snprintf(out, n, "(none)");
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	while (fgets(line, sizeof line, f))
		if (!strncmp(line, "Speculation_Store_Bypass:", 25)) {
			char *v = line + 25;
			v += strspn(v, " \t");
			v[strcspn(v, "\n")] = 0;
			snprintf(out, n, "%s", v);
		}
	fclose(f);
}

static const char *check(char *why, size_t n)
{
	int mdwe = prctl(PR_GET_MDWE, 0, 0, 0, 0);
	if (mdwe != PR_MDWE_REFUSE_EXEC_GAIN) {
		snprintf(why, n, "PR_GET_MDWE is %d, want %d", mdwe, PR_MDWE_REFUSE_EXEC_GAIN);
		return why;
	}
	void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p != MAP_FAILED) {
		snprintf(why, n, "a writable executable mapping was allowed");
		return why;
	}
	if (!ssb_control)
		return NULL;
	char main_ssb[64], second_ssb[64];
	ssb_line(getpid(), main_ssb, sizeof main_ssb);
	ssb_line(second, second_ssb, sizeof second_ssb);
	if (strcmp(main_ssb, "thread mitigated") || strcmp(second_ssb, "thread force mitigated")) {
		snprintf(why, n, "Speculation_Store_Bypass: main thread \"%s\" (want thread mitigated), second \"%s\" (want thread force mitigated)",
			 main_ssb, second_ssb);
		return why;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "mitigations PROGRESS VERDICT");
	if (prctl(PR_SET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, PR_SPEC_DISABLE, 0, 0) != 0) {
		if (errno != ENXIO && errno != EPERM)
			die("PR_SPEC_DISABLE");
		fprintf(stderr, "mitigations: store bypass is not under prctl control here (%s): not checked\n", strerror(errno));
		ssb_control = 0;
	}
	if (ssb_control) {
		pthread_t t;
		if (pthread_create(&t, NULL, force_disable, NULL) != 0)
			die("pthread_create");
		while (!__atomic_load_n(&second, __ATOMIC_SEQ_CST))
			sleep_ns(1000000L, NULL);
	}
	if (prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0)
		die("PR_SET_MDWE");
	return state_run("mitigations", check);
}
