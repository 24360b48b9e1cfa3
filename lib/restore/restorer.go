package restore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/stage"
	"crpipe/lib/sys"
	"crpipe/pie"
)

// Operations of the restorer blob; the protocol is doc/restorer.md and
// pie/src/restorer.c.
const (
	opSyscalls = 1
	opRecvFds  = 2
	opSetCtl   = 3
	opRelocate = 4
	opClone    = 5
	opInit     = 7

	maxBatch    = 500 // syscalls per OP_SYSCALLS message (32 KiB / 56 B, with room)
	maxFdsBatch = 64
	replyMax    = 16 + 8*512
)

// call is one syscall for the restorer to run.
type call struct {
	nr   uintptr
	args [6]uint64
	what string // for errors: what this call was for
	// vma, when set, is named after what (describe): a task can have
	// 65,000 VMAs, and a text made for each call up front was most of
	// what a restore of so many allocated.
	vma *vma
}

func sc(what string, nr uintptr, args ...uint64) call {
	c := call{nr: nr, what: what}
	copy(c.args[:], args)
	return c
}

// vmaCall is a call on the VMA v; its errors name v's range and path.
func vmaCall(what string, v *vma, nr uintptr, args ...uint64) call {
	c := sc(what, nr, args...)
	c.vma = v
	return c
}

func (c call) describe() string {
	if c.vma == nil {
		return c.what
	}
	d := fmt.Sprintf("%s %#x-%#x", c.what, c.vma.Start, c.vma.End)
	if c.vma.Path != "" {
		d += " " + c.vma.Path
	}
	return d
}

// batch runs calls maxBatch at a time as they are added, dropping their
// results, so that the calls for many VMAs are never all in memory. The
// first failure stops it: later calls are not run, and flush returns it.
type batch struct {
	r     *restorer
	calls []call
	err   error
	last  int64 // the result of the last call run
}

func (b *batch) add(cs ...call) {
	b.calls = append(b.calls, cs...)
	if len(b.calls) >= maxBatch {
		b.run()
	}
}

func (b *batch) run() {
	if b.err == nil && len(b.calls) > 0 {
		var vals []int64
		if vals, b.err = b.r.run(b.calls...); b.err == nil {
			b.last = vals[len(vals)-1]
		}
	}
	b.calls = b.calls[:0]
}

// flush runs what is left and returns the first failure.
func (b *batch) flush() error {
	b.run()
	return b.err
}

// flushLast is flush, with the result of the last call.
func (b *batch) flushLast() (int64, error) {
	err := b.flush()
	return b.last, err
}

// restorer is the coordinator's end of one restorer's control socket.
type restorer struct {
	sock   *os.File // our end; SOCK_SEQPACKET keeps message boundaries
	pid    int      // the task the commands act on
	layout pie.Layout
}

// startHelper executes the restorer blob from a memfd as our child and
// returns its control socket. The helper only clones the real task. With
// cgroup (a cgroup v2 directory) it starts there (clone3 with
// CLONE_INTO_CGROUP, Linux 5.7), and so does everything it clones: no
// process is moved, which would cost an RCU grace period (doc/performance.md).
func startHelper(pidns bool, cgroup *os.File) (*restorer, *exec.Cmd, error) {
	r, cmd, err := startHelperIn(pidns, cgroup)
	if err != nil || cgroup == nil {
		return r, cmd, err
	}
	// Start returns once the child has exec'd or died, and one killed at
	// birth may not be a zombie yet: ask it something.
	if _, err := r.run(sc("getpid", unix.SYS_GETPID)); err == nil {
		return r, cmd, nil
	}
	r.sock.Close()
	cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		return nil, nil, fmt.Errorf("the restorer started in %s died: %v", cgroup.Name(), cmd.ProcessState)
	}
	// Linux 6.18 kills a child cloned into a cgroup that cgroup.kill was
	// ever written to (it compares the cgroup's kill count with the
	// parent's cgroup's): start outside and move in, which that spares.
	stage.Logf("a process cloned into %s is killed at once (a cgroup that was killed with cgroup.kill): the restorer starts outside and moves in", cgroup.Name())
	if r, cmd, err = startHelperIn(pidns, nil); err != nil {
		return nil, nil, err
	}
	if err := sys.CgroupWrite(cgroup.Name(), "cgroup.procs", strconv.Itoa(cmd.Process.Pid)); err != nil {
		r.sock.Close()
		cmd.Process.Kill()
		cmd.Wait()
		return nil, nil, fmt.Errorf("move the restorer into %s: %w", cgroup.Name(), err)
	}
	return r, cmd, nil
}

