package restore

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"crpipe/lib/stage"
)

// The soft limit of open files is raised for the fds to install, up to the
// hard limit; past it, the restore says which limit to raise.
func TestRaiseNofile(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	lim := unix.Rlimit{Cur: 100, Max: 5000}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		t.Fatal(err)
	}
	if err := raiseNofile(pid, 3000); err != nil {
		t.Fatal(err)
	}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &lim); err != nil || lim.Cur != 3000 || lim.Max != 5000 {
		t.Fatalf("after raising to 3000: %+v, %v", lim, err)
	}
	err := raiseNofile(pid, 6000)
	var h *stage.HintError
	if err == nil || !errors.As(err, &h) || !strings.Contains(err.Error(), "above the hard limit of 5000") {
		t.Fatalf("past the hard limit: %v", err)
	}
}
