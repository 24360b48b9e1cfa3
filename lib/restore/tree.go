package restore

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/internal/par"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/tree"
)

// planTree orders the tree (parents first), checks that its sessions and
// groups can be rebuilt, and creates the root. Every other process is
// created when its memory record arrives (ensureCreated): forked from its
// parent once the parent's memory is filled, so that the pages they shared
// since fork are shared again (Vma.inherited), and with only the memory it
// keeps copied (limitFork).
func (rc *Ctx) planTree() error {
	procs := make([]*pb.Process, len(rc.Order))
	for i, t := range rc.Order {
		procs[i] = t.proc
	}
	ordered, err := tree.Order(procs)
	if err != nil {
		return err
	}
	if err := tree.Check(ordered); err != nil {
		return err
	}
	order := make([]*task, len(ordered))
	for i, p := range ordered {
		order[i] = rc.Tasks[p.Pid]
		if i > 0 {
			order[i].parent = rc.Tasks[p.Ppid]
		}
	}
	rc.Order = order
	if rc.dumpedCgroups {
		if err := rc.planCgroups(); err != nil {
			return err
		}
	}
	return rc.ensureCreated(order[0])
}

// ensureCreated creates t (and its ancestors first) with its dumped PID;
// a session leader starts its session before its children exist.
func (rc *Ctx) ensureCreated(t *task) error {
	if t.pid != 0 {
		return nil
	}
	if t.parent != nil {
		if err := rc.ensureCreated(t.parent); err != nil {
			return err
		}
	}
	if err := rc.create(t); err != nil {
		return err
	}
	if err := rc.moveToDumpedCgroup(t); err != nil {
		return err
	}
	if t.proc.Sid == t.proc.Pid {
		if _, err := t.r.run(sc("setsid", unix.SYS_SETSID)); err != nil {
			return err
		}
		// fd_tty.go: before the children, who inherit it; under rc.mu, as
		// other tasks are mapped meanwhile (fill.go).
		return rc.locked(func() error { return rc.earlyCtty(t) })
	}
	return nil
}

// completeTree creates what has no memory record (zombies), then sets the
// process groups, once every leader exists, and lets the zombies die with
// their dumped status.
func (rc *Ctx) completeTree() error {
	for _, t := range rc.Order {
		if err := rc.ensureCreated(t); err != nil {
			return err
		}
	}
	// Leaders first, then their members; each a round trip to its own
	// restorer, a task per core at a time.
	for _, leaders := range []bool{true, false} {
		var join []*task
		for _, t := range rc.Order {
			if (t.proc.Pgid == t.proc.Pid) != leaders || t.proc.Sid == t.proc.Pid {
				continue
			}
			if rc.Tasks[t.proc.Pgid] == nil {
				continue // the group is outside the tree: inherited (the root joins ours)
			}
			join = append(join, t)
		}
		if err := par.For(len(join), runtime.GOMAXPROCS(0), func(i int) error {
			t := join[i]
			_, err := t.r.run(sc(fmt.Sprintf("setpgid %d", t.proc.Pgid), unix.SYS_SETPGID, 0, uint64(t.proc.Pgid)))
			return err
		}); err != nil {
			return err
		}
	}
	for _, t := range rc.Order {
		if t.zombie() {
			if err := t.becomeZombie(); err != nil {
				return err
			}
		}
	}
	return nil
}

// create clones the task: the root from a helper (or, with --pidns, from
// the init of a new PID namespace), the others from their parent.
func (rc *Ctx) create(t *task) error {
	if t.parent == nil && !rc.pidns {
		r, helper, err := rc.rootHelper()
		if err != nil {
			return err
		}
		pid, err := r.clone(cloneReq{flags: unix.CLONE_PARENT, tid: int(t.proc.Pid), exitParent: true, childCtl: -1})
		if err != nil {
			r.sock.Close() // the helper exits on EOF
			helper.Wait()
			return fmt.Errorf("pid %d: %w", t.proc.Pid, err)
		}
		helper.Wait()
		r.pid = pid
		t.r, t.pid, t.ctlFd = r, pid, 3 // the helper got its socket as fd 3
		return nil
	}
	parent := rc.init
	if t.parent != nil {
		// The fork shares the parent's memory as it is: filled.
		if err := rc.waitFillOf(t.parent); err != nil {
			return err
		}
		parent = t.parent.r
	} else if parent == nil {
		var err error
		if parent, err = rc.startInit(); err != nil {
			return err
		}
	}
	ours, theirs, err := controlPair()
	if err != nil {
		return err
	}
	n, err := parent.sendFds([]*os.File{theirs})
	theirs.Close()
	if err != nil {
		ours.Close()
		return err
	}
	if err := t.limitFork(); err != nil {
		ours.Close()
		return err
	}
	inner, err := parent.clone(cloneReq{exitSignal: uint64(unix.SIGCHLD), tid: int(t.proc.Pid), childCtl: n[0]})
	if err != nil {
		ours.Close()
		return fmt.Errorf("pid %d: %w", t.proc.Pid, err)
	}
	pid := inner
	if rc.pidns {
		if pid, err = outerPid(parent.pid, inner); err != nil {
			ours.Close()
			return err
		}
		t.inNs = true
	}
	t.r = &restorer{sock: ours, pid: pid, layout: parent.layout}
	t.pid, t.ctlFd = pid, n[0]
	return nil
}

