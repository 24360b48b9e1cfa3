package sys

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// CgroupWrite writes s to a cgroup control file in one write(2), as
// cgroupfs expects.
func CgroupWrite(dir, file, s string) error {
	f, err := os.OpenFile(filepath.Join(dir, file), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.Write([]byte(s))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// CgroupWaitEvent waits until dir/cgroup.events says key has value
// ("frozen 1", "populated 0") or timeout passes. It reads the file again
// after 100 us, then ever less often, and at once when poll(2) reports a
// change (POLLPRI). The notification alone is not enough: the kernel sends
// at most one per jiffy per file (a later change waits for a timer) from a
// workqueue, so under load it came 8-12 ms after a freeze that took 0.3 ms.
func CgroupWaitEvent(dir, key, value string, timeout time.Duration) error {
	name := filepath.Join(dir, "cgroup.events")
	deadline := time.Now().Add(timeout)
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: name, Err: err}
	}
	defer unix.Close(fd)
	buf := make([]byte, 256)
	for delay := 100 * time.Microsecond; ; delay = min(delay*2, 10*time.Millisecond) {
		n, err := unix.Pread(fd, buf, 0)
		if err != nil {
			return &os.PathError{Op: "read", Path: name, Err: err}
		}
		for _, line := range strings.Split(string(buf[:n]), "\n") {
			if k, v, _ := strings.Cut(line, " "); k == key && v == value {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: no %q %s after %v", dir, key, value, timeout)
		}
		ts := unix.NsecToTimespec(int64(delay))
		if _, err := unix.Ppoll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLPRI}}, &ts, nil); err != nil && err != unix.EINTR {
			return fmt.Errorf("cgroup %s: poll cgroup.events: %w", dir, err)
		}
	}
}

// CgroupFreeze freezes (or thaws) the cgroup v2 group dir (cgroup.freeze,
// Linux 5.2) and, when freezing, waits until the kernel reports it frozen.
// Tasks in a ptrace stop count as frozen.
func CgroupFreeze(dir string, frozen bool, timeout time.Duration) error {
	v := "0"
	if frozen {
		v = "1"
	}
	if err := CgroupWrite(dir, "cgroup.freeze", v); err != nil {
		return fmt.Errorf("cgroup %s: write cgroup.freeze: %w", dir, err)
	}
	if !frozen {
		return nil
	}
	return CgroupWaitEvent(dir, "frozen", "1", timeout)
}
