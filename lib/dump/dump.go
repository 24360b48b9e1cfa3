// Package dump is cr-dump, the porcelain that runs the canonical dump
// pipeline
//
//	cr-freeze --pid P | cr-seize | cr-parasite | cr-files | cr-tcp | cr-pages
//
// on goroutines of its own process (stage.RunIn; with --stage-processes,
// the stage binaries found next to its own executable, each a process of
// its own, as a shell would run them), and applies an all-or-nothing
// disposition: the target is killed only once the whole image is written
// (and fsynced when it is a file); if any stage fails the target is
// thawed in its original cgroup and no output file is left.
// cr-pages gets --lend (its processes put their own pages into the stream,
// not copies) when the target dies, or, with --leave-running, when the
// image goes into a regular file or /dev/null (lendSafe).
package dump

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/cli"
	"crpipe/lib/files"
	"crpipe/lib/freeze"
	"crpipe/lib/internal/par"
	"crpipe/lib/pages"
	"crpipe/lib/parasite"
	"crpipe/lib/proc"
	"crpipe/lib/seize"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
	"crpipe/lib/tcp"
)

// Stages are the pipeline's binaries, in order. cr-pages comes last: it
// writes the pages into the output itself, where before cr-files and
// cr-tcp each passed them on (doc/performance.md, 50).
var Stages = []string{"cr-freeze", "cr-seize", "cr-parasite", "cr-files", "cr-tcp", "cr-pages"}

// stageCommands build the stages' commands, for the stages run in this
// process: the same code as their binaries'.
var stageCommands = map[string]func() *cli.App{
	"cr-freeze":   freeze.Command,
	"cr-seize":    seize.Command,
	"cr-parasite": parasite.Command,
	"cr-files":    files.Command,
	"cr-tcp":      tcp.Command,
	"cr-pages":    pages.Command,
}

// StageEnv is the environment of stage name, from environ (cr-dump's
// own): unless it sets GOMAXPROCS, each stage but cr-pages starts with one
// P and is told in par.EnvCPUs how many CPUs it may widen to when it has
// several processes to work on. A Go runtime starts ~9% cheaper with one
// P, a cost a small dump pays five times over (doc/performance.md, 70);
// cr-pages copies and checksums on every CPU from its first process on.
func StageEnv(name string, environ []string) []string {
	if name == "cr-pages" || slices.ContainsFunc(environ, func(kv string) bool { return strings.HasPrefix(kv, "GOMAXPROCS=") }) {
		return environ
	}
	return append(slices.Clip(environ), "GOMAXPROCS=1", par.EnvCPUs+"="+strconv.Itoa(runtime.GOMAXPROCS(0)))
}

// Options configure a dump.
type Options struct {
	Pid          int
	Cgroup       string // cr-freeze --cgroup: the tree's own cgroup, frozen in place
	Output       string // file; "" for stdout
	LeaveRunning bool
	Compress     bool
	ShellJob     bool   // cr-files --shell-job: the job's terminal belongs to its shell
	GhostLimit   string // cr-pages and cr-files --ghost-limit, when not ""
	Verbose      bool
	// StageProcesses runs each stage as a process of its own (a binary in
	// BinDir) instead of on goroutines of this one.
	StageProcesses bool
	// BinDir holds the stage binaries and cr-freeze for the guard
	// (default: the directory of this executable).
	BinDir string
	// Stderr receives the diagnostics of stages run as processes (default
	// os.Stderr); stages run here write to os.Stderr.
	Stderr io.Writer
	// Grace is how long stages get to exit after SIGTERM before SIGKILL.
	Grace time.Duration
}

