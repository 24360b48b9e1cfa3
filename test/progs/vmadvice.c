/*
 * vmadvice: what mlock(2), madvise(2), MAP_DROPPABLE and mseal(2) leave on
 * a mapping must survive a checkpoint.
 *
 *   vmadvice PROGRESS VERDICT [pkey|sysv|uring|secret|uffd] [big]
 *
 * Before the first tick it maps one private anonymous region per setting,
 * 64 KiB each, fills it with a pattern of its own, and sets:
 *   lo  mlock                 lf  mlock2(MLOCK_ONFAULT)
 *   dc  MADV_DONTFORK         wf  MADV_WIPEONFORK
 *   dd  MADV_DONTDUMP         mg  MADV_MERGEABLE (where the kernel has KSM)
 *   hg  MADV_HUGEPAGE         nh  MADV_NOHUGEPAGE (where it has THP)
 *   sr  MADV_SEQUENTIAL       rr  MADV_RANDOM
 *   dp  MAP_DROPPABLE (Linux 6.11; the kernel may drop its contents)
 *   sl  mseal (Linux 6.10)
 * With "pkey" one more region gets a protection key of its own
 * (pkey_mprotect), with "sysv" one more is a part of a System V shared
 * memory segment (attached, its last page unmapped; removed at once so
 * that it ends with the process), with "uring" an io_uring's rings are
 * mapped, with "secret" a page of memfd_secret(2) memory: each a dump
 * refuses, and so with "uffd" one more registered with userfaultfd. "uring"
 * exits 3 where the kernel has no io_uring (or it is disabled), "secret"
 * where it has no memfd_secret. With "big" each region is 1 MiB: a
 * process that cr-pages --lend has lend its pages.
 * On SIGTERM it checks each region's VmFlags in /proc/self/smaps and its
 * pattern, and that a fork leaves out the DONTFORK region and gives the
 * child zeros in the WIPEONFORK one.
 */
#include "state.h"

#include <linux/io_uring.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif

#define SIZE (64 << 10)

static size_t size = SIZE; /* of each region: 1 MiB with "big" */

struct region {
	const char *flag; /* as smaps names it */
	char *p;
	int skip; /* the kernel lacks it */
};

static struct region regions[] = {
	{ "lo", 0, 0 }, { "lf", 0, 0 }, { "dc", 0, 0 }, { "wf", 0, 0 }, { "dd", 0, 0 }, { "mg", 0, 0 },
	{ "hg", 0, 0 }, { "nh", 0, 0 }, { "sr", 0, 0 }, { "rr", 0, 0 }, { "dp", 0, 0 }, { "sl", 0, 0 },
};
#define NREGIONS (sizeof regions / sizeof regions[0])

static struct region *region(const char *flag)
{
	for (unsigned i = 0; i < NREGIONS; i++)
		if (!strcmp(regions[i].flag, flag))
			return &regions[i];
	return NULL;
}

static void fill(struct region *r, unsigned i)
{
	for (size_t k = 0; k < size; k += 8)
		*(uint64_t *)(r->p + k) = (uint64_t)(i + 1) << 32 | k;
}

static int filled(struct region *r, unsigned i)
{
	for (size_t k = 0; k < size; k += 8)
		if (*(uint64_t *)(r->p + k) != ((uint64_t)(i + 1) << 32 | k))
			return 0;
	return 1;
}

static int set(struct region *r)
{
	const char *f = r->flag;
	if (!strcmp(f, "lo"))
		return mlock(r->p, size);
	if (!strcmp(f, "lf"))
		return syscall(SYS_mlock2, r->p, size, MLOCK_ONFAULT);
	if (!strcmp(f, "sl")) {
		if (syscall(462 /* mseal */, r->p, size, 0) != 0 && errno == ENOSYS)
			r->skip = 1; /* before Linux 6.10 */
		return r->skip ? 0 : (vma_has_flag(r->p, "sl") == 1 ? 0 : -1);
	}
	int advice = !strcmp(f, "dc") ? MADV_DONTFORK : !strcmp(f, "wf") ? MADV_WIPEONFORK
		   : !strcmp(f, "dd") ? MADV_DONTDUMP : !strcmp(f, "mg") ? MADV_MERGEABLE
		   : !strcmp(f, "hg") ? MADV_HUGEPAGE : !strcmp(f, "nh") ? MADV_NOHUGEPAGE
		   : !strcmp(f, "sr") ? MADV_SEQUENTIAL : MADV_RANDOM;
	if (madvise(r->p, size, advice) != 0) {
		if ((advice == MADV_MERGEABLE || advice == MADV_HUGEPAGE || advice == MADV_NOHUGEPAGE) && errno == EINVAL) {
			r->skip = 1; /* a kernel without KSM or THP */
			return 0;
		}
		return -1;
	}
	return 0;
}

