package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/dump"
)

// chunk is the buffer the limit measurements copy through: the page frame
// size of the stream, the unit a streaming stage works in.
const chunk = 4 << 20

// warmBuf returns n bytes of memory that has been written (so no fault
// counts in a measurement).
func warmBuf(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 1)
	}
	return b
}

// pvr reads the workload's memory with process_vm_readv into one reused
// 4 MiB buffer: the bandwidth a dump stage could have at best (one thread).
func pvr(pid int, addr, n uint64) (time.Duration, error) {
	buf := warmBuf(chunk)
	t := time.Now()
	for off := uint64(0); off < n; {
		l := min(uint64(chunk), n-off)
		local := []unix.Iovec{{Base: &buf[0], Len: l}}
		remote := []unix.RemoteIovec{{Base: uintptr(addr + off), Len: int(l)}}
		got, err := unix.ProcessVMReadv(pid, local, remote, 0)
		if err != nil {
			return 0, fmt.Errorf("process_vm_readv pid %d at %#x: %v", pid, addr+off, err)
		}
		if got == 0 {
			return 0, fmt.Errorf("process_vm_readv pid %d at %#x: short read", pid, addr+off)
		}
		off += uint64(got)
	}
	return time.Since(t), nil
}

// memcpyLimit copies n bytes from a 4 MiB buffer over a warm 256 MiB one.
func memcpyLimit(n uint64) (time.Duration, error) {
	src := warmBuf(chunk)
	dst := memcpyDst()
	t := time.Now()
	for off := uint64(0); off < n; off += chunk {
		d := (off % uint64(len(dst)))
		copy(dst[d:d+chunk], src)
	}
	return time.Since(t), nil
}

var memcpyBuf []byte

// memoryBuf backs memory: written once, kept for every repetition.
var memoryBuf []byte

// memory returns n bytes of written memory in 4 KiB pages, like a
// workload's (n a multiple of chunk).
func memory(n uint64) []byte {
	if uint64(len(memoryBuf)) < n {
		if memoryBuf != nil {
			unix.Munmap(memoryBuf)
			memoryBuf = nil
		}
		m, err := unix.Mmap(-1, 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return warmBuf(chunk) // the limit then reads from the caches: the goal only gets harder
		}
		unix.Madvise(m, unix.MADV_NOHUGEPAGE)
		for i := 0; i < len(m); i += 8 {
			m[i] = byte(i>>3 | 1)
		}
		memoryBuf = m
	}
	return memoryBuf[:n]
}

func memcpyDst() []byte {
	if memcpyBuf == nil {
		memcpyBuf = warmBuf(256 << 20)
	}
	return memcpyBuf
}