// Command is cr-dump.
func Command() *cli.App {
	return &cli.App{
		Name:      "cr-dump",
		Usage:     "checkpoint a process through the stage pipeline, then kill it (or leave it running)",
		UsageText: "cr-dump -t PID [--cgroup DIR] [-o FILE] [--leave-running] [--compress] [--shell-job] [--ghost-limit SIZE]",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "tree", Aliases: []string{"t", "pid", "p"}, Usage: "pid of the process to checkpoint (the root of the tree); --pid as for cr-freeze", Required: true},
			freeze.CgroupFlag,
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write the image to `FILE` (default stdout)"},
			&cli.BoolFlag{Name: "leave-running", Aliases: []string{"R"}, Usage: "thaw the process after the dump instead of killing it"},
			&cli.BoolFlag{Name: "shell-job", Usage: "the process is a job of an interactive shell: accept its terminal (restore with cr-restore --shell-job)"},
			stage.GhostLimitFlag,
			stage.CompressFlag,
			&cli.BoolFlag{Name: "stage-processes", Usage: "run each stage as a process of its own, as a shell pipeline of cr-freeze, cr-seize, ... would (slower to start; a stage that crashes takes only itself down, and cr-parasite, asked by its parent-death signal, puts back the process at hand even when cr-dump is killed)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return stage.Usagef("unexpected argument %q", c.Args().First())
			}
			if c.Int("tree") <= 0 {
				return stage.Usagef("invalid pid %d", c.Int("tree"))
			}
			if _, err := stage.GhostLimit(c); err != nil {
				return err
			}
			return Run(Options{
				Pid:          c.Int("tree"),
				Cgroup:       c.String("cgroup"),
				Output:       c.String("output"),
				LeaveRunning: c.Bool("leave-running"),
				Compress:     c.Bool("compress"),
				ShellJob:     c.Bool("shell-job"),
				GhostLimit:   c.String("ghost-limit"),
				Verbose:      stage.Verbose,

				StageProcesses: c.Bool("stage-processes"),
			})
		},
	}
}

// stageRun is one running stage.
type stageRun struct {
	name     string
	cmd      *exec.Cmd // nil for a stage run in this process
	stderr   tail      // a stage process's
	err      error     // from Wait, or the error of a stage run here
	signaled bool      // we asked it to stop
	killed   bool      // we killed it after the grace period
	done     chan struct{}
}

// tail keeps the last bytes written to it.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

