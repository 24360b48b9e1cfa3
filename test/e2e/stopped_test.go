package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Stopped processes (state T: SIGSTOP, or a job stopped by Ctrl-Z) are
// dumped as they are, left stopped by a dump that fails or leaves them
// running, and restored stopped.

// stoppedThreads counts pid's threads in state T, and all its threads.
func stoppedThreads(pid int) (stopped, total int) {
	for _, tid := range tidsOf(pid) {
		total++
		if taskState(pid, tid) == "T" {
			stopped++
		}
	}
	return stopped, total
}

// waitStopped waits until every thread of pid is stopped.
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if n, total := stoppedThreads(pid); total > 0 && n == total {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d did not stop: %s", pid, describe(pid))
		}
	}
}

// checkStillStopped checks every thread of pid is stopped and untraced.
func checkStillStopped(t *testing.T, pid int) {
	t.Helper()
	if n, total := stoppedThreads(pid); total == 0 || n != total {
		t.Fatalf("pid %d: %d of %d threads stopped, want all: %s", pid, n, total, describe(pid))
	}
	if m := regexp.MustCompile(`(?m)^TracerPid:\s*(\d+)`).FindStringSubmatch(readFile(fmt.Sprintf("/proc/%d/status", pid))); m == nil || m[1] != "0" {
		t.Fatalf("pid %d is traced: %v", pid, m)
	}
}

// checkNoTicks checks the (stopped) counter does not tick for d.
func (p *target) checkNoTicks(at uint64, d time.Duration) {
	p.t.Helper()
	time.Sleep(d)
	if v := p.mustProgress(); v != at {
		p.t.Fatalf("pid %d ticked while stopped: %d, then %d", p.pid, at, v)
	}
}

