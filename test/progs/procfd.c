/*
 * procfd: fds open on the process's own /proc/PID/ files survive a
 * checkpoint, as files of the restored process (their inodes change).
 *
 *   procfd PROGRESS VERDICT [foreign|thread]
 *
 * It opens /proc/self/status, /proc/self/stat (and reads 16 bytes of it:
 * the offset must stay), the directory /proc/self and
 * /proc/self/task/<its pid>/comm. The check reads each again: status
 * names this process and its pid as it sees it, stat starts with its pid,
 * comm through the directory fd and the task fd is "procfd", and stat's
 * offset is still 16.
 * With "foreign" it also holds /proc/1/status (a process outside the
 * dump), with "thread" the stat of a second thread of its own: a dump
 * must refuse both.
 */
#include "state.h"

#include <pthread.h>
#include <sys/syscall.h>

static int status_fd, stat_fd, dir_fd, comm_fd;

static void *idle(void *arg)
{
	*(pid_t *)arg = syscall(SYS_gettid);
	for (;;)
		pause();
	return NULL;
}

static int open_or_die(const char *path, int flags)
{
	int fd = open(path, flags);
	if (fd < 0)
		die(path);
	return fd;
}

static const char *check(char *why, size_t n)
{
	char buf[4096], want[64];
	ssize_t k = pread(status_fd, buf, sizeof buf - 1, 0);
	if (k <= 0) {
		snprintf(why, n, "read /proc/self/status fd: %s", k < 0 ? strerror(errno) : "empty");
		return why;
	}
	buf[k] = 0;
	snprintf(want, sizeof want, "\nPid:\t%d\n", getpid());
	if (strncmp(buf, "Name:\tprocfd\n", 13) || !strstr(buf, want)) {
		snprintf(why, n, "the status fd reads another process's status (want pid %d): %.80s", getpid(), buf);
		return why;
	}
	off_t at = lseek(stat_fd, 0, SEEK_CUR);
	k = pread(stat_fd, buf, sizeof buf - 1, 0);
	buf[k > 0 ? k : 0] = 0;
	snprintf(want, sizeof want, "%d (procfd) ", getpid());
	if (at != 16 || strncmp(buf, want, strlen(want))) {
		snprintf(why, n, "the stat fd is at %lld (want 16) and reads %.40s", (long long)at, buf);
		return why;
	}
	int c = openat(dir_fd, "comm", O_RDONLY);
	k = c < 0 ? -1 : pread(c, buf, sizeof buf - 1, 0);
	if (c >= 0)
		close(c);
	if (k != 7 || strncmp(buf, "procfd\n", 7)) {
		snprintf(why, n, "comm through the /proc/self directory fd: %s", k < 0 ? strerror(errno) : "not procfd");
		return why;
	}
	k = pread(comm_fd, buf, sizeof buf - 1, 0);
	if (k != 7 || strncmp(buf, "procfd\n", 7)) {
		snprintf(why, n, "the task's comm fd: %s", k < 0 ? strerror(errno) : "not procfd");
		return why;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "procfd PROGRESS VERDICT [foreign|thread]");
	char path[64], skip[16];
	status_fd = open_or_die("/proc/self/status", O_RDONLY);
	stat_fd = open_or_die("/proc/self/stat", O_RDONLY);
	if (read(stat_fd, skip, sizeof skip) != sizeof skip)
		die("read stat");
	dir_fd = open_or_die("/proc/self", O_RDONLY | O_DIRECTORY);
	snprintf(path, sizeof path, "/proc/self/task/%d/comm", getpid());
	comm_fd = open_or_die(path, O_RDONLY);
	if (argc > 3 && !strcmp(argv[3], "foreign")) {
		open_or_die("/proc/1/status", O_RDONLY);
	} else if (argc > 3 && !strcmp(argv[3], "thread")) {
		volatile pid_t tid = 0;
		pthread_t t;
		if (pthread_create(&t, NULL, idle, (void *)&tid) != 0)
			die("pthread_create");
		while (!tid)
			sleep_ns(1000000L, NULL);
		snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
		open_or_die(path, O_RDONLY);
	}
	return state_run("procfd", check);
}