const tailMax = 64 << 10

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailMax {
		t.buf = t.buf[len(t.buf)-tailMax:]
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// Run dumps opt.Pid.
func Run(opt Options) error {
	if opt.Stderr == nil {
		opt.Stderr = os.Stderr
	}
	if opt.Grace == 0 {
		opt.Grace = 10 * time.Second
	}
	if opt.BinDir == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		opt.BinDir = filepath.Dir(exe)
	}
	binaries := Stages
	if !opt.StageProcesses {
		binaries = []string{"cr-freeze"} // the guard's
	}
	for _, name := range binaries {
		if _, err := os.Stat(filepath.Join(opt.BinDir, name)); err != nil {
			return stage.Hint(fmt.Errorf("stage %s not found in %s", name, opt.BinDir), "build every command into one directory (make), and run cr-dump from there")
		}
	}

	// The destination exists before anything is frozen.
	var out *os.File
	var tmpName string
	if opt.Output == "" {
		w, err := stage.Output(nil)
		if err != nil {
			return err
		}
		out = w.(*os.File)
	} else if fi, err := os.Stat(opt.Output); err == nil && !fi.Mode().IsRegular() {
		// A device or FIFO (/dev/null, a named pipe) is written in place:
		// renaming a file over it would replace it.
		f, err := os.OpenFile(opt.Output, os.O_WRONLY, 0)
		if err != nil {
			return fmt.Errorf("output: %w", err)
		}
		out = f
		defer out.Close()
	} else {
		dir, base := filepath.Split(opt.Output)
		if dir == "" {
			dir = "."
		}
		f, err := os.CreateTemp(dir, "."+base+".partial-*")
		if err != nil {
			return fmt.Errorf("output: %w", err)
		}
		out, tmpName = f, f.Name()
		defer func() {
			if tmpName != "" {
				os.Remove(tmpName)
			}
		}()
		defer out.Close()
	}

	g, err := startGuard(opt, tmpName)
	if err != nil {
		return err
	}
	leftToGuard := false
	defer func() {
		if r := recover(); r != nil {
			g.w.Close() // no done: the guard thaws the target
			panic(r)
		}
		if !leftToGuard {
			g.done()
		}
	}()

	// Ctrl-C and friends become a failure: stop the stages, thaw.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	// Our own stdout may be a pipe whose reader goes away.
	signal.Ignore(syscall.SIGPIPE)

	start := startProcesses
	if !opt.StageProcesses && !parentOf(opt.Pid) {
		// One set of stages at a time here: stage.Interrupt is for all.
		runningHere.Lock()
		defer runningHere.Unlock()
		stage.ClearInterrupt()
		start = startHere
	}
	runs, startErr := start(opt, out)
	failed := make(chan *stageRun, len(runs))
	for _, r := range runs {
		go func(r *stageRun) {
			<-r.done
			if r.err != nil {
				failed <- r
			}
		}(r)
	}
	allDone := make(chan struct{})
	go func() {
		for _, r := range runs {
			<-r.done
		}
		close(allDone)
	}()

	var cause string
	if startErr != nil {
		cause = startErr.Error()
	}
	if startErr == nil {
		select {
		case <-allDone:
		case <-failed:
		case s := <-sigs:
			cause = fmt.Sprintf("interrupted by %v", s)
		}
	}
	ok := startErr == nil && cause == ""
	for _, r := range runs {
		select {
		case <-r.done:
			if r.err != nil {
				ok = false
			}
		default:
			ok = false
		}
	}
	if !ok {
		if stuck := stopAll(runs, opt.Grace); stuck != nil {
			// A stage here cannot be killed: exit, and the guard, seeing
			// no done, thaws the target once this process is gone.
			leftToGuard = true
			return fmt.Errorf("%s did not stop within %v of the failure (%s): cr-dump exits, and its guard thaws pid %d", stuck.name, opt.Grace, failure(runs, cause), opt.Pid)
		}
		<-allDone
		return fail(opt, runs, cause)
	}
	for _, r := range runs {
		copyStderr(opt.Stderr, r)
	}

	// A process left running goes on whatever becomes of the image: it
	// stands still for the pipeline, not while the image goes to disk
	// (an image read to its end no longer refers to its memory: lendSafe).
	var thawErr error
	if opt.LeaveRunning {
		thawErr = dispose(opt, false)
	}
	// The image is complete: make it durable before the process dies.
	if tmpName != "" {
		if err := out.Sync(); err != nil {
			return failAfter(opt, fmt.Errorf("output: sync: %w", err))
		}
		if err := out.Close(); err != nil {
			return failAfter(opt, fmt.Errorf("output: %w", err))
		}
		if err := os.Rename(tmpName, opt.Output); err != nil {
			return failAfter(opt, fmt.Errorf("output: %w", err))
		}
		tmpName = ""
		syncDir(filepath.Dir(opt.Output))
	} else if fi, err := out.Stat(); err == nil && fi.Mode().IsRegular() {
		if err := out.Sync(); err != nil {
			return failAfter(opt, fmt.Errorf("output: sync: %w", err))
		}
	}
	if opt.LeaveRunning {
		if thawErr != nil {
			return fmt.Errorf("image written, but thawing pid %d failed: %w", opt.Pid, thawErr)
		}
		return nil
	}
	g.complete()
	if faultDieWhenComplete {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}
	if err := dispose(opt, true); err != nil {
		return stage.Hint(fmt.Errorf("image written, but killing pid %d failed: %w", opt.Pid, err),
			fmt.Sprintf("the process is still frozen: cr-freeze kill --pid %d, or cr-freeze thaw --pid %d", opt.Pid, opt.Pid))
	}
	return nil
}

