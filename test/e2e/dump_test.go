package e2e

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var counters = []string{"counter", "counter-static"}

// TestPipelineToFile: the explicit pipeline into a file, `cr-freeze kill`
// from the stream, `cr-restore -i FILE -d`.
func TestPipelineToFile(t *testing.T) {
	for _, name := range counters {
		t.Run(name, func(t *testing.T) {
			need(t, append(pipelineCmds, "cr-restore", "crit")...)
			p := startCounter(t, name, 0)
			img := filepath.Join(p.dir, "img")
			mustShell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d | %s > %s", p.pid, dumpStages, img))
			mustShell(t, 30*time.Second, "crit check "+img)
			mustShell(t, 30*time.Second, "cr-freeze kill < "+img)
			p.killedThenRestored(img)
		})
	}
}

// TestDumpIntoRestore: `cr-dump -t PID | cr-restore -d`, no file; the
// restore waits for the dump's kill to free the PID.
func TestDumpIntoRestore(t *testing.T) {
	for _, name := range counters {
		t.Run(name, func(t *testing.T) {
			need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
			p := startCounter(t, name, 0)
			// Counted before the dump: the restored counter must go on from
			// at least here (one started afresh would count from 1).
			before := p.waitProgress(50, 10*time.Second)
			pidfile := filepath.Join(p.dir, "restored.pid")
			mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d | cr-restore -d --pidfile %s", p.pid, pidfile))
			p.waitKilled()
			p.checkNoCgroup()
			p.checkPidfile(pidfile)
			p.checkProgressFrom(before)
			p.terminate(before)
		})
	}
}

// TestRestoreFileWaits: cr-restore -i FILE, started while the dumped
// process still runs (cr-dump --leave-running), waits for the PID with
// nothing created, and restores once the original is gone. From a file it
// keeps no spool: nothing upstream waits for the file to be read. (8 MiB:
// page frames the restore reads from the file in pieces.)
func TestRestoreFileWaits(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	p := startCounter(t, "counter", 8)
	img := filepath.Join(p.dir, "img")
	// The original counts on after the dump: the restored one goes on from
	// the dump, at least from here.
	before := p.waitProgress(50, 10*time.Second)
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump --pid %d --leave-running -o %s", p.pid, img))
	pidfile := filepath.Join(p.dir, "restored.pid")
	cmd := shellCmd(fmt.Sprintf("cr-restore -v -d -i %s --pidfile %s --pid-wait 30s", img, pidfile))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	time.Sleep(500 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("cr-restore did not wait for the running original: %v\n%s", err, stderr.Bytes())
	default:
	}
	if readFile(pidfile) != "" || !p.isOurs() {
		t.Fatalf("cr-restore restored while the original ran (pidfile %q)", readFile(pidfile))
	}
	syscall.Kill(p.pid, syscall.SIGKILL)
	p.waitKilled()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("cr-restore: %v\n%s", err, stderr.Bytes())
		}
	case <-time.After(40 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		t.Fatalf("cr-restore still waits 40 s after the original was killed:\n%s", stderr.Bytes())
	}
	if !strings.Contains(stderr.String(), "is in use: waiting for it") || strings.Contains(stderr.String(), "spool") {
		t.Errorf("cr-restore -v does not say it waited, or says it spooled a file input:\n%s", stderr.Bytes())
	}
	p.checkPidfile(pidfile)
	p.checkProgressFrom(before)
	p.terminate(before)
}

