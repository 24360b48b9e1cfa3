// Command bench (make bench) measures how fast crpipe dumps and restores a
// fixed set of workloads, beside the limits of the machine measured in the
// same run, and checks the targets of issue 10.
//
// These machines are VMs whose host backs guest memory lazily, so the run
// first touches and frees more memory than the largest workload needs, then
// repeats every measurement (crpipe's and the limits) -reps times,
// interleaved: each repetition measures every workload, and for each
// workload its limits next to its dumps and restore. It reports the
// minimum and the median, prints markdown tables, and writes the figures as
// JSON and a plot (SVG) under bench/results/.
//
// Each dump stage is started by the harness itself, connected by pipes as a
// shell would, under /usr/bin/time, which reports the stage's own peak RSS
// and CPU time. (The harness's own wait4 rusage would not do: Go starts
// children with CLONE_VM, and exec folds the parent's peak RSS into the
// child's ru_maxrss.)
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

var (
	binFlag   = flag.String("bin", "bin", "directory of the built commands (and test/ programs)")
	repsFlag  = flag.Int("reps", 3, "repetitions of every measurement (interleaved)")
	tmpFlag   = flag.String("tmpfs", "/dev/shm", "tmpfs directory for image files")
	outFlag   = flag.String("out", "bench/results", "directory for the JSON results and the plot")
	onlyFlag  = flag.String("only", "", "measure only the workloads whose name matches this regular expression")
	quickFlag = flag.Bool("quick", false, "leave out the 4 GiB workloads")
)

// Targets of issue 10.
const (
	rssLimitMB      = 32   // peak RSS of every stage
	tinyLimitMS     = 50   // whole dump + restore of the tiny counter
	ratioGoal       = 0.80 // of the limit measured in the same run
	compressGoalGBs = 1.5  // --compress on compressible memory
	compressKeep    = 0.75 // --compress on random memory, against uncompressed
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: error: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (it freezes, ptraces and restores processes)")
	}
	bin, err := filepath.Abs(*binFlag)
	if err != nil {
		return err
	}
	if _, err := os.Stat("/usr/bin/time"); err != nil {
		return errors.New("/usr/bin/time is missing (apt-get install time; make bench does)")
	}
	for _, p := range []string{"benchload", "counter"} {
		if _, err := os.Stat(filepath.Join(bin, "test", p)); err != nil {
			return fmt.Errorf("%s: %v (make builds it; needs gcc)", filepath.Join(bin, "test", p), err)
		}
	}
	os.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	// Restored trees outlive cr-restore -d; as their subreaper the harness
	// reaps them at once (this machine's PID 1 reaps orphans every ~2 s).
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
	var only *regexp.Regexp
	if *onlyFlag != "" {
		if only, err = regexp.Compile(*onlyFlag); err != nil {
			return err
		}
	}
	h := &harness{bin: bin, tmp: *tmpFlag}
	if h.cgroup2, err = cgroup2Mount(); err != nil {
		return err
	}
	rep := newReport()
	for _, n := range append(append([]string(nil), stageNames()...), "cr-dump", "cr-restore") {
		if _, err := os.Stat(filepath.Join(bin, n)); err != nil {
			return fmt.Errorf("%s is not built (make)", n)
		}
	}

	var ws []*workload
	for _, w := range workloads(*quickFlag) {
		if only == nil || only.MatchString(w.Name) {
			ws = append(ws, w)
			rep.Workloads = append(rep.Workloads, w.result())
		}
	}
	if len(ws) == 0 {
		return fmt.Errorf("no workload matches %q", *onlyFlag)
	}

	// Warm up: the largest workload, its image on tmpfs and the fill
	// measurement exist at once, and the restored copy after it.
	largest := int64(0)
	for _, w := range ws {
		largest = max(largest, w.Bytes)
	}
	warm := int(largest>>20)*3 + 1024
	if avail := memAvailableMB(); avail > 0 && warm > avail*7/10 {
		warm = avail * 7 / 10
	}
	fmt.Fprintf(os.Stderr, "bench: warming up %d MiB of memory...\n", warm)
	t0 := time.Now()
	if err := touchAndFree(int64(warm)<<20, false); err != nil {
		return fmt.Errorf("warm-up: %v", err)
	}
	rep.WarmupMB, rep.WarmupSec = warm, time.Since(t0).Seconds()

	start := time.Now()
	for r := 1; r <= *repsFlag; r++ {
		for i, w := range ws {
			fmt.Fprintf(os.Stderr, "bench: repetition %d of %d: %s\n", r, *repsFlag, w.Name)
			res := rep.Workloads[i]
			if err := h.measure(w, res, r); err != nil {
				res.Errors = append(res.Errors, fmt.Sprintf("repetition %d: %v", r, err))
				fmt.Fprintf(os.Stderr, "bench: %s: %v\n", w.Name, err)
			}
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	rep.finish()
	printReport(os.Stdout, rep)
	return writeResults(rep)
}

func memAvailableMB() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemAvailable:" {
			var kb int
			fmt.Sscan(f[1], &kb)
			return kb >> 10
		}
	}
	return 0
}

// touchAndFree maps, touches and unmaps n bytes, so that the host backs the
// guest memory the measurements will use; huge: as transparent huge pages.
func touchAndFree(n int64, huge bool) error {
	m, err := unix.Mmap(-1, 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	if huge {
		if err := unix.Madvise(m, unix.MADV_HUGEPAGE); err != nil {
			unix.Munmap(m)
			return fmt.Errorf("MADV_HUGEPAGE: %v", err)
		}
	}
	if err := unix.Madvise(m, unix.MADV_POPULATE_WRITE); err != nil {
		for i := 0; i < len(m); i += 4096 {
			m[i] = 1
		}
	}
	return unix.Munmap(m)
}

// cgroup2Mount finds the cgroup v2 mount (for the frozen-time probe).
func cgroup2Mount() (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		// ... mountpoint ... - fstype source options
		pre, post, ok := strings.Cut(l, " - ")
		if !ok {
			continue
		}
		if f := strings.Fields(post); len(f) > 0 && f[0] == "cgroup2" {
			if pf := strings.Fields(pre); len(pf) >= 5 {
				return pf[4], nil
			}
		}
	}
	return "", errors.New("no cgroup2 mount in /proc/self/mountinfo")
}

var _ = runtime.NumCPU
