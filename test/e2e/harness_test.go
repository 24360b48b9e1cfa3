package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"crpipe/lib/proc"
)

// target is a test program the test started, as its own child. The test
// records its PID at start; a goroutine reaps it as soon as it dies (so a
// dump's kill frees the PID for the restore), and cleanup kills whatever
// still runs under that PID and is ours (the original or the restored
// process), then removes the transient cgroup cr-freeze named after it.
type target struct {
	t        *testing.T
	name     string // program base name
	path     string // program path
	dir      string // the test's directory: progress, verdict, map file, images
	progress string
	verdict  string
	mapfile  string
	pid      int
	cmd      *exec.Cmd
	exited   chan struct{} // closed once the original is reaped
	cgroup   string        // /proc/PID/cgroup when started
}

// startCounter starts test/progs/counter (or counter-static) with anonMB MiB
// of anonymous memory (0: the default 1 MiB) and waits until it ticks.
func startCounter(t *testing.T, name string, anonMB int) *target {
	t.Helper()
	return start(t, name, func(p *target) []string {
		data := make([]byte, 64<<10)
		rand.New(rand.NewSource(int64(len(t.Name())))).Read(data)
		if err := os.WriteFile(p.mapfile, data, 0o644); err != nil {
			t.Fatal(err)
		}
		args := []string{p.progress, p.verdict, p.mapfile}
		if anonMB > 0 {
			args = append(args, strconv.Itoa(anonMB))
		}
		return args
	})
}

// start starts the test program name with the arguments args returns, as
// a child of the test, and waits until its progress file counts 50 ticks.
func start(t *testing.T, name string, args func(p *target) []string) *target {
	t.Helper()
	return startPath(t, name, prog(name), args)
}

// startPath is start for a program outside bin/test (a Go or Python one).
func startPath(t *testing.T, name, path string, args func(p *target) []string) *target {
	t.Helper()
	dir := t.TempDir()
	p := &target{
		t:        t,
		name:     name,
		path:     path,
		dir:      dir,
		progress: filepath.Join(dir, "progress"),
		verdict:  filepath.Join(dir, "verdict"),
		mapfile:  filepath.Join(dir, "mapfile"),
		exited:   make(chan struct{}),
	}
	// No stdio: exec gives the child /dev/null, the only kind of fd 0-2
	// cr-files accepts for now (besides regular files).
	p.cmd = exec.Command(p.path, args(p)...)
	p.launch()
	t.Cleanup(p.cleanup)
	t.Logf("started %s as pid %d", name, p.pid)
	// 50 ticks (0.5 s) in, so a restored counter that started afresh,
	// counting from 1, cannot be mistaken for one that went on.
	p.waitProgress(50, 10*time.Second)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.pid))
	if err != nil {
		t.Fatal(err)
	}
	p.cgroup = string(b)
	return p
}

// cgroupDir is the transient cgroup cr-freeze creates for this target.
func (p *target) cgroupDir() string {
	return filepath.Join(cgroup2, fmt.Sprintf("crpipe-%d", p.pid))
}

func (p *target) cleanup() {
	select {
	case <-p.exited:
	default:
		// The original, by its pidfd: never another process.
		p.cmd.Process.Kill()
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			p.t.Logf("cleanup: pid %d did not die", p.pid)
		}
	}
	// A restored process has the same PID but is not our child any more.
	if p.isOurs() {
		p.t.Logf("cleanup: killing restored pid %d", p.pid)
		syscall.Kill(p.pid, syscall.SIGKILL)
	}
	removeCgroup(p.t, p.cgroupDir())
}

// launch starts p.cmd, the target, and watches for its end (p.exited).
func (p *target) launch() {
	p.t.Helper()
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.pid = p.cmd.Process.Pid
	go func() {
		p.cmd.Wait()
		close(p.exited)
	}()
}

// stop ends a server (original or restored) as its administrator would,
// with sig, waits up to 20 s for it to go, then cleans up as cleanup does.
func (p *target) stop(sig syscall.Signal) {
	if p.isOurs() {
		syscall.Kill(p.pid, sig)
		for deadline := time.Now().Add(20 * time.Second); p.isOurs() && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
	}
	p.cleanup()
}

// isOurs says whether the process now living under p.pid is this target
// (original or restored), not something else that got the PID.
func (p *target) isOurs() bool {
	if st := procState(p.pid); st == "" || st == "Z" {
		return false // gone, or dead and waiting for init to reap it
	}
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.pid)); err == nil && bytes.Contains(cmdline, []byte(p.dir)) {
		return true
	}
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.pid)); err == nil && exe == p.path {
		return true
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.pid))
	return err == nil && strings.TrimSpace(string(comm)) == p.name
}

