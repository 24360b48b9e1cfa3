package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// File locks (issue 5): test/progs/fd_locks holds flock, POSIX and OFD
// locks in a parent and a child and checks, from a process of its own, that
// each is held again after a restore, with its owner and exact range.

// checkLockLines checks crit show lists each lock under its process.
func checkLockLines(t *testing.T, show string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(show, "    "+w) {
			t.Errorf("crit show lacks the lock line %q", w)
		}
	}
}

func TestFdLocks(t *testing.T) {
	// "wait": two more children blocked on the locks (F_SETLKW, flock
	// without LOCK_NB) wait again after the restore. "brief": the stages in
	// the brief's order, where cr-pages comes before cr-files: the same
	// locks, those held through a mapping alone too.
	for _, c := range []struct{ name, arg, stages string }{
		{"plain", "", dumpStages}, {"plainwait", "wait", dumpStages}, {"brief", "", briefStages},
	} {
		t.Run(c.name, func(t *testing.T) {
			need(t, append(pipelineCmds, "cr-restore", "crit")...)
			p := startFdProg(t, "fd_locks", c.arg)
			show := dumpRestoreWith(t, p, c.stages)
			checkLockLines(t, show,
				"flock read on fd 20, held by desc ",
				"flock write on fd 21, held by desc ",
				"posix write bytes 10-29 on fd 22",
				"posix write bytes 40-44 on fd 22",
				"posix write bytes 50-59 on fd 22",
				"posix read bytes 100-149 on fd 22",
				"posix read bytes 1000-EOF on fd 22",
				"ofd write bytes 200-209 on fd 24, held by desc ",
				"ofd read bytes 300-309 on fd 24, held by desc ",
				"posix write bytes 500-509 on fd 22",  // the child's
				"flock write on fd 26, held by desc ", // a memfd
				"flock read on fd 27, held by desc ",  // DIR
				"flock write through the shared mapping at 0x",
				"ofd write bytes 0-99 through the shared mapping at 0x")
			if n := strings.Count(show, " on fd 2") + strings.Count(show, " through the shared mapping"); n != 14 {
				t.Errorf("crit show lists %d locks, want 14 (flock and OFD locks once, though every process shares them):\n%s", n, show)
			}
		})
	}
}

// TestFdLocksConflict: a lock someone else took meanwhile fails the
// restore with an error naming the process, fd, file and range, and the
// restore leaves nothing behind.
func TestFdLocksConflict(t *testing.T) {
	need(t, append(pipelineCmds, "cr-restore")...)
	p := startFdProg(t, "fd_locks", "")
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d | %s > %s && cr-freeze kill < %s", p.pid, dumpStages, img, img))
	p.waitKilled()
	// The test takes a POSIX lock on byte 15 of the file, which the
	// restored process had locked for writing (bytes 10-29).
	f, err := os.OpenFile(filepath.Join(p.dir, "posix"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: 15, Len: 1}); err != nil {
		t.Fatal(err)
	}
	r := shell(t, 60*time.Second, fmt.Sprintf("cr-restore -d -i %s", img))
	if r.err == nil {
		t.Fatal("restored although the test holds a conflicting lock")
	}
	checkErrorLine(t, "cr-restore", r.stderr, regexp.MustCompile(`pid `+strconv.Itoa(p.pid)+`: file lock: POSIX write lock on fd 22 \(`+regexp.QuoteMeta(p.dir)+`/posix\), bytes 10-29: `))
	if !strings.Contains(string(r.stderr), "cr-restore: hint: another process holds a conflicting lock") {
		t.Errorf("no hint about the conflicting lock:\n%s", r.stderr)
	}
	p.checkPidFree()
}

// TestFdLocksLeaseRefused: a lease is refused at dump time, naming pid, fd
// and file; the target runs on, thawed, with its locks and lease.
func TestFdLocksLeaseRefused(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump")...)
	p := startFdProg(t, "fd_locks", "lease")
	img := filepath.Join(p.dir, "img")
	r := shell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	if r.err == nil {
		t.Fatal("a process holding a lease was dumped")
	}
	want := regexp.MustCompile(`cr-files: (error: )?pid ` + strconv.Itoa(p.pid) + ` fd 25: ` + regexp.QuoteMeta(p.dir) + `/leased: holds a read lease`)
	if !want.Match(r.stderr) {
		t.Errorf("cr-dump's errors do not match %q:\n%s", want, r.stderr)
	}
	p.checkRunning()
	p.terminate(0)
}