static const char *check(char *why, size_t n)
{
	for (unsigned i = 0; i < NREGIONS; i++) {
		struct region *r = &regions[i];
		if (r->skip)
			continue;
		if (vma_has_flag(r->p, r->flag) != 1) {
			snprintf(why, n, "the region with %s lost it (VmFlags)", r->flag);
			return why;
		}
		if (strcmp(r->flag, "dp") && !filled(r, i)) {
			snprintf(why, n, "the region with %s lost its contents", r->flag);
			return why;
		}
	}
	char *dc = region("dc")->p, *wf = region("wf")->p;
	pid_t child = fork();
	if (child < 0) {
		snprintf(why, n, "fork: %s", strerror(errno));
		return why;
	}
	if (child == 0) {
		/* The child must see no DONTFORK region and a zeroed WIPEONFORK one. */
		int bad = msync(dc, size, MS_ASYNC) == 0 || errno != ENOMEM;
		for (size_t k = 0; k < size; k++)
			bad |= wf[k] != 0;
		_exit(bad);
	}
	int st;
	if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		snprintf(why, n, "a fork kept the DONTFORK region or the WIPEONFORK one's contents");
		return why;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "vmadvice PROGRESS VERDICT [pkey|sysv|uring|secret|uffd|hugetlb|hugetlbfs FILE|hugememfd] [big]");
	if (!strcmp(argv[argc - 1], "big")) {
		size = 1 << 20;
		argc--;
	}
	if (argc > 3 && !strcmp(argv[3], "pkey")) {
		char *p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		int key = syscall(SYS_pkey_alloc, 0, 0);
		if (p == MAP_FAILED || key < 0 || syscall(SYS_pkey_mprotect, p, SIZE, PROT_READ | PROT_WRITE, key) != 0)
			die("pkey");
	}
	if (argc > 3 && !strcmp(argv[3], "sysv")) {
		int id = shmget(IPC_PRIVATE, SIZE, IPC_CREAT | 0600);
		void *p = id < 0 ? (void *)-1 : shmat(id, NULL, 0);
		if (p == (void *)-1 || shmctl(id, IPC_RMID, NULL) != 0 || munmap((char *)p + SIZE - 4096, 4096) != 0)
			die("shm");
		memset(p, 0x5a, SIZE - 4096);
	}
	if (argc > 3 && !strcmp(argv[3], "uring")) {
		struct io_uring_params up;
		memset(&up, 0, sizeof up);
		int fd = syscall(SYS_io_uring_setup, 4, &up);
		if (fd < 0)
			exit(3);
		size_t len = up.sq_off.array + up.sq_entries * sizeof(unsigned);
		if (mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING) == MAP_FAILED)
			die("mmap io_uring");
	}
	if (argc > 3 && !strcmp(argv[3], "secret")) {
		int fd = syscall(447 /* SYS_memfd_secret */, 0);
		if (fd < 0)
			exit(3);
		char *p = ftruncate(fd, 4096) == 0 ? mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
		if (p == MAP_FAILED)
			die("memfd_secret");
		strcpy(p, "secret");
	}
	if (argc > 3 && !strcmp(argv[3], "uffd")) {
		int fd = syscall(SYS_userfaultfd, O_CLOEXEC);
		struct uffdio_api api = { .api = UFFD_API };
		char *p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		struct uffdio_register reg = { .range = { (unsigned long)p, SIZE }, .mode = UFFDIO_REGISTER_MODE_MISSING };
		if (fd < 0 || p == MAP_FAILED || ioctl(fd, UFFDIO_API, &api) != 0 || ioctl(fd, UFFDIO_REGISTER, &reg) != 0)
			die("userfaultfd");
	}
	/* Huge pages reserved by nobody: MAP_NORESERVE maps them all the same
	 * (a touch would fault), which is all the refusal needs. */
	if (argc > 3 && !strcmp(argv[3], "hugetlb")) {
		if (mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_NORESERVE, -1, 0) == MAP_FAILED)
			die("mmap MAP_HUGETLB");
	}
	if (argc > 4 && !strcmp(argv[3], "hugetlbfs")) {
		int fd = open(argv[4], O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		if (fd < 0 || ftruncate(fd, 2 << 20) != 0 ||
		    mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0) == MAP_FAILED)
			die("hugetlbfs file");
		close(fd);
	}
	if (argc > 3 && !strcmp(argv[3], "hugememfd")) { /* kept open and mapped */
		int fd = memfd_create("huge", MFD_CLOEXEC | MFD_HUGETLB);
		if (fd < 0 && errno == EINVAL)
			exit(3);
		if (fd < 0 || ftruncate(fd, 2 << 20) != 0 ||
		    mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0) == MAP_FAILED)
			die("hugetlb memfd");
	}
	for (unsigned i = 0; i < NREGIONS; i++) {
		struct region *r = &regions[i];
		int type = strcmp(r->flag, "dp") ? MAP_PRIVATE : MAP_DROPPABLE;
		r->p = mmap(NULL, size, PROT_READ | PROT_WRITE, type | MAP_ANONYMOUS, -1, 0);
		if (r->p == MAP_FAILED && type == MAP_DROPPABLE && errno == EINVAL) {
			r->skip = 1; /* before Linux 6.11 */
			continue;
		}
		if (r->p == MAP_FAILED)
			die("mmap");
		fill(r, i);
		if (strcmp(r->flag, "dp") && set(r) != 0)
			die(r->flag);
	}
	return state_run("vmadvice", check);
}
