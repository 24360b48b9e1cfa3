/*
 * memfd_map: shared mappings of memfds that no fd holds, as a JIT makes
 * them (Erlang's "/memfd:vmem": one view writable, one executable), must
 * survive a checkpoint.
 *
 *   memfd_map PROGRESS VERDICT [fd|sealed|outside]
 *
 * "jit": a memfd made without MFD_ALLOW_SEALING (so it has F_SEAL_SEAL),
 * 4 pages, mapped twice whole, read-write and read-execute; the fd is
 * closed. A function that returns a constant is written through the
 * writable view and called through the executable one; pages 1-2 get a
 * pattern; page 3 is never written (a hole, read by the check).
 * "data": a memfd made with MFD_ALLOW_SEALING (no seals), 3 pages, mode
 * 0640, mapped read-write from offset 4096 (its first page is mapped by no
 * one and never written), with a pattern.
 * The check: the patterns, the function's result through the executable
 * view, that both views are one object (a word written through one is read
 * through the other), the names in /proc/self/maps, and each memfd's
 * seals, size, mode and identity (through /proc/self/map_files).
 * "fd" keeps the data memfd's fd too, at offset 123 (a JVM's ZGC heap is a
 * memfd kept open and mapped three times): it must be the mapped object,
 * at the same offset.
 * "sealed" seals the data memfd against growing (F_SEAL_GROW); "outside"
 * writes its unmapped first page (through a mapping made and unmapped
 * again): each a dump refuses.
 */
#include "state.h"

#include <sys/mman.h>
#include <sys/stat.h>

#define PG 4096
#define MAGIC 0x5eed1234u

static char *rw, *rx, *data;
static int data_fd = -1; /* "fd" */

static uint64_t pattern(int obj, size_t i)
{
	return mix64((uint64_t)obj << 32 | i);
}

/* map_fd opens the object mapped at p; -1 on failure. */
static int map_fd(char *p, size_t len)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/self/map_files/%lx-%lx", (unsigned long)p, (unsigned long)(p + len));
	return open(path, O_RDONLY | O_CLOEXEC);
}

/* maps_line says whether /proc/self/maps shows p with perms and name. */
static int maps_line(char *p, const char *perms, const char *name)
{
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return 0;
	char line[512], want[64];
	snprintf(want, sizeof want, "%lx-", (unsigned long)p);
	int ok = 0;
	while (fgets(line, sizeof line, f))
		if (!strncmp(line, want, strlen(want)) && strstr(line, perms) && strstr(line, name))
			ok = 1;
	fclose(f);
	return ok;
}

/* object checks the memfd mapped at p: seals, size, mode; its inode in ino. */
static const char *object(char *p, size_t len, int seals, off_t size, mode_t mode, ino_t *ino)
{
	int fd = map_fd(p, len);
	if (fd < 0)
		return "cannot open the mapping through /proc/self/map_files";
	struct stat st;
	int s = fcntl(fd, F_GET_SEALS);
	int ok = fstat(fd, &st) == 0;
	close(fd);
	if (s != seals)
		return "the memfd's seals changed";
	if (!ok || st.st_size != size || (st.st_mode & 07777) != mode)
		return "the memfd's size or mode changed";
	*ino = st.st_ino;
	return NULL;
}