// early is the root's helper, started as the restore starts: its fork
// and exec, and the exec of the blob, overlap the reading of the first
// records instead of following them (doc/performance.md, 77).
type early struct {
	done   chan struct{}
	r      *restorer
	helper *exec.Cmd
	err    error
}

func startEarly(cgroup *os.File) *early {
	e := &early{done: make(chan struct{})}
	go func() {
		defer close(e.done)
		e.r, e.helper, e.err = startHelper(false, cgroup)
	}()
	return e
}

// rootHelper is the helper the root is cloned from: the early one.
func (rc *Ctx) rootHelper() (*restorer, *exec.Cmd, error) {
	e := rc.early
	if e == nil {
		return startHelper(false, rc.cgroup)
	}
	rc.early = nil
	<-e.done
	return e.r, e.helper, e.err
}

// drop ends an early helper never used (the helper exits on EOF).
func (e *early) drop() {
	<-e.done
	if e.err == nil {
		e.r.sock.Close()
		e.helper.Wait()
	}
}

func startHelperIn(pidns bool, cgroup *os.File) (*restorer, *exec.Cmd, error) {
	layout, err := pie.RestorerLayout()
	if err != nil {
		return nil, nil, err
	}
	blob, err := memfdWithContents("crpipe-restorer", pie.Restorer())
	if err != nil {
		return nil, nil, err
	}
	defer blob.Close()
	ours, theirs, err := controlPair()
	if err != nil {
		return nil, nil, err
	}
	defer theirs.Close()
	cmd := &exec.Cmd{
		Path:       fmt.Sprintf("/proc/self/fd/%d", blob.Fd()),
		Args:       []string{"crpipe-restorer"},
		ExtraFiles: []*os.File{theirs}, // fd 3
		Env:        []string{},
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if pidns {
		// The helper becomes init of a new PID namespace, with a mount
		// namespace of its own for a /proc that shows that namespace.
		cmd.SysProcAttr.Cloneflags = unix.CLONE_NEWPID | unix.CLONE_NEWNS
	}
	if cgroup != nil {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cgroup.Fd())
	}
	if err := cmd.Start(); err != nil {
		ours.Close()
		if cgroup != nil {
			return nil, nil, stage.Hint(fmt.Errorf("start restorer in cgroup %s: %w", cgroup.Name(), err),
				"a cgroup with controllers enabled for its children (cgroup.subtree_control) cannot hold processes itself; give a leaf")
		}
		return nil, nil, fmt.Errorf("start restorer: %w", err)
	}
	return &restorer{sock: ours, pid: cmd.Process.Pid, layout: layout}, cmd, nil
}

// openCgroup opens dir, which must be a cgroup v2 directory.
func openCgroup(dir string) (*os.File, error) {
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		f.Close()
		return nil, stage.Hint(fmt.Errorf("%s: not a cgroup v2 directory", dir), "give a directory under the cgroup2 mount (grep cgroup2 /proc/mounts)")
	}
	return f, nil
}

func memfdWithContents(name string, b []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd write: %w", err)
	}
	return f, nil
}

type reply struct {
	status int64
	vals   []int64
}