// stageArgs are the arguments of stage i, whose output goes (if last) to out.
func stageArgs(opt Options, i int, out *os.File) []string {
	name := Stages[i]
	var args []string
	if i == 0 {
		args = append(args, "--pid", strconv.Itoa(opt.Pid))
		if opt.Cgroup != "" {
			args = append(args, "--cgroup", opt.Cgroup)
		}
	}
	if opt.Verbose {
		args = append(args, "-v")
	}
	if name == "cr-files" && opt.ShellJob {
		args = append(args, "--shell-job")
	}
	if (name == "cr-pages" || name == "cr-files") && opt.GhostLimit != "" {
		args = append(args, "--ghost-limit", opt.GhostLimit)
	}
	if name == "cr-pages" && lendSafe(opt, out) {
		args = append(args, "--lend")
	}
	if i == len(Stages)-1 && opt.Compress {
		args = append(args, "--compress")
	}
	return args
}

// startHere runs the stages on goroutines of this process, connected by
// pipes as a shell connects processes, the last one writing to out: one
// Go program started instead of six (each ~20 ms of wall and ~30 of CPU
// on the PVM guest, doc/performance.md 72). Each stage owns its two ends
// and closes them when it ends, as a process's exit would: its neighbours
// see the end of their input, or lose their reader, as they would.
func startHere(opt Options, out *os.File) ([]*stageRun, error) {
	var runs []*stageRun
	var in *os.File // read end feeding the next stage; nil for the first
	for i, name := range Stages {
		var next, w *os.File
		var err error
		if i == len(Stages)-1 {
			// The stage closes its output when done (stage.EndOutput):
			// a copy, so that out stays open for the sync.
			if w, err = sys.Dup(out); err != nil {
				err = fmt.Errorf("output: %w", err)
			}
		} else if next, w, err = sys.Pipe(name); err != nil {
			err = fmt.Errorf("%s: %w", name, err)
		} else {
			stage.LinkPipe(next, w)
		}
		if err != nil {
			if in != nil {
				stage.DropLink(in)
				in.Close()
			}
			return runs, err
		}
		r := &stageRun{name: name, done: make(chan struct{})}
		go func(app *cli.App, args []string, in, w *os.File) {
			r.err = stage.RunIn(app, args, in, w)
			if in != nil {
				in.Close()
			}
			w.Close()
			close(r.done)
		}(stageCommands[name](), stageArgs(opt, i, out), in, w)
		runs = append(runs, r)
		in = next
	}
	return runs, nil
}

// parentOf says whether this process is pid's parent. Its stages then
// run as processes: this process's waits for its child (os/exec's) would
// take the child's ptrace stops from the stages' tracers, were they its
// threads (a Go program dumping a child it started, the tests).
func parentOf(pid int) bool {
	st, err := proc.ReadStat(pid)
	return err == nil && st.Ppid == os.Getpid()
}

// runningHere is held while stages run in this process.
var runningHere sync.Mutex

// startProcesses launches the stages as processes connected by pipes; the
// last one writes to out.
func startProcesses(opt Options, out *os.File) ([]*stageRun, error) {
	var runs []*stageRun
	var in *os.File // read end feeding the next stage; nil for the first
	for i, name := range Stages {
		cmd := exec.Command(filepath.Join(opt.BinDir, name), stageArgs(opt, i, out)...)
		cmd.Env = StageEnv(name, os.Environ())
		r := &stageRun{name: name, cmd: cmd, done: make(chan struct{})}
		if in != nil {
			cmd.Stdin = in
		}
		last := i == len(Stages)-1
		var pr, pw *os.File
		if last {
			cmd.Stdout = out
		} else {
			var err error
			if pr, pw, err = os.Pipe(); err != nil {
				if in != nil {
					in.Close()
				}
				return runs, err
			}
			cmd.Stdout = pw
		}
		err := startStage(opt, r)
		// The children hold their own copies now; ours must go so that
		// EOF and EPIPE reach the stages when a neighbour exits.
		if in != nil {
			in.Close()
		}
		if pw != nil {
			pw.Close()
		}
		in = pr
		if err != nil {
			if in != nil {
				in.Close()
			}
			return runs, err
		}
		runs = append(runs, r)
	}
	return runs, nil
}

