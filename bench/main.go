// Command bench (make bench) measures how fast crpipe dumps and restores a
// process with touched anonymous memory, beside the limits of the machine
// measured in the same run: process_vm_readv of the same memory, and
// filling fresh memory (MADV_POPULATE_WRITE, then memcpy).
//
// These machines are VMs whose host backs guest memory lazily, so the run
// first touches and frees more memory than the workload needs, then repeats
// every measurement (crpipe's and the limits) -reps times, interleaved, and
// reports the minimum and the median. It prints a markdown table and writes
// the figures as JSON under bench/results/.
//
// Each dump stage is started by the harness itself, connected by pipes as a
// shell would, under /usr/bin/time, which reports the stage's own peak RSS
// and CPU time. (The harness's own wait4 rusage would not do: Go starts
// children with CLONE_VM, and exec folds the parent's peak RSS into the
// child's ru_maxrss.)
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

var (
	binFlag  = flag.String("bin", "bin", "directory of the built commands (and test/bigmem)")
	mbFlag   = flag.Int("mb", 1024, "MiB of touched anonymous memory in the workload")
	repsFlag = flag.Int("reps", 3, "repetitions of every measurement (interleaved)")
	kindFlag = flag.String("kind", "random", "workload memory: random, compressible or zero")
	tmpFlag  = flag.String("tmpfs", "/dev/shm", "tmpfs directory for the image file")
	outFlag  = flag.String("out", "bench/results", "directory for the JSON results")
)

// chunk is the buffer the limit measurements copy through: the page frame
// size of the stream, the unit a streaming stage works in.
const chunk = 4 << 20

// rssLimitMB is the most any stage may hold, whatever the image size
// (issue 3): stages stream, never hold the image.
const rssLimitMB = 64

var dumpStages = [][]string{
	{"cr-freeze", "--pid", "PID"},
	{"cr-seize"}, {"cr-parasite"}, {"cr-pages"}, {"cr-files"}, {"cr-tcp"},
}

// usage is one process's rusage.
type usage struct {
	Name     string  `json:"name"`
	MaxRSSMB float64 `json:"max_rss_mb"`
	CPUSec   float64 `json:"cpu_s"`
}

// measurement is one row of the table: a duration per repetition.
type measurement struct {
	Name    string             `json:"name"`
	Seconds []float64          `json:"seconds"`
	Min     float64            `json:"min_s"`
	Median  float64            `json:"median_s"`
	GBpsMax float64            `json:"gbps_best"`
	GBpsMed float64            `json:"gbps_median"`
	Usage   map[string][]usage `json:"usage,omitempty"` // per stage, per repetition
	Errors  []string           `json:"errors,omitempty"`
}

