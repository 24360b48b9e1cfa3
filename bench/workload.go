package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// workload is one row of the table.
type workload struct {
	Name      string
	Args      []string // benchload's mode and arguments
	Bytes     int64    // memory a dump copies (for GB/s)
	Limits    bool     // measure the machine's limits on this memory too
	Fresh     bool     // its dump → tmpfs and restore take its size of fresh memory (rewarm first)
	ThpLimit  bool     // and the fill limit with transparent huge pages
	Huge      bool     // the process's memory is transparent huge pages
	Compress  bool     // also dump with --compress
	Porcelain bool     // also cr-dump --leave-running
	Tiny      bool     // the tiny counter: latency of dump + restore
	OwnCgroup bool     // started alone in a cgroup, as a container or service, frozen there (--cgroup)
	OneCPU    bool     // also dumped → /dev/null with the workload and every stage on one CPU
	VerifyAll bool     // check the restored memory every repetition (else the first only)
}

func workloads(quick bool) []*workload {
	var ws []*workload
	for _, mb := range []int64{1024, 4096} {
		if quick && mb > 1024 {
			continue
		}
		for _, kind := range []string{"random", "compressible", "zero"} {
			ws = append(ws, &workload{
				Name:      fmt.Sprintf("%d GiB %s", mb>>10, kind),
				Args:      []string{"procs", "1", strconv.FormatInt(mb, 10), kind},
				Bytes:     mb << 20,
				Limits:    true,
				Fresh:     kind != "zero",
				ThpLimit:  mb == 1024 && kind == "random",
				Compress:  mb == 1024 && kind != "zero" || mb == 4096 && kind == "compressible",
				Porcelain: kind == "random",
				VerifyAll: mb == 1024,
			})
		}
	}
	ws = append(ws,
		&workload{Name: "1 GiB random, THP", Args: []string{"procs", "1", "1024", "random-thp"}, Bytes: 1 << 30, Limits: true, ThpLimit: true, Huge: true, VerifyAll: true},
		&workload{Name: "64 processes × 16 MiB random", Args: []string{"procs", "64", "16", "random"}, Bytes: 64 << 24, VerifyAll: true, OneCPU: true, Porcelain: true},
		&workload{Name: "10,000 mappings of 4 KiB", Args: []string{"maps", "10000"}, Bytes: 10000 * 4096, VerifyAll: true},
		&workload{Name: "100-process tree (1 MiB each)", Args: []string{"procs", "100", "1", "random"}, Bytes: 100 << 20, VerifyAll: true},
		&workload{Name: "500 threads (16 MiB)", Args: []string{"threads", "500", "16", "random"}, Bytes: 16 << 20, VerifyAll: true},
		&workload{Name: "tiny counter", Tiny: true, VerifyAll: true},
		&workload{Name: "tiny counter in a cgroup of its own", Tiny: true, OwnCgroup: true, VerifyAll: true},
	)
	return ws
}

// Names of the measurements (rows of a workload).
const (
	mPVR       = "limit: process_vm_readv → 4 MiB buffer"
	mMemcpy    = "limit: memcpy"
	mWrite     = "limit: write to tmpfs"
	mWriteHot  = "limit: write to tmpfs from a 4 MiB buffer"
	mFill      = "limit: fill fresh memory (populate + memcpy)"
	mFillHuge  = "limit: fill fresh THP memory (MADV_HUGEPAGE, populate + memcpy)"
	mDumpNull  = "dump → /dev/null"
	mDumpOne   = "dump → /dev/null on one CPU"
	mDumpComp  = "dump --compress → tmpfs"
	mDumpPorc  = "cr-dump --leave-running → /dev/null"
	mPorcOne   = "cr-dump --leave-running → /dev/null on one CPU"
	mSnapshot  = "cr-dump --leave-running → tmpfs"
	mDumpFile  = "dump → tmpfs"
	mRestore   = "restore ← tmpfs"
	mTinyDump  = "tiny: dump → tmpfs"
	mTinyRest  = "tiny: restore ← tmpfs"
	mTinyTotal = "tiny: dump + restore"
)