// lendSafe says whether cr-pages may have the processes lend their pages
// instead of copies (lib/pages/lend.go): the stream then refers to their
// memory until it is read. They die once the image is out; or, left
// running, they are thawed only after every stage has ended, and cr-pages
// (the last) writing into a regular file has copied every page into it by
// then.
// So does /dev/null, which drops them as they come. Into a pipe or
// another device, pages could still wait there after the thaw.
func lendSafe(opt Options, out *os.File) bool {
	if !opt.LeaveRunning {
		return true
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(out.Fd()), &st); err != nil {
		return false
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return true
	case unix.S_IFCHR:
		return st.Rdev == unix.Mkdev(1, 3) // the null device
	}
	return false
}

func startStage(opt Options, r *stageRun) error {
	// A stage dies with cr-dump: the guard can then thaw the target
	// without a stage still at work in it. Except cr-parasite, which is
	// asked to stop: killed between two injected system calls, it would
	// leave a thread with borrowed registers or every signal blocked,
	// running (the cgroup is thawed while it injects) where no record of
	// its stub can put it back. On SIGTERM it puts the process at hand
	// back and exits; the guard waits for it to let go.
	sig := syscall.SIGKILL
	if r.name == "cr-parasite" {
		sig = syscall.SIGTERM
	}
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: sig}
	if opt.Verbose {
		r.cmd.Stderr = io.MultiWriter(&r.stderr, opt.Stderr)
	} else {
		r.cmd.Stderr = &r.stderr
	}
	if err := r.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", r.name, err)
	}
	go func() {
		r.err = r.cmd.Wait()
		close(r.done)
	}()
	return nil
}

// guard is a `cr-freeze guard` watching the dump from outside, in a
// session of its own: if cr-dump dies (SIGKILL, the OOM killer), the
// target would stay frozen with nobody to thaw it; the guard sees its pipe
// end without done and thaws it (lib/freeze/guard.go).
type guard struct {
	w      *os.File
	cmd    *exec.Cmd
	reaped chan struct{} // closed once it is reaped, after done
}

// shell runs the guard's watch (freeze.GuardCommand).
var shell = "/bin/sh"

func startGuard(opt Options, partial string) (*guard, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	cmd := freeze.GuardCommand(shell, filepath.Join(opt.BinDir, "cr-freeze"), opt.Pid, partial)
	cmd.Stdin = r
	cmd.Stderr = os.Stderr // not opt.Stderr: it outlives this process
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, fmt.Errorf("start cr-freeze guard: %w", err)
	}
	return &guard{w: w, cmd: cmd, reaped: make(chan struct{})}, nil
}

// complete tells the guard the image is complete: from now on, should
// cr-dump die, the guard kills the target.
func (g *guard) complete() { fmt.Fprintln(g.w, freeze.GuardComplete) }

// faultDieWhenComplete: CRPIPE_FAULT=dump-dies-when-complete makes cr-dump
// SIGKILL itself between the complete image and the kill (fault injection
// for the guard's test).
var faultDieWhenComplete = os.Getenv("CRPIPE_FAULT") == "dump-dies-when-complete"

// done tells the guard the target is disposed of. It is reaped in the
// background: a shell reading its last line and exiting took 0.7–3.4 ms
// of the counter's dump on the PVM guest (doc/performance.md 83), and
// nothing waits for it once the target is gone.
func (g *guard) done() {
	fmt.Fprintln(g.w, freeze.GuardDone)
	g.w.Close()
	go func() {
		g.cmd.Wait()
		close(g.reaped)
	}()
}