// removeCgroup removes a transient cgroup a test's dump created (by its
// recorded path), killing what is left in it first.
func removeCgroup(t *testing.T, dir string) {
	if _, err := os.Stat(dir); err != nil {
		return
	}
	t.Logf("cleanup: removing cgroup %s", dir)
	os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0)
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("cleanup: cannot remove cgroup %s: %v", dir, err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// readProgress reads the tick count the counter last wrote.
func readProgress(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return 0, nil
	}
	return strconv.ParseUint(s, 10, 64)
}

// waitProgress waits until the counter's progress reaches min and returns it.
func (p *target) waitProgress(min uint64, timeout time.Duration) uint64 {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v, err := readProgress(p.progress)
		if err == nil && v >= min {
			return v
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("pid %d: progress %d (err %v) has not reached %d after %v", p.pid, v, err, min, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkProgressFrom checks the (restored) counter goes on from at least
// from: every value read is >= from (a program started afresh would count
// from 1), and it grows by at least 10 ticks.
func (p *target) checkProgressFrom(from uint64) {
	p.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	first := uint64(0)
	for {
		v, err := readProgress(p.progress)
		if err != nil {
			p.t.Fatalf("pid %d: reading progress: %v", p.pid, err)
		}
		if v < from {
			p.t.Fatalf("pid %d: progress is %d after restore, was %d at dump: it did not continue where it stopped", p.pid, v, from)
		}
		if first == 0 {
			first = v
			p.t.Logf("pid %d: progress %d at dump, %d right after restore", p.pid, from, v)
		}
		if v >= first+10 {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("pid %d: progress stuck at %d after restore (was %d at dump)", p.pid, v, from)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitKilled checks the original was killed by SIGKILL (by cr-freeze kill
// or cr-dump) and has been reaped, so its PID is free.
func (p *target) waitKilled() {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.t.Fatalf("pid %d: the original still runs after the dump", p.pid)
	}
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		p.t.Fatalf("pid %d: the original ended with %v, want SIGKILL (verdict file: %q)", p.pid, p.cmd.ProcessState, readFile(p.verdict))
	}
}

// checkRunning checks the original still runs, thawed, in its original
// cgroup, with no transient cgroup left, and still makes progress.
func (p *target) checkRunning() {
	p.t.Helper()
	select {
	case <-p.exited:
		p.t.Fatalf("pid %d: the original died: %v", p.pid, p.cmd.ProcessState)
	default:
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.pid))
	if err != nil {
		p.t.Fatal(err)
	}
	if string(b) != p.cgroup {
		p.t.Errorf("pid %d is not back in its original cgroup:\nnow:\n%swas:\n%s", p.pid, b, p.cgroup)
	}
	p.checkNoCgroup()
	v, err := readProgress(p.progress)
	if err != nil {
		p.t.Fatal(err)
	}
	p.waitProgress(v+10, 5*time.Second) // fails if frozen or stopped
	if st := procState(p.pid); st == "t" || st == "T" {
		p.t.Errorf("pid %d is in state %s (stopped or traced)", p.pid, st)
	}
}

func (p *target) checkNoCgroup() {
	p.t.Helper()
	if _, err := os.Stat(p.cgroupDir()); err == nil {
		p.t.Errorf("transient cgroup %s is left behind", p.cgroupDir())
	}
}

// checkPidFree checks nothing runs under the target's PID any more.
func (p *target) checkPidFree() {
	p.t.Helper()
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", p.pid)); err == nil {
		p.t.Errorf("pid %d exists (state %s, comm %q): a process was created", p.pid, procState(p.pid), strings.TrimSpace(readFile(fmt.Sprintf("/proc/%d/comm", p.pid))))
	}
}

// terminate sends SIGTERM to the (restored) counter and checks its verdict:
// PASS, with at least minTicks ticks.
func (p *target) terminate(minTicks uint64) {
	p.t.Helper()
	if !p.isOurs() {
		p.t.Fatalf("pid %d is not our %s (comm %q)", p.pid, p.name, readFile(fmt.Sprintf("/proc/%d/comm", p.pid)))
	}
	if err := syscall.Kill(p.pid, syscall.SIGTERM); err != nil {
		p.t.Fatalf("SIGTERM pid %d: %v", p.pid, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	var v string
	for {
		v = strings.TrimSpace(readFile(p.verdict))
		if v != "" {
			break
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("pid %d: no verdict 10s after SIGTERM (state %s): its SIGTERM handler was lost?", p.pid, procState(p.pid))
		}
		time.Sleep(5 * time.Millisecond)
	}
	f := strings.Fields(v)
	if len(f) != 2 || f[0] != "PASS" {
		p.t.Fatalf("pid %d: verdict %q", p.pid, v)
	}
	n, _ := strconv.ParseUint(f[1], 10, 64)
	if n < minTicks {
		p.t.Fatalf("pid %d: verdict %q: fewer ticks than the %d seen before", p.pid, v, minTicks)
	}
	p.t.Logf("pid %d: %s", p.pid, v)
	// It exits right after the verdict: gone, or a zombie of init's.
	for deadline = time.Now().Add(5 * time.Second); ; {
		if st := procState(p.pid); st == "" || st == "Z" {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("pid %d still runs 5s after its verdict", p.pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// procState is the state letter of /proc/PID/stat ("" when gone).
func procState(pid int) string {
	st, err := proc.ReadStat(pid)
	if err != nil {
		return ""
	}
	return string(st.State)
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// awaitFile waits until path has contents (a pidfile, a ready or verdict
// file) and says whether it got them within timeout.
func awaitFile(path string, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); readFile(path) == ""; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// result of a shell command.
type result struct {
	stdout, stderr []byte
	err            error
	state          *os.ProcessState
}

func (r result) String() string {
	return fmt.Sprintf("%v\nstderr:\n%s", r.err, r.stderr)
}

// shell runs script with bash -o pipefail, the way a user would, with the
// just-built binaries first on PATH. The script runs in its own process
// group, killed whole on timeout.
func shell(t *testing.T, timeout time.Duration, script string) result {
	t.Helper()
	cmd := shellCmd(script)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	t.Logf("$ %s", script)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		t.Logf("timed out; the script's processes: %s", describeGroup(cmd.Process.Pid))
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		err = <-done
		err = fmt.Errorf("timed out after %v (killed): %w", timeout, err)
	}
	r := result{stdout: out.Bytes(), stderr: errb.Bytes(), err: err, state: cmd.ProcessState}
	if len(r.stderr) > 0 {
		t.Logf("stderr:\n%s", r.stderr)
	}
	return r
}

func shellCmd(script string) *exec.Cmd {
	cmd := exec.Command("bash", "-o", "pipefail", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A stage that leaves a descendant holding stdout must not hang us.
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// mustShell runs script and fails the test when it fails.
func mustShell(t *testing.T, timeout time.Duration, script string) result {
	t.Helper()
	r := shell(t, timeout, script)
	if r.err != nil {
		t.Fatalf("%s: %s", script, r)
	}
	return r
}

// restoreDetached restores img with cr-restore -d --pidfile and checks the
// PID is the dumped one.
func (p *target) restoreDetached(img string) {
	p.t.Helper()
	pidfile := filepath.Join(p.dir, "restored.pid")
	os.Remove(pidfile)
	mustShell(p.t, 60*time.Second, fmt.Sprintf("cr-restore -d -i %s --pidfile %s", img, pidfile))
	p.checkPidfile(pidfile)
}

func (p *target) checkPidfile(pidfile string) {
	p.t.Helper()
	got, err := strconv.Atoi(strings.TrimSpace(readFile(pidfile)))
	if err != nil {
		p.t.Fatalf("pidfile %s: %q: %v", pidfile, readFile(pidfile), err)
	}
	if got != p.pid {
		p.t.Fatalf("restored as pid %d, dumped as pid %d", got, p.pid)
	}
	if !p.isOurs() {
		p.t.Fatalf("pid %d after restore is not %s: comm %q", p.pid, p.name, readFile(fmt.Sprintf("/proc/%d/comm", p.pid)))
	}
}

// descendant finds a process called comm among pid's descendants (the
// test's own dump).
func descendant(pid int, comm string) int {
	queue := []int{pid}
	for len(queue) > 0 {
		kids, _ := proc.Children(queue[0])
		queue = queue[1:]
		for _, k := range kids {
			if st, err := proc.ReadStat(k); err == nil && st.Comm == comm {
				return k
			}
			queue = append(queue, k)
		}
	}
	return 0
}

// describe says what a stuck process is doing, for a failure message:
// state and kernel wait channel of each of its threads.
func describe(pid int) string {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return fmt.Sprintf("pid %d: %v", pid, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "pid %d (%s):", pid, strings.TrimSpace(readFile(fmt.Sprintf("/proc/%d/comm", pid))))
	for _, tk := range tasks {
		fmt.Fprintf(&b, " [tid %s %s %s]", tk.Name(), taskState(pid, tk.Name()),
			strings.TrimSpace(readFile(fmt.Sprintf("/proc/%d/task/%s/wchan", pid, tk.Name()))))
	}
	return b.String()
}

// describeGroup describes every process of process group pgid.
func describeGroup(pgid int) string {
	var b strings.Builder
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := proc.ReadStat(n); err == nil && st.Pgid == pgid {
			b.WriteString("\n  " + describe(n) + " " + strings.ReplaceAll(readFile(fmt.Sprintf("/proc/%d/cmdline", n)), "\x00", " "))
		}
	}
	return b.String()
}

func taskState(pid int, tid string) string {
	n, _ := strconv.Atoi(tid)
	if st, err := proc.ReadTaskStat(pid, n); err == nil {
		return string(st.State)
	}
	return "?"
}