type harness struct {
	bin     string
	tmp     string
	cgroup2 string
}

// proc is a started workload.
type proc struct {
	cmd       *exec.Cmd
	pid       int
	addr, len uint64
	verdict   string
	dir       string
	done      chan struct{}
	pids      []int  // the tree, root first, once ready
	fds       []int  // pidfds of pids[1:]
	gone      bool   // killed and reaped
	cgroup    string // its own cgroup (OwnCgroup), made for it, removed by kill
}

func (h *harness) start(w *workload) (*proc, error) {
	dir, err := os.MkdirTemp("", "crpipe-bench-")
	if err != nil {
		return nil, err
	}
	ready := filepath.Join(dir, "ready")
	p := &proc{verdict: filepath.Join(dir, "verdict"), dir: dir, done: make(chan struct{})}
	if w.Tiny {
		mapfile := filepath.Join(dir, "mapfile")
		if err := os.WriteFile(mapfile, bytes.Repeat([]byte("crpipe.."), 2048), 0o644); err != nil {
			return nil, err
		}
		p.cmd = exec.Command(filepath.Join(h.bin, "test", "counter"), ready, p.verdict, mapfile)
	} else {
		p.cmd = exec.Command(filepath.Join(h.bin, "test", "benchload"), append([]string{ready, p.verdict}, w.Args...)...)
	}
	if w.OwnCgroup {
		cg, err := h.ownCgroup(p.cmd)
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		defer cg.Close()
		p.cgroup = cg.Name()
	}
	if err := p.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		p.removeCgroup()
		return nil, err
	}
	p.pid = p.cmd.Process.Pid
	go func() { p.cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		b, err := os.ReadFile(ready)
		if err == nil && len(b) > 0 {
			if !w.Tiny {
				if _, err := fmt.Sscanf(string(b), "%x %d", &p.addr, &p.len); err != nil {
					p.fds = pidfds(treePids(p.pid)[1:])
					p.kill()
					return nil, fmt.Errorf("ready file %q: %v", b, err)
				}
			} else if strings.TrimSpace(string(b)) == "0" {
				b = nil // the counter has not ticked yet
			}
			if b != nil {
				break
			}
		}
		select {
		case <-p.done:
			p.gone = true
			os.RemoveAll(dir)
			p.removeCgroup()
			return nil, fmt.Errorf("%s exited: %v", w.Name, p.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			p.fds = pidfds(treePids(p.pid)[1:])
			p.kill()
			return nil, errors.New("not ready after 3 minutes")
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.pids = treePids(p.pid)
	p.fds = pidfds(p.pids[1:])
	return p, nil
}

// treePids lists pid and its descendants.
func treePids(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", out[i]))
		for _, t := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", out[i], t.Name()))
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil {
					out = append(out, c)
				}
			}
		}
	}
	return out
}

// kill kills the started tree (if it still runs) and reaps it: the root is
// our child, its children are reparented to us (subreaper).
func (p *proc) kill() {
	if !p.gone {
		p.cmd.Process.Kill()
		<-p.done
		p.reapOthers()
	}
	os.RemoveAll(p.dir)
	p.removeCgroup()
}