func (r *restorer) roundTrip(msg []byte, fds []int) (reply, error) {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(int(r.sock.Fd()), msg, oob, nil, 0); err != nil {
		return reply{}, fmt.Errorf("restorer of pid %d: send: %w", r.pid, err)
	}
	buf := make([]byte, replyMax)
	n, _, _, _, err := unix.Recvmsg(int(r.sock.Fd()), buf, nil, 0)
	if err != nil {
		return reply{}, fmt.Errorf("restorer of pid %d: receive: %w", r.pid, err)
	}
	if n == 0 {
		return reply{}, fmt.Errorf("restorer of pid %d died", r.pid)
	}
	if n < 16 || (n-16)%8 != 0 {
		return reply{}, fmt.Errorf("restorer of pid %d: malformed reply of %d bytes", r.pid, n)
	}
	rp := reply{status: int64(binary.LittleEndian.Uint64(buf))}
	done := int(binary.LittleEndian.Uint32(buf[8:]))
	for i := 16; i < n; i += 8 {
		rp.vals = append(rp.vals, int64(binary.LittleEndian.Uint64(buf[i:])))
	}
	if done > len(rp.vals) {
		return reply{}, fmt.Errorf("restorer of pid %d: malformed reply", r.pid)
	}
	rp.vals = rp.vals[:max(done, len(rp.vals))]
	return rp, nil
}

func appendCall(msg []byte, c call) []byte {
	msg = binary.LittleEndian.AppendUint64(msg, uint64(c.nr))
	for _, a := range c.args {
		msg = binary.LittleEndian.AppendUint64(msg, a)
	}
	return msg
}

func header(op, count uint32, payload int) []byte {
	b := make([]byte, 8, 8+payload)
	binary.LittleEndian.PutUint32(b[0:], op)
	binary.LittleEndian.PutUint32(b[4:], count)
	return b
}

// SyscallError is a syscall the restorer ran that failed.
type SyscallError struct {
	Pid   int
	What  string
	Nr    uintptr
	Args  [6]uint64
	Errno unix.Errno
}

func (e *SyscallError) Error() string {
	return fmt.Sprintf("pid %d: %s: %v", e.Pid, e.What, e.Errno)
}

func (e *SyscallError) Unwrap() error { return e.Errno }

// run executes calls in the task, in order, stopping at the first failure.
// It returns every call's result.
func (r *restorer) run(calls ...call) ([]int64, error) {
	var out []int64
	for len(calls) > 0 {
		n := min(len(calls), maxBatch)
		batch := calls[:n]
		calls = calls[n:]
		msg := header(opSyscalls, uint32(n), n*56)
		for _, c := range batch {
			msg = appendCall(msg, c)
		}
		rp, err := r.roundTrip(msg, nil)
		if err != nil {
			return out, err
		}
		if rp.status != 0 {
			i := len(rp.vals) - 1
			if i < 0 || i >= n {
				return out, fmt.Errorf("pid %d: restorer refused a batch: %v", r.pid, unix.Errno(-rp.status))
			}
			c := batch[i]
			return out, &SyscallError{Pid: r.pid, What: c.describe(), Nr: c.nr, Args: c.args, Errno: unix.Errno(-rp.status)}
		}
		if len(rp.vals) != n {
			return out, fmt.Errorf("pid %d: restorer answered %d calls with %d results", r.pid, n, len(rp.vals))
		}
		out = append(out, rp.vals...)
	}
	return out, nil
}

// sendFds passes files into the task; it returns their numbers there
// (close-on-exec, lowest free numbers).
func (r *restorer) sendFds(files []*os.File) ([]int, error) {
	var got []int
	for len(files) > 0 {
		n := min(len(files), maxFdsBatch)
		fds := make([]int, n)
		for i, f := range files[:n] {
			fds[i] = int(f.Fd())
		}
		files = files[n:]
		rp, err := r.roundTrip(header(opRecvFds, uint32(n), 0), fds)
		if err != nil {
			return got, err
		}
		if len(rp.vals) != n {
			return got, fmt.Errorf("pid %d: restorer received %d of %d files", r.pid, len(rp.vals), n)
		}
		for _, v := range rp.vals {
			got = append(got, int(v))
		}
	}
	return got, nil
}

// setCtl moves the task's end of the control socket to fd number n.
func (r *restorer) setCtl(n int) error {
	rp, err := r.roundTrip(header(opSetCtl, uint32(n), 0), nil)
	if err != nil {
		return err
	}
	if rp.status != 0 {
		return fmt.Errorf("pid %d: move control socket to fd %d: %v", r.pid, n, unix.Errno(-rp.status))
	}
	return nil
}

