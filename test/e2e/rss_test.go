package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// maxStageRSS is the peak RSS a stage may reach, whatever it dumps or
// restores (issue 10): 32 MB, in the KiB that time(1) reports.
const maxStageRSS = 32e6 / 1024

// TestManyMappingsRSS: a process with 65,000 one-page mappings, near
// vm.max_map_count (65,530 by default), is dumped and restored with every stage and
// cr-restore under 32 MB of peak RSS (each runs under /usr/bin/time, whose
// own fork does not count the test's RSS as the stage's), and the
// restored process finds every page as it was.
func TestManyMappingsRSS(t *testing.T) {
	need(t, append(pipelineCmds, "cr-restore")...)
	// 65,000 where vm.max_map_count is the default 65,530: room is left
	// for the program's own mappings and those the dump injects.
	mappings := 65000
	if b, err := os.ReadFile("/proc/sys/vm/max_map_count"); err == nil {
		if max, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && max-530 < mappings {
			mappings = max - 530
		}
	}
	p := startBenchload(t, "maps", strconv.Itoa(mappings))
	p.dumpRestoreUnder32MB(fmt.Sprintf("%d mappings", mappings))
	p.terminateBenchload()
}

// TestManyProcessesRSS: a tree of 1,000 processes of 1 MiB each is dumped
// and restored with every stage and cr-restore under 32 MB of peak RSS
// (cr-restore holds a few KB a process until every one is ready: 41 MB
// here when it held their records decoded), and every restored process
// finds its memory as it was.
func TestManyProcessesRSS(t *testing.T) {
	need(t, append(pipelineCmds, "cr-restore")...)
	const procs = 1000
	p := startBenchload(t, "procs", strconv.Itoa(procs), "1", "random")
	kids := descendants(p.pid)
	p.killRecorded(kids)
	if len(kids) != procs-1 {
		t.Fatalf("benchload runs %d processes, want %d", len(kids)+1, procs)
	}
	p.dumpRestoreUnder32MB(fmt.Sprintf("%d processes", procs))
	p.terminateBenchload()
}

// dumpRestoreUnder32MB dumps p with every stage, kills it and restores it,
// each stage and cr-restore under /usr/bin/time (whose own fork does not
// count the test's RSS as the stage's), and fails the test for any that
// peaked above 32 MB.
func (p *target) dumpRestoreUnder32MB(what string) {
	t := p.t
	t.Helper()
	if _, err := os.Stat("/usr/bin/time"); err != nil {
		t.Fatal("/usr/bin/time is missing (make test installs it)")
	}
	rss := filepath.Join(p.dir, "rss")
	timed := func(cmd string) string {
		return fmt.Sprintf("/usr/bin/time -a -o %s -f '%%M %%C' %s", rss, cmd)
	}
	img := filepath.Join(p.dir, "img")
	var stages []string
	for _, c := range strings.Split("cr-freeze --pid "+strconv.Itoa(p.pid)+" | "+dumpStages, " | ") {
		stages = append(stages, timed(c))
	}
	mustShell(t, 120*time.Second, strings.Join(stages, " | ")+" > "+img)
	mustShell(t, 30*time.Second, fmt.Sprintf("cr-freeze kill --pid %d", p.pid))
	p.waitKilled()
	pidfile := filepath.Join(p.dir, "restored.pid")
	mustShell(t, 120*time.Second, timed(fmt.Sprintf("cr-restore -d -i %s --pidfile %s", img, pidfile)))
	p.checkPidfile(pidfile)

	peaks := lines([]byte(readFile(rss)))
	if len(peaks) != len(stages)+1 {
		t.Fatalf("%d lines from time(1), want %d:\n%s", len(peaks), len(stages)+1, readFile(rss))
	}
	for _, l := range peaks {
		kb, cmd, _ := strings.Cut(l, " ")
		n, err := strconv.Atoi(kb)
		if err != nil {
			t.Fatalf("time(1) said %q", l)
		}
		t.Logf("%s: peak RSS %.1f MB", filepath.Base(strings.Fields(cmd)[0]), float64(n)*1024/1e6)
		if n > maxStageRSS {
			t.Errorf("%s: peak RSS %.1f MB with %s, want at most 32 MB", cmd, float64(n)*1024/1e6, what)
		}
	}
}

// terminateBenchload asks the restored benchload for its verdict: every
// page of every process as it was.
func (p *target) terminateBenchload() {
	t := p.t
	t.Helper()
	if err := syscall.Kill(p.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !awaitFile(p.verdict, 30*time.Second) {
		t.Fatalf("restored pid %d gave no verdict", p.pid)
	}
	if v := strings.TrimSpace(readFile(p.verdict)); v != "PASS" {
		t.Fatalf("restored process says %q", v)
	}
}

// startBenchload starts test/progs/benchload with the workload args and
// waits until it is ready.
func startBenchload(t *testing.T, args ...string) *target {
	t.Helper()
	dir := t.TempDir()
	p := &target{
		t:       t,
		name:    "benchload",
		path:    prog("benchload"),
		dir:     dir,
		verdict: filepath.Join(dir, "verdict"),
		exited:  make(chan struct{}),
	}
	ready := filepath.Join(dir, "ready")
	p.cmd = exec.Command(p.path, append([]string{ready, p.verdict}, args...)...)
	p.launch()
	t.Cleanup(p.cleanup)
	if !awaitFile(ready, 60*time.Second) {
		t.Fatalf("benchload %d did not get ready (%s)", p.pid, strings.Join(args, " "))
	}
	return p
}
