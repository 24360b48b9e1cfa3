/*
 * jobstop: a stopped job and the shell-like parent that stopped it.
 *
 *   jobstop PROGRESS VERDICT
 *
 * The parent forks a job (its own process group, comm "jobstop-job") with
 * three threads that each count, every millisecond, in memory shared with
 * the parent. Once they count, the parent stops the job with SIGTSTP, as
 * a shell's Ctrl-Z does, sees the stop with waitpid(WUNTRACED), then
 * ticks PROGRESS every 10 ms, and on each tick checks that no count moved.
 *
 * On SIGTERM it checks that every thread of the job is still stopped
 * (/proc state T) and no count moved, continues the job with SIGCONT,
 * sees it continued (waitpid WCONTINUED), checks that every thread counts
 * again, kills the job, and writes "PASS <ticks>" or "FAIL <reason>".
 * A restore stops the job again: the parent may see one more stop report
 * (WSTOPSIG SIGSTOP) before the continue; any other report fails.
 */
#include "common.h"

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#define NTHREADS 3

struct shared {
	volatile uint64_t count[NTHREADS];
};

static struct shared *sh;
static volatile sig_atomic_t term;
static char fail_reason[256];

static void on_term(int sig)
{
	(void)sig;
	term = 1;
}

static void *counter_thread(void *arg)
{
	long i = (long)arg;
	for (;;) {
		sh->count[i]++;
		sleep_ns(1000000L, NULL);
	}
	return NULL;
}

static void job(void)
{
	prctl(PR_SET_NAME, "jobstop-job");
	pthread_t t;
	for (long i = 1; i < NTHREADS; i++)
		if (pthread_create(&t, NULL, counter_thread, (void *)i) != 0)
			_exit(2);
	counter_thread((void *)0);
}

static void fail(const char *fmt, const char *what, long v)
{
	if (!fail_reason[0])
		snprintf(fail_reason, sizeof(fail_reason), fmt, what, v);
}

/* stopped_threads: how many threads of pid are in state T; -1 on error. */
static int stopped_threads(pid_t pid, int *total)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	DIR *d = opendir(path);
	if (!d)
		return -1;
	int n = 0;
	*total = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char sp[320], buf[512];
		snprintf(sp, sizeof(sp), "/proc/%d/task/%s/stat", pid, e->d_name);
		int fd = open(sp, O_RDONLY);
		if (fd < 0)
			continue;
		ssize_t r = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (r <= 0)
			continue;
		buf[r] = 0;
		char *p = strrchr(buf, ')');
		(*total)++;
		if (p && p[1] == ' ' && p[2] == 'T')
			n++;
	}
	closedir(d);
	return n;
}

static void verdict(const char *path, uint64_t ticks)
{
	char tmp[4096], text[400];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if (fail_reason[0])
		snprintf(text, sizeof(text), "FAIL %s\n", fail_reason);
	else
		snprintf(text, sizeof(text), "PASS %llu\n", (unsigned long long)ticks);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, text, strlen(text)) < 0 || close(fd) || rename(tmp, path))
		exit(2);
}

int main(int argc, char **argv)
{
	close_inherited();
	if (argc != 3) {
		fprintf(stderr, "usage: jobstop PROGRESS VERDICT\n");
		return 2;
	}
	detach();
	int prog = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (prog < 0)
		return 2;
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return 2;
	struct sigaction sa = { .sa_handler = on_term };
	sigaction(SIGTERM, &sa, NULL);

	pid_t kid = fork();
	if (kid < 0)
		return 2;
	if (kid == 0)
		job();
	setpgid(kid, kid);
	/* Let every thread count before the stop. */
	for (int i = 0; i < NTHREADS; i++)
		while (sh->count[i] < 5)
			sleep_ns(1000000L, NULL);
	kill(kid, SIGTSTP);
	int ws;
	if (waitpid(kid, &ws, WUNTRACED) != kid || !WIFSTOPPED(ws) || WSTOPSIG(ws) != SIGTSTP)
		return 2;
	uint64_t at_stop[NTHREADS];
	for (int i = 0; i < NTHREADS; i++)
		at_stop[i] = sh->count[i];

	uint64_t ticks = 0;
	while (!term) {
		ticks++;
		char line[22];
		snprintf(line, sizeof(line), "%20llu\n", (unsigned long long)ticks);
		if (pwrite(prog, line, 21, 0) != 21)
			fail("%s %ld", "pwrite progress failed", 0);
		for (int i = 0; i < NTHREADS; i++)
			if (sh->count[i] != at_stop[i])
				fail("%s %ld counted while stopped", "thread", i);
		sleep_ns(10000000L, &term);
	}

	int total, stopped = stopped_threads(kid, &total);
	if (stopped != NTHREADS || total != NTHREADS)
		fail("%s: %ld of its threads are stopped (state T)", "the job", stopped);
	for (int i = 0; i < NTHREADS; i++)
		if (sh->count[i] != at_stop[i])
			fail("%s %ld counted while stopped", "thread", i);
	/* The stop a restore makes again, if the parent has not seen it. */
	pid_t r = waitpid(kid, &ws, WUNTRACED | WNOHANG);
	if (r == kid && !(WIFSTOPPED(ws) && WSTOPSIG(ws) == SIGSTOP))
		fail("%s: wait reports status %#lx, not a stop by SIGSTOP", "the job", ws);
	kill(kid, SIGCONT);
	if (waitpid(kid, &ws, WCONTINUED) != kid || !WIFCONTINUED(ws))
		fail("%s: wait reports status %#lx, not continued", "the job", ws);
	for (int i = 0; i < NTHREADS; i++) {
		int n = 0;
		while (sh->count[i] < at_stop[i] + 5 && n++ < 5000)
			sleep_ns(1000000L, NULL);
		if (sh->count[i] < at_stop[i] + 5)
			fail("%s %ld does not count after SIGCONT", "thread", i);
	}
	kill(kid, SIGKILL);
	waitpid(kid, &ws, 0);
	verdict(argv[2], ticks);
	return fail_reason[0] ? 1 : 0;
}