// stopAll asks the stages still running to stop (SIGTERM, or
// stage.Interrupt for those run here: cr-parasite finishes restoring the
// task at hand first), then kills the processes left after grace. A stage
// run here cannot be killed: the first still running then is returned.
func stopAll(runs []*stageRun, grace time.Duration) (stuck *stageRun) {
	for _, r := range runs {
		select {
		case <-r.done:
		default:
			r.signaled = true
			if r.cmd != nil {
				r.cmd.Process.Signal(syscall.SIGTERM)
			} else {
				stage.Interrupt(syscall.SIGTERM)
			}
		}
	}
	expired := make(chan struct{})
	defer time.AfterFunc(grace, func() { close(expired) }).Stop()
	for _, r := range runs {
		select {
		case <-r.done:
		case <-expired:
			if r.cmd == nil {
				if stuck == nil {
					stuck = r
				}
				continue
			}
			r.killed = true
			r.cmd.Process.Kill()
			<-r.done
		}
	}
	return stuck
}

// culprit picks the stage whose failure caused the others: stages we
// stopped, stages that only lost their reader (broken pipe) and stages
// whose input ended early are consequences; of the rest the most upstream
// one failed first, since a stage's failure truncates the input of every
// stage after it. A truncated input is a consequence even where no stage
// before it failed on its own: we stop every stage once one fails, and
// the stage after one we stopped may read the end of its input before it
// reads our signal (cr-pages refusing its environment at once, last in
// the pipeline, had cr-files blamed for the end of its input).
func culprit(runs []*stageRun) *stageRun {
	var failed, pipeOnly, cutOff []*stageRun
	for _, r := range runs {
		switch {
		case r.err == nil || stoppedByUs(r):
		case brokenPipe(r):
			pipeOnly = append(pipeOnly, r)
		case inputTruncated(r):
			cutOff = append(cutOff, r)
		default:
			failed = append(failed, r)
		}
	}
	switch {
	case len(failed) > 0:
		return failed[0]
	case len(pipeOnly) > 0:
		return pipeOnly[len(pipeOnly)-1]
	case len(cutOff) > 0:
		return cutOff[0]
	}
	return nil
}

// stoppedByUs reports a stage that ended because stopAll asked it to. One
// that had already failed on its own when the signal came keeps its status.
func stoppedByUs(r *stageRun) bool {
	if !r.signaled {
		return false
	}
	var ee *exec.ExitError
	if r.cmd != nil && errors.As(r.err, &ee) {
		// Only the signal we sent counts: a stage that died of a SIGKILL of
		// its own before we noticed (its waiter had not returned yet when we
		// signalled) is a culprit, not a consequence.
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() &&
			(ws.Signal() == syscall.SIGTERM || (ws.Signal() == syscall.SIGKILL && r.killed)) {
			return true
		}
	}
	return exitStatus(r) == stage.ExitInterrupted
}

// inputTruncated reports a stage that failed because its input ended
// without an end frame (image.ErrTruncated).
func inputTruncated(r *stageRun) bool {
	return exitStatus(r) == stage.ExitInputTruncated
}

// brokenPipe reports a stage that failed because the reader of its output
// went away: killed by SIGPIPE (a write to stdout through os.File) or
// saying so in its status.
func brokenPipe(r *stageRun) bool {
	var ee *exec.ExitError
	if r.cmd != nil && errors.As(r.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGPIPE {
			return true
		}
	}
	return exitStatus(r) == stage.ExitOutputClosed
}