// writeLimit writes n bytes from src (again and again when it is shorter)
// to a new file in dir and syncs it: what the last stage of a dump to that
// file system must do. The dump's bytes come from memory, not from the
// CPU's caches: src as large as the workload (memory) is the limit; a
// 4 MiB one, which stays in the caches, writes 10-12% faster here and is
// reported beside it (doc/performance.md, 22).
func writeLimit(dir string, n uint64, src []byte) (time.Duration, error) {
	name := filepath.Join(dir, fmt.Sprintf("crpipe-bench-%d-write", os.Getpid()))
	defer os.Remove(name)
	t := time.Now()
	f, err := os.Create(name)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	for off := uint64(0); off < n; off += chunk {
		at := off % uint64(len(src))
		if _, err := f.Write(src[at : at+min(uint64(chunk), n-off, uint64(len(src))-at)]); err != nil {
			return 0, err
		}
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return time.Since(t), nil
}

// rewarm touches and frees n bytes (and 64 MiB more), in 4 KiB or in
// transparent huge pages, just before a measurement that takes n bytes of
// fresh memory: a fill, a file written to tmpfs, a restore. This
// machine's balloon reports free 2 MiB blocks to the host (virtio-balloon
// free page reporting, page_reporting_order 9) two seconds after they are
// freed, and the host takes them back: memory allocated from them costs a
// host fault again. Huge pages came back two or three times slower
// (doc/performance.md, Method); 4 KiB pages too when the host is short of
// memory (session 16: a 1 GiB write to tmpfs took 2.3-3.6 s right after
// another GiB was allocated, 0.37-0.68 s after a rewarm). Blocks just
// freed are reused first, so the measurement that follows at once gets
// backed memory, as the warm-up meant, whichever it is: the limit or
// crpipe.
func rewarm(n uint64, huge bool) error {
	if err := touchAndFree(int64(n)+64<<20, huge); err != nil {
		return fmt.Errorf("rewarming memory: %v", err)
	}
	return nil
}

// reportingDelay: free page reporting acts 2 s after blocks are freed
// (PAGE_REPORTING_DELAY); this is a little more.
const reportingDelay = 2500 * time.Millisecond

// fill maps n fresh bytes, populates them with MADV_POPULATE_WRITE and
// copies a 4 MiB buffer over all of them: what a restore must at least do
// (huge: with MADV_HUGEPAGE first).
func fill(n uint64, huge bool) (time.Duration, error) {
	src := warmBuf(chunk)
	if err := rewarm(n, huge); err != nil {
		return 0, err
	}
	t := time.Now()
	m, err := unix.Mmap(-1, 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(m)
	if huge {
		if err := unix.Madvise(m, unix.MADV_HUGEPAGE); err != nil {
			return 0, fmt.Errorf("MADV_HUGEPAGE: %v", err)
		}
	}
	if err := unix.Madvise(m, unix.MADV_POPULATE_WRITE); err != nil {
		return 0, fmt.Errorf("MADV_POPULATE_WRITE: %v", err)
	}
	for off := 0; off < len(m); off += chunk {
		copy(m[off:], src)
	}
	return time.Since(t), nil
}

// usage is one process's rusage.
type usage struct {
	Name     string  `json:"name"`
	MaxRSSMB float64 `json:"max_rss_mb"`
	CPUSec   float64 `json:"cpu_s"`
}

// dumpStages is the pipeline as cr-dump runs it for a dump that kills:
// cr-pages --lend. Lent pages refer to the live process until read; here
// every dump's output is read to the end (a file, /dev/null) before the
// harness thaws the process for the next measurement.
var dumpStages = [][]string{
	{"cr-freeze", "--pid", "PID"},
	{"cr-seize"}, {"cr-parasite"}, {"cr-files"}, {"cr-tcp"}, {"cr-pages", "--lend"},
}

func stageNames() []string {
	var n []string
	for _, s := range dumpStages {
		n = append(n, s[0])
	}
	return n
}

// runResult is one dump.
type runResult struct {
	d          time.Duration // first start to last exit (and the file synced)
	frozen     time.Duration // from the moment the cgroup was frozen to the same end
	usage      []usage
	imageBytes int64
	err        error
}

// pipeline runs cr-freeze --pid PID | cr-seize | ... | cr-tcp > out with
// each stage a child of the harness under /usr/bin/time, as a shell would.
// compress adds --compress to the last stage; oneCPU runs every stage on
// CPU 0 (taskset).
func (h *harness) pipeline(pid int, out string, compress, oneCPU bool) runResult {
	var res runResult
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		res.err = err
		return res
	}
	defer f.Close()
	cmds := make([]*exec.Cmd, len(dumpStages))
	errs := make([]*bytes.Buffer, len(dumpStages))
	var closeAfterStart []*os.File
	var prev *os.File
	for i, s := range dumpStages {
		args := append([]string(nil), s[1:]...)
		for j, a := range args {
			if a == "PID" {
				args[j] = strconv.Itoa(pid)
			}
		}
		if compress && i == len(dumpStages)-1 {
			args = append(args, "--compress")
		}
		c := timed(s[0], args...)
		c.Env = dump.StageEnv(s[0], os.Environ())
		if oneCPU {
			c = exec.Command("taskset", append([]string{"-c", "0"}, c.Args...)...)
		}
		errs[i] = &bytes.Buffer{}
		c.Stderr = errs[i]
		if prev != nil {
			c.Stdin = prev
			closeAfterStart = append(closeAfterStart, prev)
		}
		if i == len(dumpStages)-1 {
			c.Stdout = f
		} else {
			r, w, err := os.Pipe()
			if err != nil {
				res.err = err
				return res
			}
			c.Stdout = w
			closeAfterStart = append(closeAfterStart, w)
			prev = r
		}
		cmds[i] = c
	}
	var frozenAt atomic.Int64
	stop := make(chan struct{})
	probeDone := make(chan struct{})
	go h.watchFrozen(pid, &frozenAt, nil, stop, probeDone)
	t := time.Now()
	for i, c := range cmds {
		if err := c.Start(); err != nil {
			for _, s := range cmds[:i] {
				s.Process.Kill()
				s.Wait()
			}
			close(stop)
			<-probeDone
			res.err = err
			return res
		}
	}
	for _, f := range closeAfterStart {
		f.Close()
	}
	for i, c := range cmds {
		err := c.Wait()
		if err != nil && res.err == nil {
			res.err = fmt.Errorf("%s: %v: %s", dumpStages[i][0], err, strings.TrimSpace(errs[i].String()))
		}
		u, uerr := timeUsage(dumpStages[i][0], c)
		if uerr != nil && res.err == nil {
			res.err = uerr
		}
		res.usage = append(res.usage, u)
	}
	if res.err == nil && out != os.DevNull {
		res.err = f.Sync()
	}
	end := time.Now()
	close(stop)
	<-probeDone
	res.d = end.Sub(t)
	if fa := frozenAt.Load(); fa != 0 {
		res.frozen = end.Sub(time.Unix(0, fa))
	}
	if st, err := f.Stat(); err == nil {
		res.imageBytes = st.Size()
	}
	return res
}

// watchFrozen polls the transient cgroup's cgroup.events and records when
// it first says frozen (at) and, given thawedAt, when the cgroup is gone
// after that: after the thaw and the moves back out of it. (Not the last
// "frozen 0": the stages thaw the cgroup for moments while their ptrace
// stops hold the tasks, and a look every millisecond can miss the last
// freeze before the thaw.)
func (h *harness) watchFrozen(pid int, at, thawedAt *atomic.Int64, stop, done chan struct{}) {
	defer close(done)
	events := filepath.Join(h.cgroup2, fmt.Sprintf("crpipe-%d", pid), "cgroup.events")
	buf := make([]byte, 256)
	for {
		select {
		case <-stop:
			return
		default:
		}
		fd, err := unix.Open(events, unix.O_RDONLY, 0)
		switch {
		case err == nil:
			n, _ := unix.Read(fd, buf)
			unix.Close(fd)
			if at.Load() == 0 && n > 0 && bytes.Contains(buf[:n], []byte("frozen 1")) {
				at.Store(time.Now().UnixNano())
				if thawedAt == nil {
					return
				}
			}
		case at.Load() != 0 && thawedAt != nil:
			thawedAt.Store(time.Now().UnixNano())
			return
		}
		if at.Load() == 0 {
			time.Sleep(200 * time.Microsecond)
		} else {
			time.Sleep(time.Millisecond) // a lighter look while the dump runs
		}
	}
}

// porcelain runs cr-dump --leave-running -o out under /usr/bin/time: its
// time, CPU and peak RSS (the stages all run in its process).
func (h *harness) porcelain(pid int, out string) runResult { return h.porcelainOn(-1, pid, out) }

// porcelainOn is porcelain with cr-dump on CPU cpu alone (-1: anywhere).
func (h *harness) porcelainOn(cpu, pid int, out string) runResult {
	var res runResult
	var stderr bytes.Buffer
	c := timed("cr-dump", "-t", strconv.Itoa(pid), "--leave-running", "-o", out)
	if cpu >= 0 {
		c.Args = append([]string{"taskset", "-c", strconv.Itoa(cpu)}, c.Args...)
		if c.Path, res.err = exec.LookPath("taskset"); res.err != nil {
			return res
		}
	}
	c.Stderr = &stderr
	t := time.Now()
	err := c.Run()
	res.d = time.Since(t)
	if err != nil {
		res.err = fmt.Errorf("cr-dump: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	u, uerr := timeUsage("cr-dump", c)
	if uerr != nil && res.err == nil {
		res.err = uerr
	}
	res.usage = []usage{u}
	return res
}

// snapshot takes a snapshot as a user would, cr-dump --leave-running into
// a tmpfs file (the processes lend their pages: lib/dump lendSafe), and
// times it whole and from the freeze to the transient cgroup's removal
// (runResult.frozen: the pause, with the moves back after the thaw).
func (h *harness) snapshot(pid int) runResult {
	var res runResult
	out := filepath.Join(h.tmp, fmt.Sprintf("crpipe-bench-%d-snapshot.img", os.Getpid()))
	defer os.Remove(out)
	var frozenAt, thawedAt atomic.Int64
	stop, done := make(chan struct{}), make(chan struct{})
	go h.watchFrozen(pid, &frozenAt, &thawedAt, stop, done)
	t := time.Now()
	res.err = runQuiet("cr-dump", "-t", strconv.Itoa(pid), "--leave-running", "-o", out)
	res.d = time.Since(t)
	close(stop)
	<-done
	if f, th := frozenAt.Load(), thawedAt.Load(); f != 0 && th > f {
		res.frozen = time.Duration(th - f)
	}
	if fi, err := os.Stat(out); err == nil {
		res.imageBytes = fi.Size()
	}
	return res
}

// timeFile is where /usr/bin/time writes a stage's figures.
func timeFile(name string) string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("crpipe-bench-%d-%s.time", os.Getpid(), name))
}

// timed is exec.Command(name, args...) under /usr/bin/time.
func timed(name string, args ...string) *exec.Cmd {
	return exec.Command("/usr/bin/time", append([]string{"-f", "%M %U %S", "-o", timeFile(name), name}, args...)...)
}

// timeUsage reads what /usr/bin/time reported for a finished command.
func timeUsage(name string, c *exec.Cmd) (usage, error) {
	u := usage{Name: name}
	f := timeFile(name)
	defer os.Remove(f)
	b, err := os.ReadFile(f)
	if err != nil {
		return u, err
	}
	// A failed command makes time write "Command exited with ..." first.
	ls := strings.Split(strings.TrimSpace(string(b)), "\n")
	var kb, user, sys float64
	if _, err := fmt.Sscanf(ls[len(ls)-1], "%f %f %f", &kb, &user, &sys); err != nil {
		return u, fmt.Errorf("%s: /usr/bin/time said %q", name, b)
	}
	u.MaxRSSMB, u.CPUSec = kb/1024, user+sys
	return u, nil
}

func restore(img string) (time.Duration, usage, error) {
	var stderr bytes.Buffer
	c := timed("cr-restore", "-d", "-i", img)
	c.Stderr = &stderr
	c.WaitDelay = 10 * time.Second
	t := time.Now()
	err := c.Run()
	d := time.Since(t)
	if err != nil {
		err = fmt.Errorf("cr-restore: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	u, uerr := timeUsage("cr-restore", c)
	if err == nil {
		err = uerr
	}
	return d, u, err
}

func execOutput(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).Output()
}
