package dump

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"crpipe/lib/freeze"
	"crpipe/lib/image"
	"crpipe/lib/internal/testprog"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
)

var binDir string // the real stage binaries, built once

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "crpipe-dump-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	args := []string{"build", "-o", dir + "/"}
	for _, s := range Stages {
		args = append(args, "crpipe/cmd/"+s)
	}
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the stages: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (cgroups, ptrace)")
	}
}

// stages returns a bin directory with the real stages, some replaced by
// shell scripts.
func stages(t *testing.T, fakes map[string]string) string {
	dir := t.TempDir()
	for _, s := range Stages {
		if script, ok := fakes[s]; ok {
			if err := os.WriteFile(filepath.Join(dir, s), []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.Symlink(filepath.Join(binDir, s), filepath.Join(dir, s)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func transientGone(t *testing.T, pid int) {
	t.Helper()
	mount, _ := proc.Cgroup2Mount()
	if _, err := os.Stat(filepath.Join(mount, "crpipe-"+strconv.Itoa(pid))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("transient cgroup of %d left behind (%v)", pid, err)
	}
}

func dirEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Fatalf("%s holds %v after a failed dump", dir, ents)
	}
}

// thawedAndRunning checks that a failed dump left p where it was, running.
func thawedAndRunning(t *testing.T, p *testprog.Proc, orig string) {
	t.Helper()
	if got := p.Cgroup(t); got != orig {
		t.Fatalf("target in %s, not back in %s", got, orig)
	}
	transientGone(t, p.Pid)
	if !p.Ticks(2 * time.Second) {
		t.Fatal("target is not running")
	}
}

func run(t *testing.T, opt Options) (error, string) {
	t.Helper()
	var stderr bytes.Buffer
	opt.Stderr = &stderr
	err := Run(opt)
	return err, stderr.String()
}

func TestDumpStageKilled(t *testing.T) {
	requireRoot(t)
	p := testprog.StartFile(t, "tick")
	orig := p.OwnCgroup(t)
	out := t.TempDir()
	// cr-pages reads part of its input, then dies by SIGKILL mid-stream.
	bin := stages(t, map[string]string{"cr-pages": "head -c 100 >/dev/null; kill -9 $$"})
	err, _ := run(t, Options{Pid: p.Pid, Output: filepath.Join(out, "img"), BinDir: bin, StageProcesses: true})
	if err == nil {
		t.Fatal("dump succeeded")
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "cr-pages: killed by SIGKILL") || !strings.Contains(msg, "thawed") {
		t.Fatalf("error %q does not blame cr-pages", msg)
	}
	dirEmpty(t, out)
	thawedAndRunning(t, p, orig)
}

func TestDumpStageFails(t *testing.T) {
	requireRoot(t)
	p := testprog.StartFile(t, "tick")
	orig := p.OwnCgroup(t)
	out := t.TempDir()
	bin := stages(t, map[string]string{
		"cr-tcp": "cat >/dev/null; echo 'cr-tcp: error: pid 1 fd 3: boom' >&2; echo 'cr-tcp: hint: try again' >&2; exit 1",
	})
	err, _ := run(t, Options{Pid: p.Pid, Output: filepath.Join(out, "img"), BinDir: bin, StageProcesses: true})
	var h *stage.HintError
	if err == nil || !strings.HasPrefix(err.Error(), "cr-tcp: pid 1 fd 3: boom") || !errors.As(err, &h) || h.Hint != "try again" {
		t.Fatalf("got %v", err)
	}
	dirEmpty(t, out)
	thawedAndRunning(t, p, orig)
}

// TestDumpBlamesFirstFailure: a stage fails and the stages after the
// ones it made us stop find their input truncated; the stage that failed
// on its own is blamed, not the one whose input ended. The fake cr-files
// outlives our SIGTERM, so it always reads the end of its input first.
// What a stage's status says counts, not its words.
func TestDumpBlamesFirstFailure(t *testing.T) {
	requireRoot(t)
	truncated := fmt.Sprintf("trap '' TERM; cat >/dev/null; echo 'cr-files: error: input: frame 6 at offset 3284: stream truncated' >&2; exit %d", stage.ExitInputTruncated)
	for _, tc := range []struct {
		name   string
		fakes  map[string]string
		blamed string
	}{
		// The last stage refuses its environment at once; we stop the rest.
		{"downstream", map[string]string{
			"cr-files": truncated,
			"cr-pages": "echo 'cr-pages: error: CRPIPE_LEND_MIN: bad size' >&2; exit 1",
		}, "cr-pages: CRPIPE_LEND_MIN: bad size"},
		// A stage before cr-files fails and ends cr-files' input itself.
		{"upstream", map[string]string{
			"cr-parasite": "head -c 100 >/dev/null; echo 'cr-parasite: error: pid 1 tid 1: the thread is sandboxed' >&2; exit 1",
			"cr-files":    truncated,
		}, "cr-parasite: pid 1 tid 1: the thread is sandboxed"},
		// cr-files fails on its own in words a truncated input would use;
		// cr-parasite, whose reader it was, finds its output closed. It
		// writes more than a pipe holds, so that its write fails only
		// once cr-files is gone, as a real stage's would (a fake that
		// said so once its input ended failed first on a loaded machine).
		{"words", map[string]string{
			"cr-parasite": fmt.Sprintf("trap '' TERM; { cat; head -c 1048576 /dev/zero; } || { echo 'cr-parasite: error: output: write /dev/stdout: broken pipe' >&2; exit %d; }", stage.ExitOutputClosed),
			"cr-files":    "head -c 100 >/dev/null; echo 'cr-files: error: pid 1 fd 3: the queue of its peer: stream truncated' >&2; exit 1",
		}, "cr-files: pid 1 fd 3: the queue of its peer: stream truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testprog.StartFile(t, "tick")
			orig := p.OwnCgroup(t)
			out := t.TempDir()
			err, _ := run(t, Options{Pid: p.Pid, Output: filepath.Join(out, "img"), BinDir: stages(t, tc.fakes), StageProcesses: true})
			if err == nil || !strings.HasPrefix(err.Error(), tc.blamed) {
				t.Fatalf("got %v, want it to start %q", err, tc.blamed)
			}
			dirEmpty(t, out)
			thawedAndRunning(t, p, orig)
		})
	}
}

// TestStagesSayTheirInputEnded: each stage after cr-freeze, given a
// stream that ends without its end frame, exits with the status that
// says so (what culprit reads), not only the words.
func TestStagesSayTheirInputEnded(t *testing.T) {
	var cut bytes.Buffer
	w, err := image.NewWriter(&cut, image.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteMessage(image.TypeInventory, &pb.Inventory{}); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, s := range Stages[1:] {
		cmd := exec.Command(filepath.Join(binDir, s))
		cmd.Stdin = bytes.NewReader(cut.Bytes())
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != stage.ExitInputTruncated || !strings.Contains(stderr.String(), image.ErrTruncated.Error()) {
			t.Errorf("%s on a cut stream: %v, %q; want exit status %d", s, err, stderr.String(), stage.ExitInputTruncated)
		}
	}
}

func TestDumpNoSuchPid(t *testing.T) {
	requireRoot(t)
	p := testprog.Start(t, "pause")
	pid := p.Pid
	syscall.Kill(pid, syscall.SIGKILL)
	p.Wait(5 * time.Second)
	out := t.TempDir()
	err, _ := run(t, Options{Pid: pid, Output: filepath.Join(out, "img"), BinDir: binDir})
	var h *stage.HintError
	if err == nil || !strings.Contains(err.Error(), "no such process") || strings.Contains(err.Error(), "\n") || !errors.As(err, &h) {
		t.Fatalf("got %v", err)
	}
	dirEmpty(t, out)
}

// frameTypes decodes a whole image and counts its frame types.
func frameTypes(t *testing.T, path string) map[image.Type]int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := image.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	n := map[image.Type]int{}
	for {
		fr, err := r.Next()
		if err == io.EOF {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		n[fr.Type]++
	}
}

func checkImage(t *testing.T, path string) {
	t.Helper()
	n := frameTypes(t, path)
	for _, ty := range []image.Type{image.TypeInventory, image.TypeFreeze, image.TypeProcess, image.TypeThreadCore, image.TypeTaskState, image.TypeMm, image.TypeFiles, image.TypeEnd} {
		if n[ty] != 1 {
			t.Fatalf("image has %d %s frames: %v", n[ty], ty, n)
		}
	}
	if n[image.TypePages] == 0 {
		t.Fatal("image has no pages")
	}
}

func TestDumpKill(t *testing.T) {
	requireRoot(t)
	p := testprog.StartFile(t, "tick")
	orig := p.OwnCgroup(t)
	bystander := testprog.StartFile(t, "tick")
	img := filepath.Join(t.TempDir(), "img")
	if err, stderr := run(t, Options{Pid: p.Pid, Output: img, BinDir: binDir, Compress: true}); err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	checkImage(t, img)
	if _, ok := p.Wait(5 * time.Second); !ok {
		t.Fatal("target not killed")
	}
	transientGone(t, p.Pid)
	if b, _ := os.ReadFile(filepath.Join(orig, "cgroup.procs")); len(b) != 0 {
		t.Fatalf("original cgroup holds %q", b)
	}
	if !bystander.Ticks(2 * time.Second) {
		t.Fatal("bystander stopped")
	}
	ents, _ := os.ReadDir(filepath.Dir(img))
	if len(ents) != 1 {
		t.Fatalf("output directory holds %v", ents)
	}
}

func TestDumpLeaveRunning(t *testing.T) {
	requireRoot(t)
	p := testprog.StartFile(t, "tick")
	orig := p.OwnCgroup(t)
	dir := t.TempDir()
	for i := 0; i < 2; i++ {
		img := filepath.Join(dir, fmt.Sprintf("img%d", i))
		if err, stderr := run(t, Options{Pid: p.Pid, Output: img, BinDir: binDir, LeaveRunning: true}); err != nil {
			t.Fatalf("dump %d: %v\n%s", i, err, stderr)
		}
		checkImage(t, img)
		thawedAndRunning(t, p, orig)
	}
}

func TestStageEnv(t *testing.T) {
	base := []string{"PATH=/usr/bin", "HOME=/root"}
	cpus := "CRPIPE_CPUS=" + strconv.Itoa(runtime.GOMAXPROCS(0))
	for _, name := range Stages {
		env := StageEnv(name, base)
		if name == "cr-pages" {
			if !slices.Equal(env, base) {
				t.Errorf("cr-pages: %q, want the caller's environment as it is", env)
			}
			continue
		}
		if want := append(slices.Clone(base), "GOMAXPROCS=1", cpus); !slices.Equal(env, want) {
			t.Errorf("%s: %q, want %q", name, env, want)
		}
	}
	if env := StageEnv("cr-freeze", base); &env[0] == &base[0] || len(base) != 2 {
		t.Errorf("the caller's slice was written to")
	}
	// A user's GOMAXPROCS reaches every stage as it is.
	own := append(slices.Clone(base), "GOMAXPROCS=4")
	if env := StageEnv("cr-seize", own); !slices.Equal(env, own) {
		t.Errorf("with GOMAXPROCS=4 set: %q", env)
	}
}

// TestCulpritHere: stages run in this process are blamed by their errors'
// statuses as stage processes are by their exit statuses: the stage that
// failed on its own, not those that lost their reader or their input, nor
// those we stopped; its message and hint are the error's own.
func TestCulpritHere(t *testing.T) {
	ran := func(name string, err error, signaled bool) *stageRun {
		return &stageRun{name: name, err: err, signaled: signaled}
	}
	truncated := stage.NeighbourStatus(fmt.Errorf("input: frame 6: %w", image.ErrTruncated))
	closed := stage.NeighbourStatus(fmt.Errorf("output: %w", syscall.EPIPE))
	own := stage.Hint(errors.New("pid 1 tid 1: the thread is\nsandboxed"), "run it elsewhere")
	runs := []*stageRun{
		ran("cr-freeze", nil, false),
		ran("cr-seize", closed, false),
		ran("cr-parasite", stage.NeighbourStatus(stage.Interrupted(syscall.SIGTERM, "")), true),
		ran("cr-files", own, false),
		ran("cr-tcp", truncated, true),
		ran("cr-pages", truncated, false),
	}
	c := culprit(runs)
	if c == nil || c.name != "cr-files" {
		t.Fatalf("culprit %v, want cr-files", c)
	}
	if msg, hint := describe(io.Discard, c, false); msg != `pid 1 tid 1: the thread is\nsandboxed` || hint != "run it elsewhere" {
		t.Errorf("described as %q, hint %q", msg, hint)
	}
	// Only consequences: the last stage that lost its reader.
	runs[3].err = nil
	if c := culprit(runs); c == nil || c.name != "cr-seize" {
		t.Errorf("culprit %v, want cr-seize", c)
	}
}

// TestStopAllHere: stages run here are asked to stop through
// stage.Interrupt; one that does not end within the grace is returned,
// not waited for.
func TestStopAllHere(t *testing.T) {
	t.Cleanup(stage.ClearInterrupt)
	quits := &stageRun{name: "cr-parasite", done: make(chan struct{})}
	stuck := &stageRun{name: "cr-pages", done: make(chan struct{})}
	go func() {
		sigs := make(chan os.Signal, 1)
		stage.NotifyInterrupt(sigs)
		defer stage.StopInterrupt(sigs)
		quits.err = stage.NeighbourStatus(stage.Interrupted(<-sigs, ""))
		close(quits.done)
	}()
	t0 := time.Now()
	if got := stopAll([]*stageRun{quits, stuck}, 200*time.Millisecond); got != stuck {
		t.Fatalf("stopAll returned %v, want the stuck stage", got)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("stopAll took %v", d)
	}
	if !errors.Is(quits.err, stage.ErrInterrupted) || !quits.signaled || !stoppedByUs(quits) {
		t.Errorf("the stage that stopped: %v, signaled %v", quits.err, quits.signaled)
	}
	close(stuck.done)
}

// TestLendSafe: a dump that leaves the tree running lends pages only into
// what holds no reference to them once cr-pages has ended: a regular file
// (its pages copied in) or the null device, not a pipe nor another device.
func TestLendSafe(t *testing.T) {
	open := func(name string, flag int) *os.File {
		f, err := os.OpenFile(name, flag, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	for _, tc := range []struct {
		name string
		out  *os.File
		want bool
	}{
		{"file", open(filepath.Join(t.TempDir(), "img"), os.O_CREATE|os.O_WRONLY), true},
		{"/dev/null", open(os.DevNull, os.O_WRONLY), true},
		{"/dev/zero", open("/dev/zero", os.O_WRONLY), false},
		{"pipe", pw, false},
	} {
		if got := lendSafe(Options{LeaveRunning: true}, tc.out); got != tc.want {
			t.Errorf("left running, into %s: %v, want %v", tc.name, got, tc.want)
		}
		if !lendSafe(Options{}, tc.out) {
			t.Errorf("killed, into %s: not lent", tc.name)
		}
	}
}

// TestGuardWatch: the shell that watches cr-dump exits on done, and on an
// end of its input without it hands `cr-freeze guard` the pid, the
// unfinished image and what it read (complete, or nothing).
func TestGuardWatch(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "cr-freeze")
	log := filepath.Join(dir, "log")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho \"$*\" >>"+log+"\ncat >>"+log+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ input, partial, want string }{
		{"done\n", "", ""},
		{"complete\ndone\n", "", ""},
		{"", "/x/.img.partial-1", "guard --pid 42 --remove /x/.img.partial-1\n"},
		{"", "", "guard --pid 42\n"},
		{"complete\n", "", "guard --pid 42\ncomplete\n"},
	} {
		os.Remove(log)
		cmd := freeze.GuardCommand(shell, fake, 42, tc.partial)
		cmd.Stdin = strings.NewReader(tc.input)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("input %q: %v: %s", tc.input, err, out)
		}
		got, _ := os.ReadFile(log)
		if string(got) != tc.want {
			t.Errorf("input %q, partial %q: cr-freeze got %q, want %q", tc.input, tc.partial, got, tc.want)
		}
	}
}

// TestGuardWithoutShell: without /bin/sh, cr-freeze guard watches the
// dump itself, told the pid and the unfinished image, and ends on done.
func TestGuardWithoutShell(t *testing.T) {
	defer func(s string) { shell = s }(shell)
	shell = filepath.Join(t.TempDir(), "no-sh")
	g, err := startGuard(Options{Pid: 42, BinDir: binDir}, "/x/.img.partial-1")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(binDir, "cr-freeze"), "guard", "--pid", "42", "--remove", "/x/.img.partial-1"}
	if !slices.Equal(g.cmd.Args, want) {
		t.Errorf("guard %q, want %q", g.cmd.Args, want)
	}
	g.done()
	<-g.reaped
	if !g.cmd.ProcessState.Success() {
		t.Errorf("the guard told done: %v", g.cmd.ProcessState)
	}
}
