package parasite

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/inject"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
)

// A thread sandboxed with Landlock (landlock_restrict_self(2)) shows it
// nowhere: no /proc file and no system call reports a domain or its rules.
// A restore would give the process back without its sandbox, and nothing
// would say so. What shows a domain is what it forbids: a thread in one
// may not look at a process outside it (ptrace, kcmp, process_vm_readv)
// where the credential checks would let it. So each thread runs, among its
// injected calls, kcmp(KCMP_VM) of its process and a witness: a process in
// no domain, with the thread's real uid and gid, dumpable
// (witnessShell). EPERM there is a sandbox (Landlock, or another LSM
// confining the thread), which the dump refuses.

// witnesses are the witness processes of one run, one per uid and gid.
type witnesses struct {
	mu   sync.Mutex
	byID map[[2]int]*witness
}

type witness struct {
	ready chan struct{} // closed once pid or err is set
	pid   int
	err   error
	cmd   *exec.Cmd
	stdin io.Closer
}

// witnessTimeout bounds a witness's start.
const witnessTimeout = 10 * time.Second

// start starts the witness for uid and gid in the background, unless it
// is started already.
func (ws *witnesses) start(uid, gid int) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	k := [2]int{uid, gid}
	if ws.byID == nil {
		ws.byID = map[[2]int]*witness{}
	}
	if ws.byID[k] != nil {
		return
	}
	wt := &witness{ready: make(chan struct{})}
	ws.byID[k] = wt
	if isSelf(uid, gid) {
		// This process is what a shell it started for those ids would
		// be: the same ids, dumpable, in the same Landlock domain (a
		// child inherits its parent's). It is the witness, and no shell
		// starts on the first process's path (~3 ms there on the PVM
		// guest, doc/performance.md 67).
		wt.pid = os.Getpid()
		close(wt.ready)
		return
	}
	go wt.run(uid, gid)
}

// isSelf reports whether this process's real, effective and saved ids are
// uid and gid, and it is dumpable: what a witness started for them is.
func isSelf(uid, gid int) bool {
	ru, eu, su := unix.Getresuid()
	rg, eg, sg := unix.Getresgid()
	if ru != uid || eu != uid || su != uid || rg != gid || eg != gid || sg != gid {
		return false
	}
	dumpable, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	return err == nil && dumpable == 1
}

// witnessShell is the witness: a shell that says it is ready and waits for
// a line on stdin, which never comes, until stdin closes (cr-parasite ends,
// or dies). Not a stage binary: exec'd as /proc/self/exe it would be
// whatever runs cr-parasite's code (a test binary ran its tests again,
// each run starting witnesses of its own).
var witnessShell = []string{"/bin/sh", "-c", "echo ready; read line"}

// startFor starts the witness of pid's leader, when its credentials can
// be read (prepare starts those of every thread anyway).
func (ws *witnesses) startFor(pid int) {
	if sec, err := proc.ReadSecurity(pid, pid); err == nil {
		ws.start(sec.Uid[0], sec.Gid[0])
	}
}

func (wt *witness) run(uid, gid int) {
	defer close(wt.ready)
	fail := func(err error) {
		wt.err = fmt.Errorf("a witness with uid %d gid %d, to look for a sandbox: %w", uid, gid, err)
	}
	cmd := exec.Command(witnessShell[0], witnessShell[1:]...)
	cmd.Env = []string{}
	cmd.Dir = "/"
	// Real, effective and saved ids, no supplementary groups; the exec
	// after the change leaves it dumpable.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		fail(err)
		return
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		fail(err)
		return
	}
	if err := cmd.Start(); err != nil {
		fail(err)
		return
	}
	wt.cmd, wt.stdin = cmd, stdin
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			err = errors.New(msg)
		}
		fail(fmt.Errorf("it did not start: %v", err))
		return
	}
	wt.pid = cmd.Process.Pid
}

// pid is the pid of the witness for uid and gid (started by start) once
// it has taken them.
func (ws *witnesses) pid(uid, gid int) (int, error) {
	ws.mu.Lock()
	wt := ws.byID[[2]int{uid, gid}]
	ws.mu.Unlock()
	if wt == nil {
		return 0, fmt.Errorf("no witness was started for uid %d gid %d", uid, gid)
	}
	select {
	case <-wt.ready:
		return wt.pid, wt.err
	case <-time.After(witnessTimeout):
		return 0, fmt.Errorf("the witness for uid %d gid %d did not start within %v", uid, gid, witnessTimeout)
	}
}

// close ends every witness: its stdin closes, and it exits.
func (ws *witnesses) close() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for _, wt := range ws.byID {
		select {
		case <-wt.ready:
		case <-time.After(witnessTimeout):
		}
		if wt.stdin != nil {
			wt.stdin.Close()
		}
		if wt.cmd != nil && wt.cmd.Process != nil {
			wt.cmd.Process.Kill() // one that never got ready does not read its stdin
			wt.cmd.Wait()
		}
	}
	ws.byID = nil
}

// sandboxed reads the result of a thread's kcmp call against its witness:
// an error refusing a sandboxed thread, or nil.
func sandboxed(ret int64) error {
	err := inject.Errno(ret)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EPERM):
		return stage.Hint(fmt.Errorf("the thread is sandboxed (Landlock, or another LSM confines it): it may not look at a process of its own uid and gid outside its sandbox (kcmp: %v), and no interface shows the sandbox for a restore to build again; not supported", err),
			"checkpoint the program before it sandboxes itself, or run it without the sandbox")
	case errors.Is(err, unix.ENOSYS):
		noKcmpOnce.Do(func() {
			stage.Logf("this kernel has no kcmp: a Landlock sandbox cannot be seen, and a sandboxed process would be restored without it")
		})
		return nil
	}
	return fmt.Errorf("kcmp of a witness, to look for a sandbox: %w", err)
}

var noKcmpOnce sync.Once
