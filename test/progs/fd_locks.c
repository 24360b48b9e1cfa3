/*
 * fd_locks: flock, POSIX and OFD locks must be held again after a restore,
 * each by its owner and on exactly its ranges.
 *
 *   fd_locks PROGRESS VERDICT DIR [wait|lease]
 *
 *   20      DIR/flock-sh, flock LOCK_SH
 *   21      DIR/flock-ex, flock LOCK_EX
 *   22, 23  one description of DIR/posix (dup): POSIX write locks on bytes
 *           10-29 and 40-59 with 45-49 unlocked again (the kernel splits it
 *           in two), read locks on 100-149 and 1000-EOF
 *   24      another description of DIR/posix: OFD write lock on 200-209,
 *           OFD read lock on 300-309
 *   26      a memfd, flock LOCK_EX
 *   27      DIR itself, flock LOCK_SH
 *   (no fd) DIR/maplocked, flock LOCK_EX, and DIR/mapofd, OFD write lock on
 *           0-99: each file mapped shared, then its fd closed, so that only
 *           the mapping holds the locked description (a JVM's perf data file)
 * A forked child shares 20-24 (so the flock and OFD locks are its too) and
 * takes its own POSIX write lock on 500-509 through its fd 22.
 * With "wait", two more children block: one in F_SETLKW on bytes 10-29,
 * one in flock LOCK_EX on DIR/flock-ex; their calls must restart and wait
 * again after a restore. With "lease", fd 25 holds a read lease on
 * DIR/leased (which a dump refuses).
 *
 * Check: a checker process (its own descriptions and fd table) finds every
 * lock with F_GETLK and F_OFD_GETLK (type, start, length, owner pid) and
 * nothing in the gaps, and flock LOCK_NB attempts fail or succeed as they
 * should; the kernel shows the POSIX locks on fd 22's description. With
 * "wait", unlocking 10-29 and flock-ex lets both waiters finish.
 */
#include "fdprog.h"

#include <sys/file.h>
#include <sys/mman.h>

static pid_t child, waiters[2];
static int waiting, leased;

static void posix_lock(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	must(fcntl(fd, cmd, &fl), "fcntl lock");
}

/* blocked reports whether /proc/locks shows pid waiting for a lock. */
static int blocked(pid_t pid)
{
	char line[256], want[32];
	snprintf(want, sizeof want, " %d ", pid);
	FILE *f = fopen("/proc/locks", "r");
	if (!f)
		return 0;
	int found = 0;
	while (!found && fgets(line, sizeof line, f))
		found = strstr(line, "->") && strstr(line, want);
	fclose(f);
	return found;
}

static int wait_blocked(pid_t pid)
{
	for (int i = 0; i < 200 && !blocked(pid); i++)
		usleep(5000);
	return blocked(pid);
}

