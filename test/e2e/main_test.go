package e2e

import (
	"golang.org/x/sys/unix"

	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"crpipe/lib/proc"
)

// The binaries the tests drive. A command whose cmd/ directory does not
// exist yet makes the tests that need it skip (saying so); one that exists
// but does not build makes them fail.
var commands = []string{
	"cr-freeze", "cr-seize", "cr-parasite", "cr-pages", "cr-files", "cr-tcp",
	"cr-dump", "cr-restore", "crit",
}

var (
	repoRoot  string
	binDir    string // every cmd/* built here, first on PATH
	progDir   string // the C test programs (make progs TESTBIN=...)
	buildErr  = map[string]string{}
	notExist  = map[string]bool{}
	progsErr  string // why the C test programs are not there
	setupSkip string // why nothing can run (not root, no cgroup2)
	cgroup2   string // the cgroup2 mount point
)

func TestMain(m *testing.M) {
	// Whatever started the tests may have leaked fds (a shell's pipes):
	// test programs must start with stdio only, or cr-files refuses them.
	unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	// The test programs are small: cr-pages --lend has them lend their
	// pages from 8 MiB, not from the default 64 (lib/pages lendMinAnon;
	// TestLeaveRunningLends checks the default too).
	os.Setenv("CRPIPE_LEND_MIN", "8M")
	os.Exit(setupAndRun(m))
}

func setupAndRun(m *testing.M) int {
	if os.Geteuid() != 0 {
		setupSkip = "the e2e tests freeze, ptrace and restore real processes: run them as root (make test)"
		return m.Run()
	}
	var err error
	if cgroup2, err = proc.Cgroup2Mount(); err != nil {
		setupSkip = "no cgroup2 mount: cr-freeze needs the cgroup v2 freezer (" + err.Error() + ")"
		return m.Run()
	}
	if repoRoot, err = findRepoRoot(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "crpipe-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Readable by all: one test runs a dump as an unprivileged user.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	binDir = dir
	progDir = filepath.Join(dir, "test")
	t0 := time.Now()
	buildCommands()
	buildProgs()
	fmt.Fprintf(os.Stderr, "e2e: built the commands and test programs in %v\n", time.Since(t0).Round(time.Millisecond))
	// cr-dump runs the stage binaries: make it find the ones just built.
	os.Setenv("PATH", binDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return m.Run()
}

func findRepoRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		p := filepath.Dir(d)
		if p == d {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		d = p
	}
}

// buildCommands builds each command on its own, so one that does not build
// (yet) does not hide the others.
func buildCommands() {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range commands {
		if gos, _ := filepath.Glob(filepath.Join(repoRoot, "cmd", c, "*.go")); len(gos) == 0 {
			notExist[c] = true
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, c), "./cmd/"+c)
			cmd.Dir = repoRoot
			if out, err := cmd.CombinedOutput(); err != nil {
				mu.Lock()
				buildErr[c] = fmt.Sprintf("go build ./cmd/%s: %v\n%s", c, err, out)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// buildProgs builds the C test programs with the Makefile's own rules.
func buildProgs() {
	if _, err := exec.LookPath("gcc"); err != nil {
		progsErr = "gcc is not installed (make test installs it)"
		return
	}
	cmd := exec.Command("make", "--no-print-directory", "-s", "progs", "TESTBIN="+progDir)
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		progsErr = fmt.Sprintf("make progs: %v\n%s", err, out)
	}
}

// need skips the test when a command does not exist yet and fails it when
// one does not build; it also needs the C test programs.
func need(t *testing.T, cmds ...string) {
	t.Helper()
	if setupSkip != "" {
		t.Skip(setupSkip)
	}
	var missing []string
	for _, c := range cmds {
		if notExist[c] {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		t.Skipf("not written yet: %s (no cmd/%s)", strings.Join(missing, ", "), strings.Join(missing, ", cmd/"))
	}
	for _, c := range cmds {
		if e, ok := buildErr[c]; ok {
			t.Fatal(e)
		}
	}
	if progsErr != "" {
		if strings.HasPrefix(progsErr, "gcc") {
			t.Skip(progsErr)
		}
		t.Fatal(progsErr)
	}
}

// dumpStages is the explicit pipeline, as a user types it, in cr-dump's
// order (cr-pages last); briefStages in the order of the project's brief
// (cr-pages before cr-files and cr-tcp), which works as well.
const (
	dumpStages  = "cr-seize | cr-parasite | cr-files | cr-tcp | cr-pages"
	briefStages = "cr-seize | cr-parasite | cr-pages | cr-files | cr-tcp"
)

// pipelineCmds are the commands the explicit pipeline and its disposition need.
var pipelineCmds = []string{"cr-freeze", "cr-seize", "cr-parasite", "cr-pages", "cr-files", "cr-tcp"}

func bin(name string) string { return filepath.Join(binDir, name) }

func prog(name string) string { return filepath.Join(progDir, name) }

// lines splits output into its non-empty lines.
func lines(b []byte) []string {
	var r []string
	for _, l := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(l)) > 0 {
			r = append(r, string(l))
		}
	}
	return r
}
