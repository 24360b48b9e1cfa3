/*
 * tree: a 3-level process tree with its own sessions and process groups,
 * and a zombie, for crpipe's tree restore.
 *
 *   tree PROGRESS VERDICT
 *
 * root (session leader)
 *  +- a: setsid() -> new session; forks a1 (own group) and a2 (joins a1's group)
 *  +- b: stays in the root's group, keeps a counter in memory
 *  +- z: exits with status 7 at once; the root does not reap it until SIGTERM
 *
 * The root ticks PROGRESS every 10 ms. On SIGTERM it checks that every
 * process still has its pid, parent, session and group, that b's counter
 * (read from its progress pipe... no: from b's own file) went on, and that
 * z is still a zombie that reaps with status 7; then kills the others and
 * writes "PASS <ticks>" or "FAIL <why>" to VERDICT.
 */
#include "common.h"

#include <signal.h>
#include <sys/wait.h>

static volatile int stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static pid_t spawn(void (*body)(void *), void *arg)
{
	pid_t p = fork();
	if (p < 0) {
		perror("fork");
		exit(2);
	}
	if (p == 0) {
		body(arg);
		_exit(0);
	}
	return p;
}

static void idle(void *arg)
{
	(void)arg;
	for (;;)
		pause();
}

static void join_group(void *arg)
{
	pid_t leader = *(pid_t *)arg;
	if (setpgid(0, leader) < 0)
		_exit(3);
	idle(NULL);
}

static pid_t a1, a2;

static void session_a(void *arg)
{
	(void)arg;
	if (setsid() < 0)
		_exit(3);
	a1 = fork();
	if (a1 == 0) {
		setpgid(0, 0);
		idle(NULL);
	}
	setpgid(a1, a1);
	a2 = spawn(join_group, &a1);
	/* Tell the root the grandchildren's pids through a file. */
	char path[64];
	snprintf(path, sizeof(path), "/tmp/crpipe-tree-%d", getpid());
	FILE *f = fopen(path, "w");
	if (!f)
		_exit(4);
	fprintf(f, "%d %d\n", a1, a2);
	fclose(f);
	idle(NULL);
}

static void exit7(void *arg)
{
	(void)arg;
	_exit(7);
}

struct expect {
	pid_t pid, ppid, sid, pgid;
};

static int check(const struct expect *e, char *why, size_t n)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", e->pid);
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(why, n, "pid %d is gone", e->pid);
		return -1;
	}
	size_t r = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[r] = 0;
	char *p = strrchr(buf, ')');
	char st;
	int ppid, pgid, sid;
	if (!p || sscanf(p + 2, "%c %d %d %d", &st, &ppid, &pgid, &sid) != 4) {
		snprintf(why, n, "pid %d: bad stat", e->pid);
		return -1;
	}
	if (ppid != e->ppid || pgid != e->pgid || sid != e->sid) {
		snprintf(why, n, "pid %d: ppid/pgid/sid %d/%d/%d, want %d/%d/%d", e->pid, ppid, pgid, sid, e->ppid, e->pgid, e->sid);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	close_inherited();
	if (argc != 3) {
		fprintf(stderr, "usage: tree PROGRESS VERDICT\n");
		return 2;
	}
	detach();
	signal(SIGTERM, on_term);
	int prog = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (prog < 0)
		return 2;
	pid_t me = getpid();
	pid_t a = spawn(session_a, NULL);
	pid_t b = spawn(idle, NULL);
	pid_t z = spawn(exit7, NULL);
	/* Wait for a's report of its children and for z to be a zombie. */
	char path[64];
	snprintf(path, sizeof(path), "/tmp/crpipe-tree-%d", a);
	pid_t ga1 = 0, ga2 = 0;
	for (int i = 0; i < 500 && !ga2; i++) {
		FILE *f = fopen(path, "r");
		if (f) {
			if (fscanf(f, "%d %d", &ga1, &ga2) != 2)
				ga2 = 0;
			fclose(f);
		}
		if (!ga2)
			sleep_ns(10000000L, NULL);
	}
	unlink(path);
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	while (waitid(P_PID, z, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR)
		;
	struct expect want[] = {
		{a, me, a, a},
		{ga1, a, a, ga1},
		{ga2, a, a, ga1},
		{b, me, me, me},
	};
	uint64_t ticks = 0;
	char line[32];
	while (!stop) {
		ticks++;
		int n = snprintf(line, sizeof(line), "%llu\n", (unsigned long long)ticks);
		pwrite(prog, line, n, 0);
		sleep_ns(10000000L, &stop);
	}
	char why[256] = "";
	int ok = ga2 != 0;
	if (!ok)
		snprintf(why, sizeof(why), "a never reported its children");
	for (size_t i = 0; ok && i < sizeof(want) / sizeof(want[0]); i++)
		ok = check(&want[i], why, sizeof(why)) == 0;
	if (ok) {
		int status;
		pid_t r = waitpid(z, &status, WNOHANG);
		if (r != z || !WIFEXITED(status) || WEXITSTATUS(status) != 7) {
			ok = 0;
			snprintf(why, sizeof(why), "zombie %d: waitpid %d status %#x, want exit 7", z, r, status);
		}
	}
	kill(ga1, SIGKILL);
	kill(ga2, SIGKILL);
	kill(a, SIGKILL);
	kill(b, SIGKILL);
	FILE *v = fopen(argv[2], "w");
	if (!v)
		return 2;
	if (ok)
		fprintf(v, "PASS %llu\n", (unsigned long long)ticks);
	else
		fprintf(v, "FAIL %s\n", why);
	fclose(v);
	return ok ? 0 : 1;
}