// TestStopped: a counter with 32 MiB (its pages lent by the process)
// stopped with SIGSTOP, then sent SIGSTOP again (queued, for the SIGCONT
// to discard). cr-dump --leave-running leaves it stopped, untraced, in
// its cgroup; cr-dump's image restores it stopped, and once continued
// it goes on from where it stopped.
func TestStopped(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	for _, leave := range []bool{true, false} {
		t.Run(fmt.Sprintf("leave-running=%v", leave), func(t *testing.T) {
			p := startCounter(t, "counter", 32)
			if err := syscall.Kill(p.pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			waitStopped(t, p.pid)
			// Queued now: injected code meets it at its first resume.
			if err := syscall.Kill(p.pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			at := p.mustProgress()
			img := filepath.Join(p.dir, "img")
			if leave {
				mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump --leave-running -t %d -o %s", p.pid, img))
				checkStillStopped(t, p.pid)
				p.checkNoCgroup()
				p.checkNoTicks(at, 200*time.Millisecond)
				syscall.Kill(p.pid, syscall.SIGCONT)
				p.checkRunning()
				p.terminate(at)
				return
			}
			show := string(mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -v -t %d -o %s", p.pid, img)).stderr)
			if !strings.Contains(show, "lends its private anonymous pages") {
				t.Errorf("cr-pages did not lend the stopped process's pages:\n%s", show)
			}
			p.waitKilled()
			p.restoreDetached(img)
			checkStillStopped(t, p.pid)
			p.checkNoTicks(at, 300*time.Millisecond)
			if err := syscall.Kill(p.pid, syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
			p.checkProgressFrom(at)
			p.terminate(at)
		})
	}
}

// startJobstop starts test/progs/jobstop (a parent that stopped its
// three-threaded job with SIGTSTP) and returns it with the job's pid.
func startJobstop(t *testing.T) (*target, int) {
	t.Helper()
	p := start(t, "jobstop", func(p *target) []string { return []string{p.progress, p.verdict} })
	job := descendant(p.pid, "jobstop-job")
	if job == 0 {
		t.Fatalf("no job under pid %d", p.pid)
	}
	t.Cleanup(func() {
		// Restored, the job is the restored parent's child, not ours;
		// killed by its recorded pid, and only while it is the job.
		if strings.TrimSpace(readFile(fmt.Sprintf("/proc/%d/comm", job))) == "jobstop-job" {
			syscall.Kill(job, syscall.SIGKILL)
		}
	})
	waitStopped(t, job)
	return p, job
}

// TestStoppedJob: a job stopped by its shell-like parent (SIGTSTP, seen
// with waitpid WUNTRACED), dumped with its parent: restored, each of its
// threads is stopped and its counts have not moved; the parent continues
// it (waitpid sees WCONTINUED) and every thread counts again.
func TestStoppedJob(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	p, job := startJobstop(t)
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	p.waitKilled()
	at := p.mustProgress()
	p.restoreDetached(img)
	checkStillStopped(t, job)
	p.checkProgressFrom(at)
	p.terminate(at) // the parent checks the job, continues it and says PASS
}

// TestStoppedJobDumpFails: the stopped job is dumped alone, and
// cr-parasite dies while one of its threads parks in its stub. The dump
// fails, and the thaw puts the job back as it was: stopped, untraced, the
// same mappings and signal masks; its parent then continues it and sees
// it count. (Alone: a tracer that dies while injecting a plain syscall
// into another process, before its stub exists, leaves nothing to
// recover that process from.)
func TestStoppedJobDumpFails(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump")...)
	p, job := startJobstop(t)
	before := takeSnapshot(t, job)
	r := shell(t, 60*time.Second, fmt.Sprintf("CRPIPE_FAULT=parasite-dies-in-stub cr-dump --stage-processes -v -t %d -o %s", job, filepath.Join(p.dir, "img")))
	if r.err == nil {
		t.Fatalf("cr-dump succeeded though its cr-parasite died")
	}
	if !strings.Contains(string(r.stderr), "its threads are put back as they were") {
		t.Errorf("the thaw does not say it put back the threads a dead stage left:\n%s", r.stderr)
	}
	checkStillStopped(t, job)
	before.check(t)
	p.checkRunning()
	p.terminate(p.mustProgress())
}

// tidsOf lists the thread ids of pid (none once it is gone).
func tidsOf(pid int) []string {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// TestKilledWhileFrozen: a process of the dump SIGKILLed while frozen
// (its parent, frozen too, cannot reap it) before cr-seize, or before
// cr-parasite: the stage says the process exited during the checkpoint,
// naming it, instead of blaming another tracer or the lack of a syscall
// instruction; the thaw then puts the rest back, leaving no cgroup.
func TestKilledWhileFrozen(t *testing.T) {
	need(t, pipelineCmds...)
	for _, c := range []struct{ before, stages string }{
		{"cr-seize", "cr-freeze --pid %d > %s"},
		{"cr-parasite", "cr-freeze --pid %d | cr-seize > %s"},
	} {
		t.Run(c.before, func(t *testing.T) {
			p, job := startJobstop(t)
			f := filepath.Join(p.dir, "frozen")
			mustShell(t, 60*time.Second, fmt.Sprintf(c.stages, p.pid, f))
			if err := syscall.Kill(job, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(10 * time.Second); taskState(job, strconv.Itoa(job)) != "Z"; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the job did not die: %s", describe(job))
				}
			}
			r := shell(t, 60*time.Second, fmt.Sprintf("%s < %s > /dev/null", c.before, f))
			if r.err == nil {
				t.Fatalf("%s went on with a process gone", c.before)
			}
			checkErrorLine(t, c.before, r.stderr, regexp.MustCompile(`pid `+strconv.Itoa(job)+`\b.* exited during the checkpoint`))
			mustShell(t, 60*time.Second, "cr-freeze thaw < "+f)
			p.checkNoCgroup()
			p.waitProgress(p.mustProgress()+10, 10*time.Second)
		})
	}
}

// TestSigstopDuringDump: SIGSTOP reaches a frozen, running process
// before cr-parasite injects into it. The injection meets it; cr-parasite
// puts the process back, passes the signal on and says what happened, so
// that once thawed the process stops as the signal asks (and is then
// dumped as it is).
func TestSigstopDuringDump(t *testing.T) {
	need(t, pipelineCmds...)
	p := startCounter(t, "counter", 0)
	f := filepath.Join(p.dir, "frozen")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d > %s", p.pid, f))
	if err := syscall.Kill(p.pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	r := shell(t, 60*time.Second, fmt.Sprintf("cr-seize < %s | cr-parasite > /dev/null", f))
	if r.err == nil {
		t.Fatal("cr-parasite went on though a SIGSTOP came")
	}
	checkErrorLine(t, "cr-parasite", r.stderr, regexp.MustCompile(`pid `+strconv.Itoa(p.pid)+`\b.*SIGSTOP sent during the injection`))
	mustShell(t, 60*time.Second, "cr-freeze thaw < "+f)
	p.checkNoCgroup()
	waitStopped(t, p.pid)
	checkStillStopped(t, p.pid)
	syscall.Kill(p.pid, syscall.SIGCONT)
	p.checkRunning()
	p.terminate(0)
}
