/*
 * creds: a process that left root for other ids, with supplementary
 * groups and reduced capabilities, must come back with exactly those
 * credentials.
 *
 *   creds PROGRESS VERDICT
 *
 * Started as root, before the first tick it:
 *   drops CAP_SYS_MODULE and CAP_MKNOD from its bounding set
 *   sets groups 1001, 1002, 2000 and gids 2001/2002/2003 (real/eff/saved)
 *   keeps capabilities across setresuid to uids 1001/1002/1003
 *   sets fsuid 1003 and fsgid 2003
 *   sets securebits NOROOT, NOROOT_LOCKED and NO_SETUID_FIXUP
 *   keeps permitted {KILL, NET_BIND_SERVICE, NET_RAW}, effective
 *   {NET_BIND_SERVICE}, inheritable {KILL, NET_RAW}, ambient {KILL}
 *   sets no_new_privs, and dumpable 1 again (the uid change cleared it)
 * On SIGTERM it reads every one of them back.
 */
#include "state.h"

#include <grp.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define BIT(c) (1ULL << (c))
#define PRM (BIT(CAP_KILL) | BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_NET_RAW))
#define EFF BIT(CAP_NET_BIND_SERVICE)
#define INH (BIT(CAP_KILL) | BIT(CAP_NET_RAW))
#define AMB BIT(CAP_KILL)
#define SECBITS (SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP)

static const gid_t groups[] = { 1001, 1002, 2000 };

static int capset3(uint64_t eff, uint64_t prm, uint64_t inh)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2] = {
		{ (uint32_t)eff, (uint32_t)prm, (uint32_t)inh },
		{ (uint32_t)(eff >> 32), (uint32_t)(prm >> 32), (uint32_t)(inh >> 32) },
	};
	return syscall(SYS_capset, &h, d);
}

static uint64_t status_hex(const char *key)
{
	char line[256];
	uint64_t v = ~0ULL;
	FILE *f = fopen("/proc/self/status", "re");
	if (!f)
		return v;
	size_t n = strlen(key);
	while (fgets(line, sizeof line, f))
		if (strncmp(line, key, n) == 0 && line[n] == ':')
			v = strtoull(line + n + 1, NULL, 16);
	fclose(f);
	return v;
}

static const char *check(char *why, size_t n, uint64_t bnd)
{
	uid_t r, e, s;
	gid_t gr, ge, gs;
	getresuid(&r, &e, &s);
	getresgid(&gr, &ge, &gs);
	int fsuid = setfsuid(-1), fsgid = setfsgid(-1);
	if (r != 1001 || e != 1002 || s != 1003 || fsuid != 1003) {
		snprintf(why, n, "uids %d %d %d fs %d, want 1001 1002 1003 fs 1003", r, e, s, fsuid);
		return why;
	}
	if (gr != 2001 || ge != 2002 || gs != 2003 || fsgid != 2003) {
		snprintf(why, n, "gids %d %d %d fs %d, want 2001 2002 2003 fs 2003", gr, ge, gs, fsgid);
		return why;
	}
	gid_t g[16];
	int ng = getgroups(16, g);
	if (ng != 3 || g[0] != groups[0] || g[1] != groups[1] || g[2] != groups[2]) {
		snprintf(why, n, "%d groups (%d %d %d ...), want 1001 1002 2000", ng, ng > 0 ? (int)g[0] : -1,
			 ng > 1 ? (int)g[1] : -1, ng > 2 ? (int)g[2] : -1);
		return why;
	}
	uint64_t eff = status_hex("CapEff"), prm = status_hex("CapPrm"), inh = status_hex("CapInh");
	uint64_t amb = status_hex("CapAmb"), b = status_hex("CapBnd");
	if (eff != EFF || prm != PRM || inh != INH || amb != AMB || b != bnd) {
		snprintf(why, n, "capabilities eff %#llx prm %#llx inh %#llx amb %#llx bnd %#llx, want %#llx %#llx %#llx %#llx %#llx",
			 (unsigned long long)eff, (unsigned long long)prm, (unsigned long long)inh,
			 (unsigned long long)amb, (unsigned long long)b, (unsigned long long)EFF,
			 (unsigned long long)PRM, (unsigned long long)INH, (unsigned long long)AMB,
			 (unsigned long long)bnd);
		return why;
	}
	int sb = prctl(PR_GET_SECUREBITS);
	if (sb != SECBITS) {
		snprintf(why, n, "securebits %#x, want %#x", sb, SECBITS);
		return why;
	}
	if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) {
		snprintf(why, n, "no_new_privs is not set");
		return why;
	}
	if (prctl(PR_GET_DUMPABLE) != 1) {
		snprintf(why, n, "dumpable %d, want 1", prctl(PR_GET_DUMPABLE));
		return why;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	char why[512];
	state_init(argc, argv, 3, "creds PROGRESS VERDICT");
	if (geteuid() != 0) {
		fprintf(stderr, "creds: must start as root\n");
		return 2;
	}
	if (prctl(PR_CAPBSET_DROP, CAP_SYS_MODULE) != 0 || prctl(PR_CAPBSET_DROP, CAP_MKNOD) != 0)
		die("PR_CAPBSET_DROP");
	uint64_t bnd = status_hex("CapBnd");
	if (setgroups(3, groups) != 0 || setresgid(2001, 2002, 2003) != 0)
		die("setgroups/setresgid");
	if (prctl(PR_SET_KEEPCAPS, 1) != 0 || setresuid(1001, 1002, 1003) != 0)
		die("setresuid");
	/* Effective capabilities were cleared; take back what the rest needs. */
	if (capset3(PRM | BIT(CAP_SETPCAP) | BIT(CAP_SETUID) | BIT(CAP_SETGID), status_hex("CapPrm"), INH) != 0)
		die("capset");
	setfsuid(1003);
	setfsgid(2003);
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_KILL, 0, 0) != 0)
		die("ambient raise");
	if (prctl(PR_SET_SECUREBITS, SECBITS) != 0)
		die("PR_SET_SECUREBITS");
	if (capset3(EFF, PRM, INH) != 0)
		die("capset");
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_DUMPABLE, 1) != 0)
		die("prctl");
	if (check(why, sizeof why, bnd)) {
		fprintf(stderr, "creds: setup: %s\n", why);
		return 2;
	}
	while (!got_term) {
		tick();
		sleep_ns(TICK_NS, (volatile int *)&got_term);
	}
	if (check(why, sizeof why, bnd))
		return verdict("FAIL %s", why);
	return verdict("PASS %llu", (unsigned long long)ticks);
}
