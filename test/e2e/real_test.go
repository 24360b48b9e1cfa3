package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestGoProgram: a Go program with goroutines, timers and a ticker (and so
// the runtime's threads, epoll and eventfd) goes on after restore.
func TestGoProgram(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	bin := filepath.Join(t.TempDir(), "goprog")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = filepath.Join(repoRoot, "test", "progs", "goprog")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build goprog: %v\n%s", err, out)
	}
	p := startPath(t, "goprog", bin, func(p *target) []string { return []string{p.progress, p.verdict} })
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	p.killedThenRestored(img)
}

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