static void setup(const char *arg)
{
	waiting = arg && !strcmp(arg, "wait");
	leased = arg && !strcmp(arg, "lease");
	at(must(open("flock-sh", O_RDWR | O_CREAT | O_TRUNC, 0644), "flock-sh"), 20);
	must(flock(20, LOCK_SH | LOCK_NB), "flock LOCK_SH");
	at(must(open("flock-ex", O_RDWR | O_CREAT | O_TRUNC, 0644), "flock-ex"), 21);
	must(flock(21, LOCK_EX | LOCK_NB), "flock LOCK_EX");

	at(must(open("posix", O_RDWR | O_CREAT | O_TRUNC, 0644), "posix"), 22);
	must(dup2(22, 23), "dup2 23");
	/* Opened before the POSIX locks: closing the original fd after the
	 * dup2 would drop every POSIX lock of ours on the file. */
	at(must(open("posix", O_RDWR), "posix again"), 24);
	posix_lock(22, F_SETLK, F_WRLCK, 10, 20);
	posix_lock(23, F_SETLK, F_WRLCK, 40, 20);
	posix_lock(22, F_SETLK, F_UNLCK, 45, 5);
	posix_lock(22, F_SETLK, F_RDLCK, 100, 50);
	posix_lock(22, F_SETLK, F_RDLCK, 1000, 0);
	posix_lock(24, F_OFD_SETLK, F_WRLCK, 200, 10);
	posix_lock(24, F_OFD_SETLK, F_RDLCK, 300, 10);

	at(must(memfd_create("locked", 0), "memfd_create"), 26);
	must(flock(26, LOCK_EX | LOCK_NB), "flock memfd");
	at(must(open(".", O_RDONLY | O_DIRECTORY), "."), 27);
	must(flock(27, LOCK_SH | LOCK_NB), "flock DIR");

	for (int i = 0; i < 2; i++) {
		int fd = must(open(i ? "mapofd" : "maplocked", O_RDWR | O_CREAT | O_TRUNC, 0644), "mapped file");
		must(ftruncate(fd, 4096), "ftruncate");
		if (i)
			posix_lock(fd, F_OFD_SETLK, F_WRLCK, 0, 100);
		else
			must(flock(fd, LOCK_EX | LOCK_NB), "flock maplocked");
		if (mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED)
			die("mmap locked file");
		close(fd);
	}

	if (leased) {
		close(must(open("leased", O_WRONLY | O_CREAT | O_TRUNC, 0644), "leased"));
		at(must(open("leased", O_RDONLY), "leased again"), 25);
		must(fcntl(25, F_SETLEASE, F_RDLCK), "F_SETLEASE");
	}

	child = must(fork(), "fork");
	if (child == 0) {
		posix_lock(22, F_SETLK, F_WRLCK, 500, 10);
		for (;;)
			pause();
	}
	if (!waiting)
		return;
	for (int i = 0; i < 2; i++) {
		waiters[i] = must(fork(), "fork waiter");
		if (waiters[i])
			continue;
		/* Its own description: flock and OFD locks of ours conflict. */
		int fd = open(i == 0 ? "posix" : "flock-ex", O_RDWR);
		struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 20 };
		int r;
		do
			r = i == 0 ? fcntl(fd, F_SETLKW, &fl) : flock(fd, LOCK_EX);
		while (r < 0 && errno == EINTR);
		_exit(r == 0 ? 0 : 1);
	}
	for (int i = 0; i < 2; i++)
		if (!wait_blocked(waiters[i]))
			die("waiter does not block");
}

/* probe is one F_GETLK (or F_OFD_GETLK) question and the answer expected. */
struct probe {
	int cmd;
	short type;
	off_t start;
	short want;  /* F_UNLCK: nothing conflicts */
	off_t wstart, wlen;
	int owner;   /* 0: the parent, 1: the child, -1: an OFD lock */
};