type report struct {
	Time      string         `json:"time"`
	Host      string         `json:"host"`
	Kernel    string         `json:"kernel"`
	CPUs      int            `json:"cpus"`
	Bytes     int64          `json:"bytes"`
	Kind      string         `json:"kind"`
	Reps      int            `json:"reps"`
	WarmupMB  int            `json:"warmup_mb"`
	WarmupSec float64        `json:"warmup_s"`
	Results   []*measurement `json:"results"`
	Missing   []string       `json:"missing,omitempty"`
}

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: error: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (it freezes, ptraces and restores a process)")
	}
	bin, err := filepath.Abs(*binFlag)
	if err != nil {
		return err
	}
	if _, err := os.Stat("/usr/bin/time"); err != nil {
		return errors.New("/usr/bin/time is missing (apt-get install time; make bench does)")
	}
	bigmem := filepath.Join(bin, "test", "bigmem")
	if _, err := os.Stat(bigmem); err != nil {
		return fmt.Errorf("%s: %v (make builds it; needs gcc)", bigmem, err)
	}
	os.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	have := func(names ...string) bool {
		for _, n := range names {
			if _, err := os.Stat(filepath.Join(bin, n)); err != nil {
				return false
			}
		}
		return true
	}
	var u unix.Utsname
	unix.Uname(&u)
	host, _ := os.Hostname()
	size := int64(*mbFlag) << 20
	rep := &report{
		Time:   time.Now().UTC().Format(time.RFC3339),
		Host:   host,
		Kernel: unix.ByteSliceToString(u.Release[:]),
		CPUs:   runtime.NumCPU(),
		Bytes:  size,
		Kind:   *kindFlag,
		Reps:   *repsFlag,
	}
	stageNames := []string{}
	for _, s := range dumpStages {
		stageNames = append(stageNames, s[0])
	}
	canDump := have(stageNames...)
	canRestore := canDump && have("cr-restore")
	canPorcelain := canDump && have("cr-dump")
	for _, n := range append(stageNames, "cr-dump", "cr-restore") {
		if !have(n) {
			rep.Missing = append(rep.Missing, n)
		}
	}

	// Warm up: the workload, the image on tmpfs, the restored copy and the
	// fill measurement, plus a margin.
	warm := 3**mbFlag + 512
	if avail := memAvailableMB(); avail > 0 && warm > avail*6/10 {
		warm = avail * 6 / 10
	}
	fmt.Fprintf(os.Stderr, "bench: warming up %d MiB of memory...\n", warm)
	t0 := time.Now()
	if err := touchAndFree(int64(warm) << 20); err != nil {
		return fmt.Errorf("warm-up: %v", err)
	}
	rep.WarmupMB, rep.WarmupSec = warm, time.Since(t0).Seconds()

	m := map[string]*measurement{}
	order := []string{}
	get := func(name string) *measurement {
		if m[name] == nil {
			m[name] = &measurement{Name: name, Usage: map[string][]usage{}}
			order = append(order, name)
		}
		return m[name]
	}
	const (
		mPVR      = "process_vm_readv → 4 MiB buffer (limit)"
		mFill     = "fill fresh memory: populate + memcpy (limit)"
		mDumpNull = "dump → /dev/null (explicit pipeline)"
		mDumpPorc = "cr-dump --leave-running → /dev/null"
		mDumpFile = "dump → tmpfs file (explicit pipeline)"
		mRestore  = "restore ← tmpfs file (cr-restore -d)"
	)
	imgPath := filepath.Join(*tmpFlag, fmt.Sprintf("crpipe-bench-%d.img", os.Getpid()))
	defer os.Remove(imgPath)

	for r := 1; r <= *repsFlag; r++ {
		fmt.Fprintf(os.Stderr, "bench: repetition %d of %d\n", r, *repsFlag)
		w, err := startWorkload(bigmem, *mbFlag, *kindFlag)
		if err != nil {
			return err
		}
		killed := false
		cleanup := func() {
			if !killed {
				w.cmd.Process.Kill()
				<-w.done
			}
		}

		d, err := pvr(w.pid, w.addr, w.len)
		record(get(mPVR), d, err)
		d, err = fill(w.len)
		record(get(mFill), d, err)

		if canDump {
			d, us, err := pipeline(w.pid, os.DevNull)
			x := get(mDumpNull)
			record(x, d, err)
			addUsage(x, us)
			if terr := runQuiet("cr-freeze", "thaw", "--pid", strconv.Itoa(w.pid)); terr != nil && err == nil {
				x.Errors = append(x.Errors, "thaw: "+terr.Error())
			}
		}
		if canPorcelain {
			t := time.Now()
			err := runQuiet("sh", "-c", fmt.Sprintf("cr-dump -t %d --leave-running > /dev/null", w.pid))
			record(get(mDumpPorc), time.Since(t), err)
		}
		if canDump {
			d, us, err := pipeline(w.pid, imgPath)
			x := get(mDumpFile)
			record(x, d, err)
			addUsage(x, us)
			if err == nil {
				if kerr := runQuiet("cr-freeze", "kill", "--pid", strconv.Itoa(w.pid)); kerr != nil {
					x.Errors = append(x.Errors, "kill: "+kerr.Error())
				} else {
					<-w.done
					killed = true
				}
			} else {
				runQuiet("cr-freeze", "thaw", "--pid", strconv.Itoa(w.pid))
			}
			if canRestore && killed {
				d, us, err := restore(imgPath)
				x := get(mRestore)
				record(x, d, err)
				addUsage(x, []usage{us})
				if err == nil {
					killRestored(w.pid)
				}
			}
			os.Remove(imgPath)
		}
		cleanup()
	}

	for _, name := range order {
		summarize(m[name], size)
		rep.Results = append(rep.Results, m[name])
	}
	printTable(os.Stdout, rep)
	return writeJSON(rep)
}

func record(x *measurement, d time.Duration, err error) {
	if err != nil {
		x.Errors = append(x.Errors, err.Error())
		return
	}
	x.Seconds = append(x.Seconds, d.Seconds())
}