// TestLz4InThePipe: the lz4 CLI between stages and at the end; every stage
// and cr-restore detect lz4 input.
func TestLz4InThePipe(t *testing.T) {
	need(t, append(pipelineCmds, "cr-restore")...)
	if _, err := exec.LookPath("lz4"); err != nil {
		t.Skip("the lz4 CLI is not installed (make test installs it)")
	}
	p := startCounter(t, "counter", 0)
	img := filepath.Join(p.dir, "img.lz4")
	mustShell(t, 60*time.Second, fmt.Sprintf(
		"cr-freeze --pid %d | cr-seize | cr-parasite | lz4 -q -c | cr-pages | lz4 -q -c | cr-files | cr-tcp | lz4 -q -c > %s", p.pid, img))
	checkLz4(t, img)
	mustShell(t, 30*time.Second, "cr-freeze kill < "+img)
	p.killedThenRestored(img)
}

// TestDumpCompress: cr-dump --compress writes lz4, cr-restore reads it.
// With 48 MiB of random memory the process lends its pages, and most of
// them travel as lz4 blocks stored as they are (spliced, never read by
// the last stage): they come back unchanged (the counter checks them).
func TestDumpCompress(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	for _, anonMB := range []int{0, 48} {
		t.Run(fmt.Sprintf("%dMiB", anonMB), func(t *testing.T) {
			p := startCounter(t, "counter", anonMB)
			img := filepath.Join(p.dir, "img.lz4")
			mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d --compress -o %s", p.pid, img))
			checkLz4(t, img)
			if st, err := os.Stat(img); err != nil || st.Size() < int64(anonMB)<<20 {
				t.Fatalf("image of %d MiB of random memory: %v, %v", anonMB, st, err)
			}
			p.killedThenRestored(img)
		})
	}
}

// TestLeaveRunning: a dump with --leave-running leaves the original
// running, thawed, where it was; a second dump then kills it and its image
// restores.
func TestLeaveRunning(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore", "crit")...)
	p := startCounter(t, "counter", 0)
	img1 := filepath.Join(p.dir, "img1")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d --leave-running -o %s", p.pid, img1))
	p.checkRunning()
	mustShell(t, 30*time.Second, "crit check "+img1)
	img2 := filepath.Join(p.dir, "img2")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img2))
	p.killedThenRestored(img2)
}

// TestLeaveRunningLends: cr-dump --leave-running into a file has the
// process lend its pages, and thaws it only once the last stage has copied
// them into the file. scribble rewrites its memory page after page from
// the moment it runs again; the image still holds the moment of the freeze
// (crit check: each lent frame's checksum was taken in the process), the
// original runs on with no lender left behind, and a copy restored beside
// it checks that every page holds what it held when frozen.
func TestLeaveRunningLends(t *testing.T) {
	p := startStateProg(t, "scribble", "24")
	need(t, "cr-dump")
	before := p.layout()
	img := filepath.Join(p.dir, "img")
	r := mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -v -t %d --leave-running -o %s", p.pid, img))
	if !strings.Contains(string(r.stderr), "lends its private anonymous pages") {
		t.Errorf("cr-dump --leave-running into a file did not have the process lend its pages:\n%s", r.stderr)
	}
	p.checkLayout(before)
	p.checkRunning()
	mustShell(t, 30*time.Second, "crit check "+img)
	// Into a pipe, the pages could wait there after the thaw: copied.
	r = mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -v -t %d --leave-running | crit check", p.pid))
	if strings.Contains(string(r.stderr), "lends its private anonymous pages") {
		t.Errorf("cr-dump --leave-running into a pipe had the process lend its pages:\n%s", r.stderr)
	}
	p.checkRunning()
	// By default only a process of 64 MiB or more lends (the tests set
	// CRPIPE_LEND_MIN=8M: TestMain); this one, of 24 MiB, is copied.
	r = mustShell(t, 60*time.Second, fmt.Sprintf("env -u CRPIPE_LEND_MIN cr-dump -v -t %d --leave-running -o %s.default", p.pid, img))
	if strings.Contains(string(r.stderr), "lends its private anonymous pages") {
		t.Errorf("cr-dump of a process of 24 MiB had it lend its pages by default:\n%s", r.stderr)
	}
	if r := shell(t, 60*time.Second, fmt.Sprintf("CRPIPE_LEND_MIN=lots cr-dump -t %d --leave-running -o %s.bad", p.pid, img)); r.err == nil || !strings.Contains(string(r.stderr), "CRPIPE_LEND_MIN") {
		t.Errorf("CRPIPE_LEND_MIN=lots: %s", r)
	}
	p.checkRunning()
	// Both write their verdict at the start of one file (checkStateCopy).
	copyPid := p.restoreBeside(img)
	p.terminate(1)
	if err := os.Truncate(p.verdict, 0); err != nil {
		t.Fatal(err)
	}
	p.checkCopy(copyPid)
}