// ownCgroup makes a cgroup for the workload cmd starts, which starts in it.
func (h *harness) ownCgroup(cmd *exec.Cmd) (*os.File, error) {
	dir := filepath.Join(h.cgroup2, fmt.Sprintf("crpipe-bench-%d-own", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	cg, err := os.Open(dir)
	if err != nil {
		os.Remove(dir)
		return nil, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	return cg, nil
}

// removeCgroup removes the workload's own cgroup (none: nothing) once what
// ran in it (the workload, its restored copy) is killed: it may take a
// moment to leave.
func (p *proc) removeCgroup() {
	if p.cgroup == "" {
		return
	}
	for i := 0; i < 200; i++ {
		if err := os.Remove(p.cgroup); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "bench: cannot remove %s\n", p.cgroup)
}

// reapOthers kills and reaps the root's descendants (reparented to us).
func (p *proc) reapOthers() {
	killAndReap(p.fds, 10*time.Second)
	p.fds = nil
	p.gone = true
}

// pidfds opens a pidfd for each pid: signals and waits through them never
// reach a process that took a PID over after ours exited.
func pidfds(pids []int) []int {
	fds := make([]int, 0, len(pids))
	for _, pid := range pids {
		if fd, err := unix.PidfdOpen(pid, 0); err == nil {
			fds = append(fds, fd)
		}
	}
	return fds
}

// killAndReap kills the processes behind fds, reaps those that are our
// children (or were reparented to us) and waits for the others to exit,
// then closes the fds.
func killAndReap(fds []int, limit time.Duration) {
	for _, fd := range fds {
		unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
	}
	deadline := time.Now().Add(limit)
	for _, fd := range fds {
		for time.Now().Before(deadline) {
			var info unix.Siginfo
			err := unix.Waitid(unix.P_PIDFD, fd, &info, unix.WEXITED|unix.WNOHANG, nil)
			if err == unix.ECHILD {
				// Not our child (any more): readable once it has exited.
				pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				if n, _ := unix.Poll(pfd, 1); n > 0 {
					break
				}
				continue
			}
			if err == nil && info.Signo == 0 {
				time.Sleep(time.Millisecond) // still running
				continue
			}
			if err == unix.EINTR {
				continue
			}
			break
		}
		unix.Close(fd)
	}
}

// restored is a tree that cr-restore -d left running: its root was
// reparented to the harness.
type restored struct {
	root    int
	fds     []int
	verdict string
}

func newRestored(pids []int, verdict string) *restored {
	return &restored{root: pids[0], fds: pidfds(pids), verdict: verdict}
}

// check sends SIGTERM to the restored root and reads its verdict.
func (r *restored) check(limit time.Duration) error {
	if len(r.fds) == 0 {
		return fmt.Errorf("restored pid %d is not there", r.root)
	}
	if err := unix.PidfdSendSignal(r.fds[0], unix.SIGTERM, nil, 0); err != nil {
		return fmt.Errorf("restored pid %d: %v", r.root, err)
	}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(r.verdict)
		if err == nil && len(b) > 0 {
			if !bytes.HasPrefix(b, []byte("PASS")) {
				return fmt.Errorf("restored workload says %q", strings.TrimSpace(string(b)))
			}
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("no verdict from restored pid %d after %v", r.root, limit)
}

func (r *restored) kill() { killAndReap(r.fds, 10*time.Second) }

// measure runs one repetition of a workload.
func (h *harness) measure(w *workload, res *wresult, rep int) error {
	if w.Tiny {
		return h.measureTiny(w, res, rep)
	}
	p, err := h.start(w)
	if err != nil {
		return err
	}
	defer p.kill()
	pidArg := strconv.Itoa(p.pid)
	// The dump → /dev/null reads what process_vm_readv reads and allocates
	// nothing: it runs right after it, before the limits below allocate and
	// free the workload's size again and again. Memory freed here is taken
	// back by the host for seconds after (free page reporting, then the
	// host's own work), which slowed whatever read memory then by a third
	// and more (doc/performance.md, Method).
	if w.Limits {
		d, err := pvr(p.pid, p.addr, p.len)
		res.record(mPVR, d, err)
	}
	// cr-dump, which runs the stages in its own process, and the bare
	// pipeline, in turns: the first dump of a freshly filled workload
	// is the slower (doc/performance.md, Not there yet).
	dumps := []func() error{func() error {
		run := h.pipeline(p.pid, os.DevNull, false, false)
		res.recordRun(mDumpNull, run)
		if err := runQuiet("cr-freeze", "thaw", "--pid", pidArg); err != nil {
			return fmt.Errorf("thaw: %v", err)
		}
		return nil
	}}
	if w.Porcelain {
		// Into /dev/null, left running, the processes lend their pages
		// as in a dump that kills them (lib/dump lendSafe).
		porcelain := func() error {
			res.recordRun(mDumpPorc, h.porcelain(p.pid, os.DevNull))
			return nil
		}
		dumps = append(dumps, porcelain)
		if rep%2 == 1 {
			dumps[0], dumps[1] = dumps[1], dumps[0]
		}
	}
	for _, dump := range dumps {
		if err := dump(); err != nil {
			return err
		}
	}
	if w.OneCPU {
		if err := h.dumpOnOneCPU(p, res, w.Porcelain); err != nil {
			return err
		}
	}
	if w.Limits {
		d, err := memcpyLimit(p.len)
		res.record(mMemcpy, d, err)
		d, err = fill(p.len, false)
		res.record(mFill, d, err)
		if w.ThpLimit {
			d, err = fill(p.len, true)
			res.record(mFillHuge, d, err)
		}
	}
	if w.Compress {
		if w.Fresh {
			if err := rewarm(p.len, false); err != nil {
				return err
			}
		}
		img := filepath.Join(h.tmp, fmt.Sprintf("crpipe-bench-%d-lz4.img", os.Getpid()))
		run := h.pipeline(p.pid, img, true, false)
		res.recordRun(mDumpComp, run)
		os.Remove(img)
		if err := runQuiet("cr-freeze", "thaw", "--pid", pidArg); err != nil {
			return fmt.Errorf("thaw: %v", err)
		}
	}
	if w.Porcelain {
		if w.Fresh {
			if err := rewarm(p.len, false); err != nil {
				return err
			}
		}
		res.recordRun(mSnapshot, h.snapshot(p.pid))
	}

	img := filepath.Join(h.tmp, fmt.Sprintf("crpipe-bench-%d.img", os.Getpid()))
	defer os.Remove(img)
	dumpToFile := func() error {
		if w.Fresh {
			if err := rewarm(p.len, false); err != nil {
				return err
			}
		}
		run := h.pipeline(p.pid, img, false, false)
		res.recordRun(mDumpFile, run)
		return run.err
	}
	writeLimits := func() error {
		limits := []struct {
			name string
			src  []byte
		}{
			{mWrite, memory(p.len)}, // before the rewarm: it is kept
			{mWriteHot, warmBuf(chunk)},
		}
		for _, l := range limits {
			if err := rewarm(p.len, false); err != nil {
				return err
			}
			d, err := writeLimit(h.tmp, p.len, l.src)
			res.record(l.name, d, err)
		}
		return nil
	}
	// The write limits and the dump → tmpfs next to each other, taking
	// turns at going first: each follows the other's frees as often.
	steps := []func() error{dumpToFile}
	if w.Limits {
		steps = []func() error{writeLimits, dumpToFile}
		if rep%2 == 0 {
			steps[0], steps[1] = steps[1], steps[0]
		}
	}
	for _, step := range steps {
		if err := step(); err != nil {
			runQuiet("cr-freeze", "thaw", "--pid", pidArg)
			return err
		}
	}
	if err := runQuiet("cr-freeze", "kill", "--pid", pidArg); err != nil {
		return fmt.Errorf("kill: %v", err)
	}
	<-p.done
	p.reapOthers()

	if w.Huge {
		// Let the balloon report the blocks the kill freed first, so that
		// it does not take back the rewarmed ones during the restore.
		time.Sleep(reportingDelay)
		if err := rewarm(p.len, true); err != nil {
			return err
		}
	} else if w.Fresh {
		if err := rewarm(p.len, false); err != nil {
			return err
		}
	}
	d, us, err := restore(img)
	res.record(mRestore, d, err)
	if err != nil {
		return err
	}
	res.addUsage(mRestore, []usage{us})
	r := newRestored(p.pids, p.verdict)
	defer r.kill()
	if w.VerifyAll || rep == 1 {
		if err := r.check(2 * time.Minute); err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("repetition %d: %v", rep, err))
		} else {
			res.Verified++
		}
	}
	return nil
}

// measureTiny: the latency a user sees for the smallest process: cr-dump,
// which kills it once the image is written, and cr-restore.
func (h *harness) measureTiny(w *workload, res *wresult, rep int) error {
	p, err := h.start(w)
	if err != nil {
		return err
	}
	defer p.kill() // after the restored copy's, which runs in its cgroup too
	img := filepath.Join(h.tmp, fmt.Sprintf("crpipe-bench-%d-tiny.img", os.Getpid()))
	defer os.Remove(img)
	dumpArgs, restoreArgs := []string{"-t", strconv.Itoa(p.pid), "-o", img}, []string{"-d", "-i", img}
	if p.cgroup != "" {
		dumpArgs, restoreArgs = append(dumpArgs, "--cgroup", p.cgroup), append(restoreArgs, "--cgroup", p.cgroup)
	}
	t0 := time.Now()
	err = runQuiet("cr-dump", dumpArgs...)
	dump := time.Since(t0)
	res.record(mTinyDump, dump, err)
	if err != nil {
		return err
	}
	<-p.done
	p.reapOthers()
	t1 := time.Now()
	err = runQuiet("cr-restore", restoreArgs...)
	rest := time.Since(t1)
	res.record(mTinyRest, rest, err)
	if err != nil {
		return err
	}
	res.record(mTinyTotal, dump+rest, nil)
	r := newRestored(p.pids, p.verdict)
	defer r.kill()
	if err := r.check(10 * time.Second); err != nil {
		res.Errors = append(res.Errors, fmt.Sprintf("repetition %d: %v", rep, err))
	} else {
		res.Verified++
	}
	return nil
}

func runQuiet(name string, args ...string) error {
	var stderr bytes.Buffer
	c := exec.Command(name, args...)
	c.Stderr = &stderr
	c.WaitDelay = 10 * time.Second
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

var _ = syscall.SIGKILL

// dumpOnOneCPU dumps p → /dev/null with its every thread and every stage
// on CPU 0: against the same dump on all CPUs, how the dump scales with
// cores. p's threads get their own CPUs back after (the thaw follows).
// With porcelain, cr-dump's own dump is measured so too (taskset: its Go
// runtime then runs one P, as on a machine of one CPU).
func (h *harness) dumpOnOneCPU(p *proc, res *wresult, porcelain bool) error {
	back, err := pinTree(p.pids, 0)
	if err != nil {
		return err
	}
	run := h.pipeline(p.pid, os.DevNull, false, true)
	res.recordRun(mDumpOne, run)
	err = runQuiet("cr-freeze", "thaw", "--pid", strconv.Itoa(p.pid))
	if err != nil {
		err = fmt.Errorf("thaw: %v", err)
	} else if porcelain {
		res.recordRun(mPorcOne, h.porcelainOn(0, p.pid, os.DevNull))
	}
	return errors.Join(err, back())
}

// pinTree puts every thread of pids on cpu alone; back gives each the
// CPUs it had.
func pinTree(pids []int, cpu int) (back func() error, err error) {
	had := map[int]unix.CPUSet{}
	back = func() error {
		var errs []error
		for tid, set := range had {
			if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
				errs = append(errs, fmt.Errorf("tid %d: sched_setaffinity: %v", tid, err))
			}
		}
		return errors.Join(errs...)
	}
	var one unix.CPUSet
	one.Set(cpu)
	for _, pid := range pids {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return nil, errors.Join(err, back())
		}
		for _, t := range tasks {
			tid, _ := strconv.Atoi(t.Name())
			var set unix.CPUSet
			if err := unix.SchedGetaffinity(tid, &set); err != nil {
				return nil, errors.Join(fmt.Errorf("tid %d: sched_getaffinity: %v", tid, err), back())
			}
			had[tid] = set
			if err := unix.SchedSetaffinity(tid, &one); err != nil {
				return nil, errors.Join(fmt.Errorf("tid %d: sched_setaffinity: %v", tid, err), back())
			}
		}
	}
	return back, nil
}