func addUsage(x *measurement, us []usage) {
	for _, u := range us {
		x.Usage[u.Name] = append(x.Usage[u.Name], u)
	}
}

func summarize(x *measurement, size int64) {
	if len(x.Seconds) == 0 {
		return
	}
	s := append([]float64(nil), x.Seconds...)
	sort.Float64s(s)
	x.Min = s[0]
	if len(s)%2 == 1 {
		x.Median = s[len(s)/2]
	} else {
		x.Median = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	x.GBpsMax = float64(size) / x.Min / 1e9
	x.GBpsMed = float64(size) / x.Median / 1e9
}

func printTable(w io.Writer, rep *report) {
	fmt.Fprintf(w, "\n### crpipe bench: %d MiB %s anonymous memory, %d repetitions (%s, kernel %s, %d CPUs)\n\n",
		rep.Bytes>>20, rep.Kind, rep.Reps, rep.Host, rep.Kernel, rep.CPUs)
	fmt.Fprintf(w, "Warm-up: touched and freed %d MiB in %.2f s.\n\n", rep.WarmupMB, rep.WarmupSec)
	fmt.Fprintln(w, "| measurement | min s | median s | GB/s (best) | GB/s (median) |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|")
	for _, x := range rep.Results {
		if len(x.Seconds) == 0 {
			fmt.Fprintf(w, "| %s | failed | | | |\n", x.Name)
			continue
		}
		fmt.Fprintf(w, "| %s | %.3f | %.3f | %.2f | %.2f |\n", x.Name, x.Min, x.Median, x.GBpsMax, x.GBpsMed)
	}
	var pv *measurement
	for _, x := range rep.Results {
		if strings.HasPrefix(x.Name, "process_vm_readv") {
			pv = x
		}
	}
	for _, x := range rep.Results {
		if pv != nil && pv.Min > 0 && x.Min > 0 && strings.HasPrefix(x.Name, "dump") {
			fmt.Fprintf(w, "\n%s: %.0f%% of process_vm_readv bandwidth (best against best)", x.Name, 100*pv.Min/x.Min)
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "\n| stage | in | peak RSS MB (max) | CPU s (median) |")
	fmt.Fprintln(w, "|---|---|---:|---:|")
	for _, x := range rep.Results {
		names := make([]string, 0, len(x.Usage))
		for n := range x.Usage {
			names = append(names, n)
		}
		sort.SliceStable(names, func(i, j int) bool { return stageIndex(names[i]) < stageIndex(names[j]) })
		for _, n := range names {
			us := x.Usage[n]
			var rss float64
			cpu := make([]float64, 0, len(us))
			for _, u := range us {
				rss = max(rss, u.MaxRSSMB)
				cpu = append(cpu, u.CPUSec)
			}
			sort.Float64s(cpu)
			fmt.Fprintf(w, "| %s | %s | %.1f | %.3f |\n", n, x.Name, rss, cpu[len(cpu)/2])
		}
	}
	var worst usage
	for _, x := range rep.Results {
		for _, us := range x.Usage {
			for _, u := range us {
				if u.MaxRSSMB > worst.MaxRSSMB {
					worst = u
				}
			}
		}
	}
	if worst.Name != "" {
		verdict := "within"
		if worst.MaxRSSMB > rssLimitMB {
			verdict = "OVER"
		}
		fmt.Fprintf(w, "\nPeak RSS of every stage %s %d MB for %d MiB of memory (largest: %s, %.1f MB).\n",
			verdict, rssLimitMB, rep.Bytes>>20, worst.Name, worst.MaxRSSMB)
	}
	for _, x := range rep.Results {
		for _, e := range x.Errors {
			fmt.Fprintf(w, "\n- %s: error: %s", x.Name, e)
		}
	}
	if len(rep.Missing) > 0 {
		fmt.Fprintf(w, "\nNot measured (not built yet): %s\n", strings.Join(rep.Missing, ", "))
	}
	fmt.Fprintln(w)
}

func stageIndex(name string) int {
	for i, s := range dumpStages {
		if s[0] == name {
			return i
		}
	}
	return len(dumpStages)
}

func writeJSON(rep *report) error {
	if err := os.MkdirAll(*outFlag, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	name := filepath.Join(*outFlag, time.Now().UTC().Format("20060102-150405")+".json")
	if err := os.WriteFile(name, append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s\n", name)
	return nil
}

// workload is a running bigmem.
type workload struct {
	cmd       *exec.Cmd
	pid       int
	addr, len uint64
	done      chan struct{}
}

func startWorkload(path string, mb int, kind string) (*workload, error) {
	dir, err := os.MkdirTemp("", "crpipe-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	ready := filepath.Join(dir, "ready")
	cmd := exec.Command(path, strconv.Itoa(mb), ready, kind)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	w := &workload{cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() { cmd.Wait(); close(w.done) }()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		b, err := os.ReadFile(ready)
		if err == nil {
			var a, l uint64
			if _, err := fmt.Sscanf(string(b), "%x %d", &a, &l); err != nil {
				return nil, fmt.Errorf("bigmem ready file %q: %v", b, err)
			}
			w.addr, w.len = a, l
			return w, nil
		}
		select {
		case <-w.done:
			return nil, fmt.Errorf("bigmem exited: %v", cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			return nil, errors.New("bigmem not ready after 2 minutes")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pvr reads the workload's memory with process_vm_readv into one reused
// 4 MiB buffer: the bandwidth a dump stage could have at best.
func pvr(pid int, addr, n uint64) (time.Duration, error) {
	buf := make([]byte, chunk)
	for i := range buf {
		buf[i] = 1 // fault the buffer in before the clock starts
	}
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

// fill maps n fresh bytes, populates them with MADV_POPULATE_WRITE and
// copies a 4 MiB buffer over all of them: what a restore must at least do.
func fill(n uint64) (time.Duration, error) {
	src := make([]byte, chunk)
	for i := range src {
		src[i] = byte(i * 7)
	}
	t := time.Now()
	m, err := unix.Mmap(-1, 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(m)
	if err := unix.Madvise(m, unix.MADV_POPULATE_WRITE); err != nil {
		return 0, fmt.Errorf("MADV_POPULATE_WRITE: %v", err)
	}
	for off := 0; off < len(m); off += chunk {
		copy(m[off:], src)
	}
	return time.Since(t), nil
}

// touchAndFree maps, touches and unmaps n bytes, so that the host backs the
// guest memory the measurements will use.
func touchAndFree(n int64) error {
	m, err := unix.Mmap(-1, 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	if err := unix.Madvise(m, unix.MADV_POPULATE_WRITE); err != nil {
		for i := 0; i < len(m); i += 4096 {
			m[i] = 1
		}
	}
	return unix.Munmap(m)
}

func memAvailableMB() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, _ := strconv.Atoi(f[1])
			return kb >> 10
		}
	}
	return 0
}

// pipeline runs cr-freeze --pid PID | cr-seize | ... | cr-tcp > out with
// each stage a child of the harness, and returns the wall time from the
// first start to the last exit, and each stage's rusage.
func pipeline(pid int, out string) (time.Duration, []usage, error) {
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, nil, err
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
		c := timed(s[0], args...)
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
				return 0, nil, err
			}
			c.Stdout = w
			closeAfterStart = append(closeAfterStart, w)
			prev = r
		}
		cmds[i] = c
	}
	t := time.Now()
	for i, c := range cmds {
		if err := c.Start(); err != nil {
			for _, s := range cmds[:i] {
				s.Process.Kill()
				s.Wait()
			}
			return 0, nil, err
		}
	}
	for _, f := range closeAfterStart {
		f.Close()
	}
	var firstErr error
	us := make([]usage, 0, len(cmds))
	for i, c := range cmds {
		err := c.Wait()
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("%s: %v: %s", dumpStages[i][0], err, strings.TrimSpace(errs[i].String()))
		}
		u, uerr := timeUsage(dumpStages[i][0], c)
		if uerr != nil && firstErr == nil {
			firstErr = uerr
		}
		us = append(us, u)
	}
	d := time.Since(t)
	if firstErr == nil && out != os.DevNull {
		if err := f.Sync(); err != nil {
			firstErr = err
		}
		d = time.Since(t)
	}
	return d, us, firstErr
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

// killRestored kills the restored workload (it has the dumped PID, checked
// by name) and waits until it has released its memory.
func killRestored(pid int) {
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if strings.TrimSpace(string(comm)) != "bigmem" {
		fmt.Fprintf(os.Stderr, "bench: pid %d is %q, not the restored bigmem; not killing it\n", pid, comm)
		return
	}
	syscall.Kill(pid, syscall.SIGKILL)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
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
