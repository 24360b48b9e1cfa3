package freeze

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"crpipe/lib/proc"
	"crpipe/lib/stage"
)

// GuardDone is what cr-dump writes to its guard once it has disposed of
// the target itself (killed, or thawed after a failure or with
// --leave-running).
const GuardDone = "done"

// GuardComplete is what cr-dump writes to its guard once the image is
// complete and the target is to be killed: a cr-dump that dies after it
// is finished by the guard, which kills the target instead of thawing it.
// (The image may still be on its way to a reader, and with cr-pages
// --lend it refers to the target's memory: a thawed target could change
// it.)
const GuardComplete = "complete"

// guardWatch is the guard while all goes well: a shell that reads what
// cr-dump writes, ~1 ms to start where a Go program takes ~17 ms of CPU
// on the PVM guest, beside cr-dump's own start (doc/performance.md 72).
// Should its input end without GuardDone, it hands what it read to
// `cr-freeze guard` ($1 the binary, $2 the pid, $3 the unfinished image
// or ""), which thaws the target, or kills it once the image was complete.
const guardWatch = `b=$1 p=$2 f=$3 s=
while IFS= read -r l; do
	case $l in
	` + GuardDone + `) exit 0 ;;
	` + GuardComplete + `) s=$l ;;
	esac
done
if [ -n "$f" ]; then set -- --remove "$f"; else set --; fi
{ [ -z "$s" ] || echo "$s"; } | "$b" guard --pid "$p" "$@"
`

// GuardCommand is the guard of a dump of pid that cr-dump starts (its
// stdin cr-dump's pipe): guardWatch run by shell, or, where there is no
// shell, crFreeze guard itself; partial is the unfinished image ("" for
// none).
func GuardCommand(shell, crFreeze string, pid int, partial string) *exec.Cmd {
	if _, err := os.Stat(shell); err == nil {
		return exec.Command(shell, "-c", guardWatch, "cr-dump-guard", crFreeze, strconv.Itoa(pid), partial)
	}
	args := []string{"guard", "--pid", strconv.Itoa(pid)}
	if partial != "" {
		args = append(args, "--remove", partial)
	}
	return exec.Command(crFreeze, args...)
}

// guardTracerWait bounds how long the guard waits for the dead dump's
// stages to let go of the target's threads.
const guardTracerWait = 10 * time.Second

// Guard watches a dump of pid from outside it: cr-dump starts it with one
// end of a pipe as in and keeps the other. When cr-dump ends normally it
// writes GuardDone first; an end of file without it means cr-dump died
// (SIGKILL, the OOM killer), with nobody left to thaw the target, which
// would stay frozen for good. The guard then waits for the stages, which
// die with cr-dump (PR_SET_PDEATHSIG), to let go of the target's threads,
// thaws it as `cr-freeze thaw --pid` does (putting back what a stage that
// died mid-injection left, releasing the TCP connections) and removes the
// unfinished image file partial, if any; or, once cr-dump said the image
// is complete (GuardComplete), kills it as cr-dump was about to.
func Guard(pid int, in io.Reader, partial string) error {
	// cr-dump's stderr may be a pipe nobody reads any more: a message
	// must not kill the guard (SIGPIPE) before or while it thaws.
	signal.Ignore(syscall.SIGPIPE)
	r := bufio.NewReader(in)
	line, _ := r.ReadString('\n')
	if strings.TrimSpace(line) == GuardComplete {
		if line, _ = r.ReadString('\n'); strings.TrimSpace(line) == GuardDone {
			return nil
		}
		waitUntraced(pid, guardTracerWait)
		if err := KillPid(pid); err != nil {
			return fmt.Errorf("cr-dump of pid %d died once its image was complete; killing it: %w", pid, err)
		}
		fmt.Fprintf(os.Stderr, "%s: cr-dump of pid %d died once its image was complete: pid %d killed, as cr-dump would have\n", filepath.Base(os.Args[0]), pid, pid)
		return nil
	}
	if strings.TrimSpace(line) == GuardDone {
		return nil
	}
	if partial != "" {
		os.Remove(partial)
	}
	waitUntraced(pid, guardTracerWait)
	thawed, err := ThawPid(pid)
	if err != nil {
		return fmt.Errorf("cr-dump of pid %d died; thawing it: %w", pid, err)
	}
	if thawed {
		fmt.Fprintf(os.Stderr, "%s: cr-dump of pid %d died during the checkpoint: pid %d thawed, no image written\n", filepath.Base(os.Args[0]), pid, pid)
	}
	return nil
}

// waitUntraced waits until no thread of the processes in pid's transient
// cgroup has a tracer (a stage on its way out), or for limit.
func waitUntraced(pid int, limit time.Duration) {
	_, tasks, _, err := findPid(pid)
	if err != nil {
		return
	}
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		traced := false
		for _, t := range tasks {
			tids, _ := proc.Threads(t.Pid)
			for _, tid := range tids {
				if st, err := proc.ReadStatus(tid); err == nil && st.TracerPid != 0 {
					traced = true
				}
			}
		}
		if !traced {
			return
		}
	}
	stage.Logf("pid %d: still traced after %v; thawing anyway", pid, limit)
}
