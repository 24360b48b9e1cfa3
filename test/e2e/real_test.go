package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestPythonThreads: a Python program with four threads.
func TestPythonThreads(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed (make test installs it)")
	}
	script := filepath.Join(repoRoot, "test", "progs", "pythreads.py")
	p := startPath(t, "pythreads", python, func(p *target) []string { return []string{script, p.progress, p.verdict} })
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	p.killedThenRestored(img)
}