static const struct probe probes[] = {
	{ F_GETLK, F_WRLCK, 9, F_UNLCK, 0, 0, 0 },
	{ F_GETLK, F_WRLCK, 10, F_WRLCK, 10, 20, 0 },
	{ F_GETLK, F_RDLCK, 29, F_WRLCK, 10, 20, 0 },
	{ F_GETLK, F_WRLCK, 30, F_UNLCK, 0, 0, 0 },
	{ F_GETLK, F_WRLCK, 39, F_UNLCK, 0, 0, 0 },
	{ F_GETLK, F_WRLCK, 40, F_WRLCK, 40, 5, 0 },
	{ F_GETLK, F_WRLCK, 44, F_WRLCK, 40, 5, 0 },
	{ F_GETLK, F_WRLCK, 45, F_UNLCK, 0, 0, 0 },
	{ F_GETLK, F_WRLCK, 49, F_UNLCK, 0, 0, 0 },
	{ F_GETLK, F_WRLCK, 50, F_WRLCK, 50, 10, 0 },
	{ F_GETLK, F_WRLCK, 60, F_UNLCK, 0, 0, 0 },
	{ F_GETLK, F_WRLCK, 100, F_RDLCK, 100, 50, 0 },
	{ F_GETLK, F_RDLCK, 100, F_UNLCK, 0, 0, 0 },
	{ F_GETLK, F_WRLCK, 150, F_UNLCK, 0, 0, 0 },
	{ F_GETLK, F_WRLCK, 199, F_UNLCK, 0, 0, 0 },
	{ F_GETLK, F_WRLCK, 200, F_WRLCK, 200, 10, -1 },
	{ F_OFD_GETLK, F_RDLCK, 209, F_WRLCK, 200, 10, -1 },
	{ F_GETLK, F_WRLCK, 210, F_UNLCK, 0, 0, 0 },
	{ F_OFD_GETLK, F_WRLCK, 300, F_RDLCK, 300, 10, -1 },
	{ F_GETLK, F_RDLCK, 305, F_UNLCK, 0, 0, 0 },
	{ F_GETLK, F_WRLCK, 310, F_UNLCK, 0, 0, 0 },
	{ F_GETLK, F_WRLCK, 499, F_UNLCK, 0, 0, 0 },
	{ F_GETLK, F_WRLCK, 500, F_WRLCK, 500, 10, 1 },
	{ F_GETLK, F_RDLCK, 509, F_WRLCK, 500, 10, 1 },
	{ F_GETLK, F_WRLCK, 510, F_UNLCK, 0, 0, 0 },
	{ F_GETLK, F_WRLCK, 999, F_UNLCK, 0, 0, 0 },
	{ F_GETLK, F_WRLCK, 1000, F_RDLCK, 1000, 0, 0 },
	{ F_GETLK, F_WRLCK, 1L << 40, F_RDLCK, 1000, 0, 0 },
};

static const char *tname(short t)
{
	return t == F_WRLCK ? "write" : t == F_RDLCK ? "read" : t == F_UNLCK ? "none" : "?";
}

/* checker runs in a process of its own: it sees the locks as others do. */
static void checker(pid_t parent)
{
	int sh = must(open("flock-sh", O_RDWR), "flock-sh"), ex = must(open("flock-ex", O_RDWR), "flock-ex");
	if (flock(sh, LOCK_SH | LOCK_NB) != 0)
		fail("flock-sh: a shared flock is refused (%s): the dumped lock is not shared", strerror(errno));
	flock(sh, LOCK_UN);
	if (flock(sh, LOCK_EX | LOCK_NB) == 0)
		fail("flock-sh: an exclusive flock is granted: the shared lock is gone");
	if (flock(ex, LOCK_SH | LOCK_NB) == 0)
		fail("flock-ex: a shared flock is granted: the exclusive lock is gone");
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/fd/26", parent);
	int mfd = must(open(path, O_RDWR), "memfd"), dir = must(open(".", O_RDONLY | O_DIRECTORY), "DIR");
	if (flock(mfd, LOCK_SH | LOCK_NB) == 0)
		fail("memfd: a shared flock is granted: the exclusive lock is gone");
	if (flock(dir, LOCK_SH | LOCK_NB) != 0 || flock(dir, LOCK_EX | LOCK_NB) == 0)
		fail("DIR: the shared flock of the directory is not held as it was");
	int ml = must(open("maplocked", O_RDWR), "maplocked"), mo = must(open("mapofd", O_RDWR), "mapofd");
	if (flock(ml, LOCK_SH | LOCK_NB) == 0)
		fail("maplocked: a shared flock is granted: the lock held through the mapping is gone");
	struct flock in = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 50, .l_len = 1 };
	struct flock out = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 1 };
	if (fcntl(mo, F_OFD_GETLK, &in) < 0 || fcntl(mo, F_OFD_GETLK, &out) < 0)
		fail("mapofd: F_OFD_GETLK: %s", strerror(errno));
	else if (in.l_type != F_WRLCK || in.l_start != 0 || in.l_len != 100 || out.l_type != F_UNLCK)
		fail("mapofd: finds a %s lock at byte 50 (%ld+%ld) and a %s one at 100, want the write lock on 0-99 through the mapping",
		     tname(in.l_type), (long)in.l_start, (long)in.l_len, tname(out.l_type));
	close(ml);
	close(mo);
	int fd = must(open("posix", O_RDWR), "posix");
	for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
		const struct probe *p = &probes[i];
		struct flock fl = { .l_type = p->type, .l_whence = SEEK_SET, .l_start = p->start, .l_len = 1 };
		if (fcntl(fd, p->cmd, &fl) < 0) {
			fail("F_%sGETLK at %ld: %s", p->cmd == F_OFD_GETLK ? "OFD_" : "", (long)p->start, strerror(errno));
			continue;
		}
		pid_t owner = p->owner == 0 ? parent : p->owner == 1 ? child : -1;
		if (fl.l_type != p->want)
			fail("%s probe at byte %ld: finds a %s lock (%ld+%ld, pid %d), want %s",
			     tname(p->type), (long)p->start, tname(fl.l_type), (long)fl.l_start, (long)fl.l_len, fl.l_pid, tname(p->want));
		else if (p->want != F_UNLCK && (fl.l_start != p->wstart || fl.l_len != p->wlen || fl.l_pid != owner))
			fail("%s probe at byte %ld: lock %ld+%ld of pid %d, want %ld+%ld of pid %d",
			     tname(p->type), (long)p->start, (long)fl.l_start, (long)fl.l_len, fl.l_pid, (long)p->wstart, (long)p->wlen, owner);
	}
}