// exitStatus is the status a stage that failed exited with, or would
// have, run here (-1: it did not exit, or was killed by a signal).
func exitStatus(r *stageRun) int {
	if r.cmd == nil {
		return stage.Status(r.err)
	}
	var ee *exec.ExitError
	if errors.As(r.err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// fail thaws the target, removes partial output and reports the culprit.
func fail(opt Options, runs []*stageRun, cause string) error {
	c := culprit(runs)
	var msg, hint string
	switch {
	case c != nil:
		msg, hint = describe(opt.Stderr, c, !opt.Verbose)
		msg = c.name + ": " + msg
	default:
		msg = failure(runs, cause)
	}
	for _, r := range runs {
		if r != c && r.err != nil {
			stage.Logf("%s also failed: %v", r.name, r.err)
		}
	}
	disp := fmt.Sprintf("pid %d thawed, no image written", opt.Pid)
	if opt.Output == "" {
		disp = fmt.Sprintf("pid %d thawed, the stream on stdout is incomplete", opt.Pid)
	}
	if c != nil && c == runs[0] {
		// cr-freeze undoes its own work when it fails.
		disp = "no image written"
	}
	if err := dispose(opt, false); err != nil {
		disp = fmt.Sprintf("thawing pid %d failed too: %v", opt.Pid, err)
		hint = fmt.Sprintf("run cr-freeze thaw --pid %d", opt.Pid)
	}
	return stage.Hint(fmt.Errorf("%s (%s)", msg, disp), hint)
}

// failure names what failed, before every stage has ended: the culprit
// among those that have, else cause.
func failure(runs []*stageRun, cause string) string {
	var ended []*stageRun
	for _, r := range runs {
		select {
		case <-r.done:
			ended = append(ended, r)
		default:
		}
	}
	switch c := culprit(ended); {
	case c != nil:
		msg, _ := describe(io.Discard, c, false)
		return c.name + ": " + msg
	case cause != "":
		return cause
	}
	return "a stage failed"
}

// failAfter handles a failure after every stage succeeded.
func failAfter(opt Options, err error) error {
	if terr := dispose(opt, false); terr != nil {
		return stage.Hint(fmt.Errorf("%w (and thawing pid %d failed: %v)", err, opt.Pid, terr), fmt.Sprintf("run cr-freeze thaw --pid %d", opt.Pid))
	}
	return fmt.Errorf("%w (pid %d thawed, no image written)", err, opt.Pid)
}

// describe turns a failed stage's stderr into one message and hint, and
// passes its other lines on (when they were not already shown live).
func describe(w io.Writer, r *stageRun, passOthers bool) (msg, hint string) {
	if r.cmd == nil {
		return stage.OneLine(r.err.Error()), stage.OneLine(stage.HintOf(r.err))
	}
	sc := bufio.NewScanner(strings.NewReader(r.stderr.String()))
	var others bytes.Buffer
	for sc.Scan() {
		line := sc.Text()
		if m, ok := strings.CutPrefix(line, r.name+": error: "); ok {
			msg = m
		} else if h, ok := strings.CutPrefix(line, r.name+": hint: "); ok {
			hint = h
		} else {
			others.WriteString(line + "\n")
		}
	}
	if passOthers {
		w.Write(others.Bytes())
	}
	if msg == "" {
		msg = exitText(r.err)
	}
	return msg, hint
}

func exitText(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed by " + unix.SignalName(ws.Signal())
		}
		return fmt.Sprintf("exit status %d", ee.ExitCode())
	}
	return err.Error()
}

func copyStderr(w io.Writer, r *stageRun) {
	if !stage.Verbose {
		io.WriteString(w, r.stderr.String())
	}
}

// dispose thaws or kills the target here, with lib/freeze, as cr-freeze
// thaw|kill --pid would: no process to start (~3 ms) on the way out of the
// freeze. Should cr-dump die meanwhile, the guard does it again.
func dispose(opt Options, kill bool) error {
	if kill {
		return freeze.KillPid(opt.Pid)
	}
	thawed, err := freeze.ThawPid(opt.Pid)
	if err == nil && !thawed {
		stage.Logf("pid %d is not frozen by cr-freeze: nothing to thaw", opt.Pid)
	}
	return err
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