static const char *check(char *why, size_t n)
{
	(void)why;
	(void)n;
	int (*fn)(void) = (int (*)(void))rx;
	if ((unsigned)fn() != MAGIC)
		return "the function in the executable view returns something else";
	for (size_t i = 0; i < 2 * PG / 8; i++)
		if (((uint64_t *)(rx + PG))[i] != pattern(1, i))
			return "the jit memfd's pattern is damaged (read through the executable view)";
	for (size_t i = 0; i < PG / 8; i++)
		if (((uint64_t *)(rx + 3 * PG))[i] != 0)
			return "the jit memfd's hole is not zeros";
	for (size_t i = 0; i < 2 * PG / 8; i++)
		if (((uint64_t *)data)[i] != pattern(2, i))
			return "the data memfd's pattern is damaged";
	volatile uint64_t *w = (uint64_t *)(rw + PG + 8), *r = (uint64_t *)(rx + PG + 8);
	uint64_t old = *w;
	*w = ~old;
	int same = *r == ~old;
	*w = old;
	if (!same)
		return "the writable and executable views are no longer one object";
	if (!maps_line(rw, "rw-s", "/memfd:jit (deleted)") || !maps_line(rx, "r-xs", "/memfd:jit (deleted)") ||
	    !maps_line(data, "rw-s", "/memfd:data (deleted)"))
		return "/proc/self/maps does not name the memfds as before";
	ino_t a, b, c;
	const char *bad;
	if ((bad = object(rw, 4 * PG, F_SEAL_SEAL, 4 * PG, 0777, &a)) || (bad = object(rx, 4 * PG, F_SEAL_SEAL, 4 * PG, 0777, &b)) ||
	    (bad = object(data, 2 * PG, 0, 3 * PG, 0640, &c)))
		return bad;
	if (a != b || a == c)
		return "the memfds' identities are mixed up";
	if (data_fd >= 0) {
		struct stat st;
		uint64_t word;
		if (fstat(data_fd, &st) != 0 || st.st_ino != c)
			return "the data memfd's fd is not the mapped memfd";
		if (lseek(data_fd, 0, SEEK_CUR) != 123)
			return "the data memfd's fd moved";
		if (pread(data_fd, &word, 8, PG + 16) != 8 || word != pattern(2, 2))
			return "the data memfd's fd reads another contents than the mapping";
		word = ~word;
		int same = pwrite(data_fd, &word, 8, PG + 16) == 8 && ((uint64_t *)data)[2] == word;
		word = ~word;
		if (pwrite(data_fd, &word, 8, PG + 16) != 8 || !same)
			return "a write through the data memfd's fd does not show in the mapping";
	}
	return NULL;
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 3, "memfd_map PROGRESS VERDICT [fd|sealed|outside]");
	const char *mode = argc > 3 ? argv[3] : "";

	int jit = memfd_create("jit", MFD_CLOEXEC);
	if (jit < 0 || ftruncate(jit, 4 * PG) != 0)
		die("memfd jit");
	rw = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, jit, 0);
	rx = mmap(NULL, 4 * PG, PROT_READ | PROT_EXEC, MAP_SHARED, jit, 0);
	if (rw == MAP_FAILED || rx == MAP_FAILED)
		die("mmap jit");
	close(jit);
#if defined(__x86_64__)
	static const unsigned char code[] = { 0xb8, MAGIC & 0xff, MAGIC >> 8 & 0xff, MAGIC >> 16 & 0xff, MAGIC >> 24, 0xc3 };
#elif defined(__aarch64__)
	static const uint32_t code[] = { 0x52800000 | (MAGIC & 0xffff) << 5, 0x72a00000 | (MAGIC >> 16) << 5, 0xd65f03c0 };
#endif
	memcpy(rw, code, sizeof code);
	__builtin___clear_cache(rx, rx + sizeof code);
	for (size_t i = 0; i < 2 * PG / 8; i++)
		((uint64_t *)(rw + PG))[i] = pattern(1, i);

	int d = memfd_create("data", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (d < 0 || ftruncate(d, 3 * PG) != 0 || fchmod(d, 0640) != 0)
		die("memfd data");
	data = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, d, PG);
	if (data == MAP_FAILED)
		die("mmap data");
	for (size_t i = 0; i < 2 * PG / 8; i++)
		((uint64_t *)data)[i] = pattern(2, i);
	if (!strcmp(mode, "sealed") && fcntl(d, F_ADD_SEALS, F_SEAL_GROW) != 0)
		die("F_ADD_SEALS");
	if (!strcmp(mode, "outside")) {
		char *first = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, d, 0);
		if (first == MAP_FAILED)
			die("mmap data's first page");
		first[0] = 1;
		munmap(first, PG);
	}
	if (!strcmp(mode, "fd")) {
		if (lseek(d, 123, SEEK_SET) != 123)
			die("lseek");
		data_fd = d;
	} else {
		close(d);
	}
	if (!strcmp(mode, "sealed") || !strcmp(mode, "outside")) {
		/* The check's seals and contents are those of the plain case. */
		while (!got_term) {
			tick();
			sleep_ns(TICK_NS, (volatile int *)&got_term);
		}
		return verdict("PASS %llu", (unsigned long long)ticks);
	}
	return state_run("memfd_map", check);
}
