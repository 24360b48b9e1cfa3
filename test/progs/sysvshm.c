/*
 * sysvshm: System V shared memory segments must survive a checkpoint with
 * their ids, keys, sizes, permissions, locks, attaches and contents.
 *
 *   sysvshm PROGRESS VERDICT KEY
 *
 * Segment A has key KEY (a number), 3 pages and 100 bytes, mode 0640, is
 * locked (SHM_LOCK) and attached twice: read-write and SHM_RDONLY. Segment
 * B is IPC_PRIVATE, one page, attached once and removed (IPC_RMID) at once,
 * so it ends with the process. Both are filled with a pattern of their own.
 * The program checks, at start and on SIGTERM: each segment as IPC_STAT
 * shows it under the ids it got at start, the patterns, that a write
 * through A's read-write attach shows through the read-only one, that the
 * read-only attach cannot be made writable, and on SIGTERM that shmdt
 * takes the read-only attach away (so it is an attach, not a mapping). It
 * removes A before it exits.
 */
#include "state.h"

#include <sys/mman.h>
#include <sys/shm.h>

#define SIZE_A (3 * 4096 + 100)
#define SIZE_B 4096

static int id_a, id_b;
static key_t key_a;
static unsigned char *rw_a, *ro_a, *rw_b;
static int checks;

static const char *check(char *why, size_t n)
{
	struct shmid_ds a, b;
	if (shmctl(id_a, IPC_STAT, &a) != 0 || shmctl(id_b, IPC_STAT, &b) != 0) {
		snprintf(why, n, "IPC_STAT of ids %d and %d: %s", id_a, id_b, strerror(errno));
		return why;
	}
	if (a.shm_perm.__key != key_a || a.shm_segsz != SIZE_A || (a.shm_perm.mode & 0777) != 0640 ||
	    !(a.shm_perm.mode & SHM_LOCKED) || (a.shm_perm.mode & SHM_DEST) || a.shm_nattch != 2) {
		snprintf(why, n, "segment A %d: key %#x size %zu mode %#o nattch %lu", id_a, a.shm_perm.__key, a.shm_segsz,
			 a.shm_perm.mode, (unsigned long)a.shm_nattch);
		return why;
	}
	if (b.shm_segsz != SIZE_B || !(b.shm_perm.mode & SHM_DEST) || b.shm_nattch != 1) {
		snprintf(why, n, "segment B %d: size %zu mode %#o nattch %lu", id_b, b.shm_segsz, b.shm_perm.mode,
			 (unsigned long)b.shm_nattch);
		return why;
	}
	for (unsigned i = 0; i < SIZE_A; i++)
		if (rw_a[i] != (unsigned char)(i * 7 + 1) || ro_a[i] != rw_a[i]) {
			snprintf(why, n, "segment A byte %u: %u, read-only attach %u", i, rw_a[i], ro_a[i]);
			return why;
		}
	for (unsigned i = 0; i < SIZE_B; i++)
		if (rw_b[i] != (unsigned char)(i * 13 + 5)) {
			snprintf(why, n, "segment B byte %u: %u", i, rw_b[i]);
			return why;
		}
	/* The rest of A's last page reads zeros, and a write shows through
	 * the other attach. */
	if (rw_a[SIZE_A + 1] != 0) {
		snprintf(why, n, "segment A past its size: %u", rw_a[SIZE_A + 1]);
		return why;
	}
	rw_a[SIZE_A + 1] = 99;
	int seen = ro_a[SIZE_A + 1];
	rw_a[SIZE_A + 1] = 0;
	if (seen != 99) {
		snprintf(why, n, "a write through A's read-write attach does not show through the read-only one");
		return why;
	}
	if (vma_has_flag((char *)ro_a, "mw") != 0 || vma_has_flag((char *)rw_a, "mw") != 1) {
		snprintf(why, n, "VmFlags: read-only attach mw %d, read-write attach mw %d", vma_has_flag((char *)ro_a, "mw"),
			 vma_has_flag((char *)rw_a, "mw"));
		return why;
	}
	if (mprotect(ro_a, 4096, PROT_READ | PROT_WRITE) == 0 || errno != EACCES) {
		snprintf(why, n, "the read-only attach can be made writable (or: %s)", strerror(errno));
		return why;
	}
	if (++checks == 2) {
		if (shmdt(ro_a) != 0 || shmctl(id_a, IPC_STAT, &a) != 0 || a.shm_nattch != 1) {
			snprintf(why, n, "shmdt of the read-only attach: %s, nattch %lu", strerror(errno), (unsigned long)a.shm_nattch);
			return why;
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	state_init(argc, argv, 4, "sysvshm PROGRESS VERDICT KEY");
	key_a = (key_t)strtol(argv[3], NULL, 0);
	id_a = shmget(key_a, SIZE_A, IPC_CREAT | IPC_EXCL | 0640);
	id_b = shmget(IPC_PRIVATE, SIZE_B, IPC_CREAT | 0600);
	if (id_a < 0 || id_b < 0)
		die("shmget");
	rw_a = shmat(id_a, NULL, 0);
	ro_a = shmat(id_a, NULL, SHM_RDONLY);
	rw_b = shmat(id_b, NULL, 0);
	if (rw_a == (void *)-1 || ro_a == (void *)-1 || rw_b == (void *)-1)
		die("shmat");
	if (shmctl(id_b, IPC_RMID, NULL) != 0 || shmctl(id_a, SHM_LOCK, NULL) != 0)
		die("shmctl");
	for (unsigned i = 0; i < SIZE_A; i++)
		rw_a[i] = (unsigned char)(i * 7 + 1);
	for (unsigned i = 0; i < SIZE_B; i++)
		rw_b[i] = (unsigned char)(i * 13 + 5);
	int st = state_run("sysvshm", check);
	shmctl(id_a, IPC_RMID, NULL);
	return st;
}