/* fdinfo_locks counts the "lock:" lines of one of our fds. */
static int fdinfo_locks(int fd)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	int n = 0;
	while (fgets(line, sizeof line, f))
		n += !strncmp(line, "lock:", 5);
	fclose(f);
	return n;
}

static void check(void)
{
	int p[2];
	if (pipe(p) < 0) {
		fail("pipe: %s", strerror(errno));
		return;
	}
	pid_t parent = getpid(), c = fork();
	if (c == 0) {
		close(p[0]);
		checker(parent);
		if (write(p[1], failure, strlen(failure)) < 0)
			_exit(2);
		_exit(0);
	}
	close(p[1]);
	char buf[sizeof failure] = "";
	int n = c < 0 ? -1 : read(p[0], buf, sizeof buf - 1);
	close(p[0]);
	if (c > 0)
		waitpid(c, NULL, 0);
	if (n > 0) {
		buf[n] = 0;
		fail("checker: %s", buf);
	}
	/* 5 POSIX locks of ours on 22's description (23 is a dup), 2 OFD on 24's. */
	if (fdinfo_locks(22) != 5 || fdinfo_locks(23) != 5 || fdinfo_locks(24) != 2)
		fail("fdinfo shows %d, %d, %d locks on fds 22, 23, 24; want 5, 5, 2",
		     fdinfo_locks(22), fdinfo_locks(23), fdinfo_locks(24));
	if (leased && fcntl(25, F_GETLEASE) != F_RDLCK)
		fail("fd 25: lease %d, want F_RDLCK", fcntl(25, F_GETLEASE));
	if (waiting) {
		int st;
		for (int i = 0; i < 2; i++) {
			if (waitpid(waiters[i], &st, WNOHANG) != 0)
				fail("waiter %d finished before the lock was released", waiters[i]);
			else if (!wait_blocked(waiters[i]))
				fail("waiter %d does not wait for its lock", waiters[i]);
		}
		struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 20 };
		if (fcntl(22, F_SETLK, &fl) != 0 || flock(21, LOCK_UN) != 0)
			fail("unlock: %s", strerror(errno));
		for (int i = 0; i < 2; i++)
			if (waitpid(waiters[i], &st, 0) != waiters[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
				fail("waiter %d: status %#x after the lock was released", waiters[i], st);
	}
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
}