// relocate makes the restorer copy itself to dst (mapped RWX) and run there
// on a stack whose top is sp.
func (r *restorer) relocate(dst, sp uint64) error {
	msg := header(opRelocate, 0, 16)
	msg = binary.LittleEndian.AppendUint64(msg, dst)
	msg = binary.LittleEndian.AppendUint64(msg, sp)
	rp, err := r.roundTrip(msg, nil)
	if err != nil {
		return err
	}
	if rp.status != 0 {
		return fmt.Errorf("pid %d: relocate restorer: %v", r.pid, unix.Errno(-rp.status))
	}
	return nil
}

// ErrPidBusy means the PID to restore is in use.
var ErrPidBusy = errors.New("pid in use")

// cloneReq is one OP_CLONE.
type cloneReq struct {
	flags      uint64
	exitSignal uint64
	tid        int    // the PID or TID the new task gets
	exitParent bool   // the helper exits once it replied
	childCtl   int    // >= 0: the new task serves this fd (already in the parent), the parent closes it
	stack      uint64 // threads: stack base and size
	stackSize  uint64
}

// pidBusyWait bounds how long clone asks again for a PID in use.
var pidBusyWait = 2 * time.Second

// clone asks the restorer to create a task with req.tid. The answer comes
// from the parent; the child serves req.childCtl (or shares the parent's
// socket when -1). A PID in use is asked for again, up to pidBusyWait: a
// process group or session keeps its leader's PID until its last member
// is reaped, and a member killed with the dumped tree may be a zombie a
// little longer (waitPidsFree sees only processes).
func (r *restorer) clone(req cloneReq) (int, error) {
	deadline := time.Now().Add(pidBusyWait)
	for pause := time.Millisecond; ; pause = min(2*pause, 20*time.Millisecond) {
		pid, err := r.cloneOnce(req)
		if err != ErrPidBusy || time.Now().After(deadline) {
			return pid, err
		}
		time.Sleep(pause)
	}
}

func (r *restorer) cloneOnce(req cloneReq) (int, error) {
	msg := header(opClone, 0, 176)
	msg = binary.LittleEndian.AppendUint64(msg, req.flags)
	msg = binary.LittleEndian.AppendUint64(msg, req.exitSignal)
	msg = binary.LittleEndian.AppendUint32(msg, 1)
	exitParent := uint32(0)
	if req.exitParent {
		exitParent = 1
	}
	msg = binary.LittleEndian.AppendUint32(msg, exitParent)
	msg = binary.LittleEndian.AppendUint32(msg, uint32(req.tid))
	msg = append(msg, make([]byte, 4*31)...)
	msg = binary.LittleEndian.AppendUint64(msg, uint64(int64(req.childCtl)))
	msg = binary.LittleEndian.AppendUint64(msg, req.stack)
	msg = binary.LittleEndian.AppendUint64(msg, req.stackSize)
	rp, err := r.roundTrip(msg, nil)
	if err != nil {
		return 0, err
	}
	if rp.status == -int64(unix.EEXIST) {
		return 0, ErrPidBusy
	}
	if rp.status != 0 {
		return 0, fmt.Errorf("clone3 pid %d: %v", req.tid, unix.Errno(-rp.status))
	}
	if len(rp.vals) != 1 || rp.vals[0] != int64(req.tid) {
		return 0, fmt.Errorf("clone3 asked for pid %d, got %v", req.tid, rp.vals)
	}
	return req.tid, nil
}

// becomeInit turns the restorer into the reaper of its PID namespace; it
// exits with the status of the task root (a pid inside the namespace).
func (r *restorer) becomeInit(root int) error {
	rp, err := r.roundTrip(header(opInit, uint32(root), 0), nil)
	if err != nil {
		return err
	}
	if rp.status != 0 {
		return fmt.Errorf("init of the pid namespace: %v", unix.Errno(-rp.status))
	}
	return nil
}
