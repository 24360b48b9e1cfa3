/*
 * seccomp-filter: seccomp filters must come back in their order, with
 * their flags, and apply after a restore; here on a process that then
 * left root without no_new_privs, so the restore must install them while
 * it still has CAP_SYS_ADMIN.
 *
 *   seccomp-filter PROGRESS VERDICT [nnp]
 *
 * As root it installs two filters (the second with SECCOMP_FILTER_FLAG_LOG):
 *   1: getppid fails with errno 99, uname with errno 97
 *   2: uname fails with errno 98 (the later filter's errno wins for uname:
 *      of equal actions the most recently installed filter's data is used)
 * then drops to uid/gid 1234 (with "nnp": sets no_new_privs first). On
 * SIGTERM it checks getppid, uname and getpid, the filter count and mode in
 * /proc/self/status and no_new_privs.
 */
#include "state.h"

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <grp.h>

#define LOAD_ARCH BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch))
#define LOAD_NR BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr))
#define ALLOW BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
#define FAIL(e) BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (e))
#define IF_NR(nr, skip_if_not) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, (skip_if_not))

static struct sock_filter f1[] = {
	LOAD_ARCH,
	BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
	BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
	LOAD_NR,
	IF_NR(SYS_getppid, 1),
	FAIL(99),
	IF_NR(SYS_uname, 1),
	FAIL(97),
	ALLOW,
};

static struct sock_filter f2[] = {
	LOAD_NR,
	IF_NR(SYS_uname, 1),
	FAIL(98),
	ALLOW,
};

static int install(struct sock_filter *f, unsigned short n, unsigned flags)
{
	struct sock_fprog p = { n, f };
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &p);
}

static int status_int(const char *key)
{
	char line[256];
	int v = -1;
	FILE *f = fopen("/proc/self/status", "re");
	if (!f)
		return v;
	size_t n = strlen(key);
	while (fgets(line, sizeof line, f))
		if (strncmp(line, key, n) == 0 && line[n] == ':')
			v = atoi(line + n + 1);
	fclose(f);
	return v;
}

static int nnp;

static const char *check(char *why, size_t n)
{
	errno = 0;
	if (syscall(SYS_getppid) != -1 || errno != 99) {
		snprintf(why, n, "getppid: errno %d, want 99 (filter 1)", errno);
		return why;
	}
	struct utsname u;
	errno = 0;
	if (uname(&u) != -1 || errno != 98) {
		snprintf(why, n, "uname: errno %d, want 98 (filter 2)", errno);
		return why;
	}
	if (syscall(SYS_getpid) <= 0) {
		snprintf(why, n, "getpid fails");
		return why;
	}
	int mode = status_int("Seccomp"), count = status_int("Seccomp_filters");
	if (mode != 2 || count != 2) {
		snprintf(why, n, "seccomp mode %d with %d filters, want 2 with 2", mode, count);
		return why;
	}
	if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != nnp) {
		snprintf(why, n, "no_new_privs %d, want %d", prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0), nnp);
		return why;
	}
	if (getuid() != 1234 || getgid() != 1234) {
		snprintf(why, n, "uid %d gid %d, want 1234", getuid(), getgid());
		return why;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "seccomp-filter PROGRESS VERDICT [nnp]");
	nnp = argc > 3 && strcmp(argv[3], "nnp") == 0;
	if (install(f1, sizeof f1 / sizeof f1[0], 0) != 0 || install(f2, sizeof f2 / sizeof f2[0], SECCOMP_FILTER_FLAG_LOG) != 0)
		die("seccomp");
	if (nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		die("PR_SET_NO_NEW_PRIVS");
	if (setgroups(0, NULL) != 0 || setresgid(1234, 1234, 1234) != 0 || setresuid(1234, 1234, 1234) != 0)
		die("setresuid");
	return state_run("seccomp-filter", check);
}
