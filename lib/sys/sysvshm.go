package sys

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// shmctl commands golang.org/x/sys/unix does not name
// (include/uapi/linux/shm.h).
const (
	shmLock   = 11
	shmUnlock = 12
)

// ShmSetLocked locks (SHM_LOCK) or unlocks (SHM_UNLOCK) the pages of
// System V shared memory segment id.
func ShmSetLocked(id int, locked bool) error {
	cmd := shmUnlock
	if locked {
		cmd = shmLock
	}
	_, err := unix.SysvShmCtl(id, cmd, nil)
	return err
}

// SetShmNextID makes the next System V shared memory segment created in the
// caller's IPC namespace get id (-1: the kernel's choice again). The kernel
// uses it once (ipc_idr_alloc).
func SetShmNextID(id int) error {
	return os.WriteFile("/proc/sys/kernel/shm_next_id", []byte(strconv.Itoa(id)), 0)
}
