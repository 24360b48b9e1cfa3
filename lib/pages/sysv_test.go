package pages

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestSysvTableNamespace: /proc/sysvipc/shm shows the reader's IPC
// namespace, so the segments of a process in another one are refused.
func TestSysvTableNamespace(t *testing.T) {
	if _, err := sysvTable(os.Getpid())(); err != nil {
		t.Fatalf("our own namespace: %v", err)
	}
	c := exec.Command("unshare", "--ipc", "sleep", "30")
	if err := c.Start(); err != nil {
		t.Skipf("unshare --ipc: %v", err)
	}
	defer func() {
		c.Process.Kill()
		c.Wait()
	}()
	ours, _ := os.Readlink("/proc/self/ns/ipc")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/ipc", c.Process.Pid)); err == nil && ns != ours {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("unshare --ipc did not enter a namespace of its own")
		}
	}
	_, err := sysvTable(c.Process.Pid)()
	if err == nil || !strings.Contains(err.Error(), "attaches System V shared memory of IPC namespace ipc:[") {
		t.Errorf("another namespace: %v", err)
	}
}