// startInit starts a helper as init of a new PID namespace (and mount
// namespace, with its own /proc), the parent of the restored root.
func (rc *Ctx) startInit() (*restorer, error) {
	r, helper, err := startHelper(true, rc.cgroup)
	if err != nil {
		return nil, err
	}
	rc.init = r
	go helper.Wait() // reaped whenever it ends; cr-restore waits by pid
	got, err := r.run(sc("map a page", unix.SYS_MMAP, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0))
	if err != nil {
		return nil, err
	}
	s := &scratchWriter{base: uint64(got[0])}
	root, proc := s.putString("/"), s.putString("proc")
	procDir := s.putString("/proc")
	if err := writeMem(r.pid, s); err != nil {
		return nil, err
	}
	_, err = r.run(
		sc("make mounts private", unix.SYS_MOUNT, 0, root, 0, unix.MS_REC|unix.MS_PRIVATE, 0),
		sc("mount /proc of the new pid namespace", unix.SYS_MOUNT, proc, procDir, proc, unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, 0),
		sc("unmap the page", unix.SYS_MUNMAP, uint64(got[0]), pageSize))
	return r, err
}

// outerPid finds, among the children of parent (a pid here), the one that
// has pid inner in its own namespace.
func outerPid(parent, inner int) (int, error) {
	lists, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", parent))
	for _, l := range lists {
		b, _ := os.ReadFile(l)
		for _, f := range strings.Fields(string(b)) {
			c, _ := strconv.Atoi(f)
			if nsInnermost(fmt.Sprintf("/proc/%d/status", c)) == inner {
				return c, nil
			}
		}
	}
	return 0, fmt.Errorf("pid %d of the new namespace: not found among the children of %d", inner, parent)
}

// outerTid finds the thread of process pid (a pid here) with tid inner in
// its namespace.
func outerTid(pid, inner int) (int, error) {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	for _, st := range tasks {
		if nsInnermost(st) == inner {
			return strconv.Atoi(filepath.Base(filepath.Dir(st)))
		}
	}
	return 0, fmt.Errorf("tid %d of the new namespace: not found in pid %d", inner, pid)
}

// nsInnermost reads the last NSpid of a status file: the id in the task's
// own PID namespace.
func nsInnermost(status string) int {
	b, _ := os.ReadFile(status)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.Atoi(f[len(f)-1])
				return n
			}
		}
	}
	return -1
}

// becomeZombie makes the task exit as the dumped zombie did. Its parent is
// still a restorer with default signal dispositions, so the SIGCHLD is
// discarded and the zombie waits to be reaped by the restored parent.
func (t *task) becomeZombie() error {
	// A zombie keeps its name: pass it in a page of its own.
	got, err := t.r.run(sc("map a page for the name", unix.SYS_MMAP, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0))
	if err != nil {
		return err
	}
	name := &scratchWriter{base: uint64(got[0])}
	addr := name.putString(t.proc.Comm)
	if err := writeMem(t.pid, name); err != nil {
		return err
	}
	if _, err := t.r.run(sc("set name", unix.SYS_PRCTL, prSetName, addr)); err != nil {
		return err
	}
	status := unix.WaitStatus(t.proc.ExitCode)
	var c call
	switch {
	case status.Signaled():
		c = sc("die by signal", unix.SYS_KILL, uint64(t.proc.Pid), uint64(status.Signal())) // its own pid, inside
	default:
		c = sc("exit", unix.SYS_EXIT_GROUP, uint64(status.ExitStatus()))
	}
	msg := header(opSyscalls, 1, 56)
	msg = appendCall(msg, c)
	// The task never answers: it is gone.
	if err := unix.Sendmsg(int(t.r.sock.Fd()), msg, nil, nil, 0); err != nil {
		return fmt.Errorf("pid %d: %w", t.pid, err)
	}
	// Wait until it is a zombie, so the tree is complete before it resumes.
	for i := 0; i < 1000; i++ {
		st, err := proc.ReadStat(t.pid)
		if err == nil && st.State == 'Z' {
			return nil
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
	}
	return fmt.Errorf("pid %d did not become a zombie", t.pid)
}

func controlPair() (ours, theirs *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "restorer-ctl"), os.NewFile(uintptr(fds[1]), "restorer-ctl-child"), nil
}