// TestRestoreWaits: cr-restore without -d waits for the restored process
// and exits with its status (0 after PASS).
func TestRestoreWaits(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	p := startCounter(t, "counter", 0)
	img, at := p.dumpKilled("img")

	var stderr bytes.Buffer
	cmd, done, waitErr := restoreWaiting(t, &stderr, "-i", img)
	p.checkProgressFrom(at)
	if !p.isOurs() {
		t.Fatalf("pid %d after restore is not %s", p.pid, p.name)
	}
	p.terminate(at)
	select {
	case <-done:
		if *waitErr != nil {
			t.Fatalf("cr-restore: %v (want exit status 0, the counter's)\n%s", *waitErr, stderr.Bytes())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("cr-restore still waits 10s after the restored process exited: %s\nstderr:\n%s", describe(cmd.Process.Pid), stderr.Bytes())
	}
}

// restoreWaiting starts cr-restore with args, without -d: it stays and
// waits for the restored process. done is closed once it is reaped, with
// its result in *waitErr; at cleanup it is killed if it still runs.
func restoreWaiting(t *testing.T, stderr io.Writer, args ...string) (cmd *exec.Cmd, done <-chan struct{}, waitErr *error) {
	t.Helper()
	cmd = exec.Command(bin("cr-restore"), args...)
	cmd.Stderr = stderr
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ended := make(chan struct{})
	waitErr = new(error)
	go func() { *waitErr = cmd.Wait(); close(ended) }()
	t.Cleanup(func() {
		select {
		case <-ended:
		default:
			cmd.Process.Kill()
			select {
			case <-ended:
			case <-time.After(20 * time.Second):
				t.Errorf("cleanup: cr-restore (pid %d) does not end after SIGKILL: %s", cmd.Process.Pid, describe(cmd.Process.Pid))
			}
		}
	})
	return cmd, ended, waitErr
}

// killedThenRestored checks the dump just made killed the original and
// removed its cgroup, restores img with -d, and checks the counter goes on
// from where it was and its state is intact.
func (p *target) killedThenRestored(img string) {
	p.t.Helper()
	p.waitKilled()
	p.checkNoCgroup()
	at := p.mustProgress()
	p.restoreDetached(img)
	p.checkProgressFrom(at)
	p.terminate(at)
}

// dumpKilled dumps p with cr-dump into p.dir/name, which kills it, and
// returns the image and the progress the counter had reached.
func (p *target) dumpKilled(name string) (img string, at uint64) {
	p.t.Helper()
	img = filepath.Join(p.dir, name)
	mustShell(p.t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	p.waitKilled()
	return img, p.mustProgress()
}

// mustProgress reads the counter's final progress (after the dump killed it).
func (p *target) mustProgress() uint64 {
	p.t.Helper()
	v, err := readProgress(p.progress)
	if err != nil || v == 0 {
		p.t.Fatalf("progress of pid %d: %d, %v", p.pid, v, err)
	}
	return v
}

func checkLz4(t *testing.T, img string) {
	t.Helper()
	b := make([]byte, 4)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Read(b); err != nil || !bytes.Equal(b, []byte{0x04, 0x22, 0x4d, 0x18}) {
		t.Fatalf("%s does not start with an lz4 frame: % x (%v)", img, b, err)
	}
}
