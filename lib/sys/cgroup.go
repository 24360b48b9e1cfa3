package sys

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
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

// CgroupWaitEvent polls dir/cgroup.events until key has value ("frozen 1",
// "populated 0") or timeout passes.
func CgroupWaitEvent(dir, key, value string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for delay := 100 * time.Microsecond; ; delay = min(delay*2, 10*time.Millisecond) {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, _ := strings.Cut(line, " "); k == key && v == value {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: no %q %s after %v", dir, key, value, timeout)
		}
		time.Sleep(delay)
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
