/*
 * landlocked: a process sandboxed with Landlock, which a restore could not
 * give back: its dump must be refused, and the process left running in
 * its sandbox.
 *
 *   landlocked PROGRESS VERDICT process|thread
 *
 * "process": the main thread restricts itself (no file may be read) before
 * it ticks. "thread": a second thread restricts itself and waits; the main
 * thread, not sandboxed, ticks. Exit status 3 when the kernel has no
 * Landlock (the test looks first). The check: reading /etc/hostname is denied to the sandboxed
 * thread, and (thread) allowed to the main one.
 */
#include "state.h"

#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_restrict_self 446
#endif
#define LANDLOCK_ACCESS_FS_READ_FILE (1ULL << 2)

static const char *mode;
static volatile int sandboxed_result = -1; /* the sandboxed thread's last look: 1 denied, 0 allowed */
static volatile int look_now;

static int restrict_self(void)
{
	uint64_t attr[3] = { LANDLOCK_ACCESS_FS_READ_FILE, 0, 0 }; /* fs, net, scoped */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		return -1;
	int fd = syscall(SYS_landlock_create_ruleset, attr, sizeof attr, 0);
	if (fd < 0)
		return -1;
	int r = syscall(SYS_landlock_restrict_self, fd, 0);
	close(fd);
	return r;
}

/* denied: reading a file is refused to the calling thread. */
static int denied(void)
{
	int fd = open("/etc/hostname", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		close(fd);
		return 0;
	}
	return errno == EACCES;
}

static void *sandboxed_thread(void *arg)
{
	(void)arg;
	if (restrict_self() != 0) {
		sandboxed_result = -2;
		return NULL;
	}
	for (;;) {
		if (look_now) {
			sandboxed_result = denied();
			look_now = 0;
		}
		sleep_ns(1000000, NULL);
	}
	return NULL;
}

static const char *check(char *why, size_t n)
{
	if (!strcmp(mode, "process")) {
		if (!denied()) {
			snprintf(why, n, "the process reads files: not sandboxed");
			return why;
		}
		return NULL;
	}
	sandboxed_result = -1;
	look_now = 1;
	while (look_now)
		sleep_ns(1000000, NULL);
	if (sandboxed_result != 1) {
		snprintf(why, n, "the second thread reads files: not sandboxed (%d)", sandboxed_result);
		return why;
	}
	if (denied()) {
		snprintf(why, n, "the main thread may not read files");
		return why;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 4, "landlocked PROGRESS VERDICT process|thread");
	mode = argv[3];
	long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, 1 /* LANDLOCK_CREATE_RULESET_VERSION */);
	if (abi < 1) {
		fprintf(stderr, "landlocked: no Landlock: %s\n", strerror(errno));
		return 3;
	}
	if (!strcmp(mode, "process")) {
		if (restrict_self() != 0)
			die("landlock_restrict_self");
	} else {
		pthread_t t;
		look_now = 1; /* its first look, once sandboxed */
		if (pthread_create(&t, NULL, sandboxed_thread, NULL) != 0)
			die("pthread_create");
		while (look_now && sandboxed_result != -2)
			sleep_ns(1000000, NULL);
		if (sandboxed_result == -2)
			die("landlock_restrict_self in a thread");
	}
	return state_run("landlocked", check);
}
