package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Files in flight (SCM_RIGHTS) and credentials (SCM_CREDENTIALS) of queued
// unix messages (test/progs/fd_scmrights.c): a file also held by the
// process, a pipe, a memfd, a regular file and an eventfd held by no one,
// a socket in flight whose peer the process holds, credentials of the
// process, forged ones and (fork) a child's; on a stream, writes from one
// writer read together, another writer's apart. Empty datagrams and
// seqpacket messages, and seqpacket queues whose peer is gone or has shut
// down, come back.
func TestFdScmRights(t *testing.T) {
	for _, arg := range []string{"", "fork"} {
		t.Run("plain"+arg, func(t *testing.T) {
			need(t, append(pipelineCmds, "cr-restore", "crit")...)
			p := startFdProg(t, "fd_scmrights", arg)
			show := dumpRestore(t, p)
			t.Logf("crit show fds:\n%s", strings.Join(fdLines(show), "\n"))
			checkFdLine(t, show, 20, "unix stream", "[message 1 in flight: desc ", "/shared, also pid ", " fd 30)]", "[message 2 in flight: desc ",
				"pipe:[", "9 bytes unread", "[message 3 in flight: desc ", "memfd:scm-memfd", "regular /", "/other), desc ", "(ghost /", "/ghost (deleted), 14 B, 14 B in the image)",
				"[message 4 in flight: desc ", "(unix stream socket:[")
			checkFdLine(t, show, 27, "unix stream", "[message 1 from pid ", "[message 2 from pid ", ", in flight: desc ", "(eventfd, count 2)",
				" uid 1234 gid 5678]", "[message 3 from pid ", "(eventfd, count 4)")
			checkFdLine(t, show, 31, "unix seqpacket", "peer closed, 6 bytes queued in 3 messages")
			checkFdLine(t, show, 33, "unix seqpacket", "6 bytes queued in 2 messages")
			checkFdLine(t, show, 35, "unix dgram", "8 bytes queued in 4 messages")
			checkFdLine(t, show, 22, "unix dgram", "[message 1 from pid ", "[message 2 from pid ", " uid 1234 gid 5678]", ", in flight: desc ", "(eventfd, count 7)")
			checkFdLine(t, show, 24, "unix seqpacket", "[message 1 in flight: desc ", "(unix stream socket:[", "9 bytes queued)]")
			if arg == "fork" {
				checkFdLine(t, show, 22, "[message 4 from pid ")
			}
		})
	}
	// The credentials name the restored processes by the pid the
	// coordinator sees; the copy in its namespace reads the dumped pids.
	t.Run("pidns", func(t *testing.T) {
		need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
		p := startFdProg(t, "fd_scmrights", "fork")
		img := filepath.Join(p.dir, "img")
		mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d --leave-running -o %s", p.pid, img))
		p.checkCopy(p.restoreBeside(img))
		p.checkRunning()
		p.terminate(0)
	})
}
