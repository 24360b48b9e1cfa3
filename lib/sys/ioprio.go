package sys

import (
	"fmt"

	"golang.org/x/sys/unix"
)

const ioprioWhoProcess = 1 // IOPRIO_WHO_PROCESS: one thread, by tid

// IoprioGet is ioprio_get(2) of one thread: class << 13 | level, 0 when
// the thread never set one (its I/O priority then follows its nice value).
func IoprioGet(tid int) (uint32, error) {
	r, _, e := unix.Syscall(unix.SYS_IOPRIO_GET, ioprioWhoProcess, uintptr(tid), 0)
	if e != 0 {
		return 0, fmt.Errorf("ioprio_get: %w", e)
	}
	return uint32(r), nil
}
