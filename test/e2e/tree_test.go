package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// descendants lists the pids below pid (children of every thread).
func descendants(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		for _, f := range strings.Fields(readFile(t)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
				out = append(out, descendants(c)...)
			}
		}
	}
	return out
}

// killRecorded kills, at cleanup, the recorded pids that still run this
// test's program (killOurs).
func (p *target) killRecorded(pids []int) {
	p.t.Cleanup(func() { p.killOurs(pids) })
}

// killOurs kills those of pids that run this test's program: its command
// line names the test's own directory, or (a restore may have left out
// the page of the arguments) its exe is the program.
func (p *target) killOurs(pids []int) {
	for _, pid := range pids {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if bytes.Contains(cmdline, []byte(p.dir)) || exe == p.path {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// treeShape is each process's pid, ppid, pgid, sid and whether it is a zombie.
func treeShape(root int) string {
	var b strings.Builder
	for _, pid := range append([]int{root}, descendants(root)...) {
		st := readFile(fmt.Sprintf("/proc/%d/stat", pid))
		i := strings.LastIndexByte(st, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(st[i+1:])
		alive := "alive" // running or sleeping is a matter of the moment
		if f[0] == "Z" {
			alive = "zombie"
		}
		fmt.Fprintf(&b, "%d ppid=%s pgid=%s sid=%s %s\n", pid, f[1], f[2], f[3], alive)
	}
	return b.String()
}

// TestTree: a 3-level tree with two sessions, process groups and a zombie
// is dumped with cr-dump and restored with every pid, parent, session and
// group as it was; the program checks itself (and reaps its zombie's 7).
func TestTree(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	p := start(t, "tree", func(p *target) []string { return []string{p.progress, p.verdict} })
	kids := descendants(p.pid)
	p.killRecorded(kids)
	if len(kids) != 5 {
		t.Fatalf("tree has %d descendants, want 5:\n%s", len(kids), treeShape(p.pid))
	}
	before := treeShape(p.pid)
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	p.killedThenRestored(img)
	// killedThenRestored ends with the verdict; the shape was checked by the
	// program itself, and here once more against what ps showed before.
	_ = before
}

// TestTreeShape compares the restored tree with the original, as seen from outside.
func TestTreeShape(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	p := start(t, "tree", func(p *target) []string { return []string{p.progress, p.verdict} })
	p.killRecorded(descendants(p.pid))
	before := treeShape(p.pid)
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	p.waitKilled()
	p.restoreDetached(img)
	// The restored root's parent is whoever adopted it; everything below is exact.
	after := treeShape(p.pid)
	strip := func(s string) string { return strings.SplitN(s, "\n", 2)[1] }
	if strip(before) != strip(after) {
		t.Fatalf("tree before dump:\n%s\nafter restore:\n%s", before, after)
	}
	p.terminate(0)
}

// TestThreads: 8 threads with their own TLS, signal masks and AVX registers
// in the middle of a computation keep all of it; also with 24 MiB of memory
// the process lends through its main thread while the workers are held
// (cr-pages --lend, which cr-dump runs).
func TestThreads(t *testing.T) {
	for _, mib := range []string{"0", "24"} {
		t.Run(mib+"MiB", func(t *testing.T) {
			need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
			p := start(t, "threads", func(p *target) []string { return []string{p.progress, p.verdict, mib} })
			tids, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.pid))
			if len(tids) != 9 {
				t.Fatalf("%d threads, want 9", len(tids))
			}
			img := filepath.Join(p.dir, "img")
			r := mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -v -t %d -o %s", p.pid, img))
			if lent := strings.Contains(string(r.stderr), "lends its private anonymous pages"); lent != (mib == "24") {
				t.Errorf("with %s MiB, the process lent its pages: %v", mib, lent)
			}
			p.killedThenRestored(img)
		})
	}
}

// TestThreadsLeaveRunning: a --leave-running dump of a threaded process,
// then a restore of the second dump. With 24 MiB the first dump lends the
// pages through the main thread, which holds ymm0-ymm7 across its sleep:
// the lender's fold must leave them as they were (the verdict says so).
func TestThreadsLeaveRunning(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	p := start(t, "threads", func(p *target) []string { return []string{p.progress, p.verdict, "24"} })
	img1 := filepath.Join(p.dir, "img1")
	img2 := filepath.Join(p.dir, "img2")
	r := mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -v -t %d --leave-running -o %s", p.pid, img1))
	if !strings.Contains(string(r.stderr), "lends its private anonymous pages") {
		t.Errorf("the first dump did not lend the pages:\n%s", r.stderr)
	}
	at := p.waitProgress(p.mustProgress()+20, 10*time.Second)
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img2))
	p.killedThenRestored(img2)
	_ = at
}

// TestSharedAnonymous: a parent and a child sharing MAP_SHARED anonymous
// memory share it again after restore (a write in one is seen by the other),
// as shared anonymous memory, so that the restored tree can be dumped and
// restored again. The image holds the shared pages once.
func TestSharedAnonymous(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	p := start(t, "shm", func(p *target) []string { return []string{p.progress, p.verdict} })
	pids := append([]int{p.pid}, descendants(p.pid)...)
	p.killRecorded(pids[1:])
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	var counts []string
	for _, l := range strings.Split(string(mustShell(t, 30*time.Second, "crit show "+img).stdout), "\n") {
		if f := strings.Fields(l); len(f) == 7 && f[4] == "shared-anon" {
			counts = append(counts, f[5])
		}
	}
	if !reflect.DeepEqual(counts, []string{"1024", "0"}) {
		t.Errorf("pages of the shared mapping in the parent and the child: %v, want 1024 and 0", counts)
	}
	p.waitKilled()
	at := p.mustProgress()
	p.restoreDetached(img)
	p.checkProgressFrom(at)
	for _, pid := range pids {
		maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`rw-s .* /dev/zero \(deleted\)`).Match(maps) {
			t.Errorf("pid %d: no shared anonymous mapping after restore:\n%s", pid, maps)
		}
	}
	img2 := filepath.Join(p.dir, "img2")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img2))
	p.killedThenRestored(img2)
}

// TestZeroPages: pages written with zeros are left out of the image
// (doc/stream-v1.md, section 6) and read as zeros after restore, in a
// parent and in a child whose other pages came from it by fork.
func TestZeroPages(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	p := start(t, "zeropages", func(p *target) []string { return []string{p.progress, p.verdict} })
	p.killRecorded(descendants(p.pid))
	p.waitProgress(2, 10*time.Second)
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	p.killedThenRestored(img)
}

// TestPidnsBesideOriginal: a --leave-running dump of a tree is restored
// with --pidns while the original still runs: the copy sees its dumped
// pids in a namespace of its own (CRIU cannot: the pids are taken), and
// both the copy and the original check themselves.
func TestPidnsBesideOriginal(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	p := start(t, "tree", func(p *target) []string { return []string{p.progress, p.verdict} })
	p.killRecorded(descendants(p.pid))
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d --leave-running -o %s", p.pid, img))
	copyPid := p.restoreBeside(img)
	if n := len(descendants(copyPid)); n != 5 {
		t.Fatalf("the copy has %d descendants, want 5", n)
	}
	p.checkCopy(copyPid)
	p.checkRunning()
	p.terminate(0)
}

// restoreBeside restores img with --pidns while the original p still runs,
// checks the copy has p's pid in its namespace, and returns the copy's pid
// (killed at cleanup with its descendants, if they still run p's program).
func (p *target) restoreBeside(img string) int {
	t := p.t
	t.Helper()
	pidfile := filepath.Join(p.dir, "copy.pid")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-restore --pidns -d -i %s --pidfile %s", img, pidfile))
	copyPid, err := strconv.Atoi(strings.TrimSpace(readFile(pidfile)))
	if err != nil || copyPid == p.pid {
		t.Fatalf("pidfile says %q: want the copy's pid, not the original's %d", readFile(pidfile), p.pid)
	}
	copyKids := descendants(copyPid)
	t.Cleanup(func() {
		for _, pid := range append([]int{copyPid}, copyKids...) {
			if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && bytes.Contains(cmdline, []byte(p.dir)) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	ns := strings.Fields(strings.SplitN(strings.SplitN(readFile(fmt.Sprintf("/proc/%d/status", copyPid)), "NSpid:", 2)[1], "\n", 2)[0])
	if len(ns) != 2 || ns[1] != strconv.Itoa(p.pid) {
		t.Fatalf("copy %d has NSpid %v, want [%d %d]", copyPid, ns, copyPid, p.pid)
	}
	return copyPid
}

// checkCopy asks the copy restoreBeside made for its verdict, which goes
// to the original's verdict file (then removed for the original's).
func (p *target) checkCopy(copyPid int) {
	t := p.t
	t.Helper()
	if err := syscall.Kill(copyPid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for strings.TrimSpace(readFile(p.verdict)) == "" {
		if time.Now().After(deadline) {
			t.Fatal("no verdict from the copy")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if v := readFile(p.verdict); !strings.HasPrefix(v, "PASS") {
		t.Fatalf("copy: %s", v)
	}
	os.Remove(p.verdict)
}

// pssKiB sums the proportional set size of pid and its descendants: shared
// pages count once in total, so it is the memory the tree really uses.
func pssKiB(t *testing.T, pid int) uint64 {
	t.Helper()
	var sum uint64
	for _, p := range append([]int{pid}, descendants(pid)...) {
		for _, line := range strings.Split(readFile(fmt.Sprintf("/proc/%d/smaps_rollup", p)), "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "Pss:" {
				kb, err := strconv.ParseUint(f[1], 10, 64)
				if err != nil {
					t.Fatalf("pid %d smaps_rollup: %q", p, line)
				}
				sum += kb
			}
		}
	}
	return sum
}

// dontfork lists, per process of the tree at pid (by its place in it),
// the mappings whose VmFlags say DONTFORK ("dc").
func dontfork(pid int) []string {
	var out []string
	for i, p := range append([]int{pid}, descendants(pid)...) {
		start := ""
		for _, line := range strings.Split(readFile(fmt.Sprintf("/proc/%d/smaps", p)), "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) > 0 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
				start = f[0]
			case len(f) > 0 && f[0] == "VmFlags:" && slices.Contains(f[1:], "dc"):
				out = append(out, fmt.Sprintf("process %d: %s", i, start))
			}
		}
	}
	return out
}

// TestCopyOnWriteTree: 8 processes that inherited 256 MiB of private memory
// over fork (each made a few MiB its own) use about as much memory after
// restore as before, not a copy each, and every process finds every page
// of its memory as it was (the program checks itself). The parents'
// mappings kept out of their children's forks while the restore made
// them are back in (none is DONTFORK, as before the dump).
func TestCopyOnWriteTree(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	p := start(t, "cow", func(p *target) []string { return []string{p.progress, p.verdict, "256"} })
	p.killRecorded(descendants(p.pid))
	if n := len(descendants(p.pid)); n != 7 {
		t.Fatalf("the tree has %d descendants, want 7", n)
	}
	before := pssKiB(t, p.pid)
	dcBefore := dontfork(p.pid)
	// A dump reads shared pages without pinning them: the live tree
	// keeps sharing them (process_vm_readv would give each reader a copy).
	mustShell(t, 120*time.Second, fmt.Sprintf("cr-dump -t %d --leave-running -o /dev/null", p.pid))
	if fi, err := os.Stat("/dev/null"); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("cr-dump -o /dev/null replaced /dev/null: %v %v", fi.Mode(), err)
	}
	if live := pssKiB(t, p.pid); float64(live) > 1.01*float64(before) {
		t.Errorf("a --leave-running dump grew the tree's memory from %.1f to %.1f MiB", float64(before)/1024, float64(live)/1024)
	}
	img := filepath.Join(p.dir, "img")
	mustShell(t, 120*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	p.waitKilled()
	at := p.mustProgress()
	p.restoreDetached(img)
	p.killRecorded(descendants(p.pid))
	p.checkProgressFrom(at)
	after := pssKiB(t, p.pid)
	t.Logf("image %.1f MiB; PSS of the tree %.1f MiB before, %.1f MiB after restore (%.2fx)",
		float64(st.Size())/(1<<20), float64(before)/1024, float64(after)/1024, float64(after)/float64(before))
	if float64(after) > 1.1*float64(before) {
		t.Errorf("the restored tree uses %.2fx the memory it used before (at most 1.1x)", float64(after)/float64(before))
	}
	if dc := dontfork(p.pid); !slices.Equal(dc, dcBefore) {
		t.Errorf("mappings with DONTFORK before the dump: %q; after restore: %q", dcBefore, dc)
	}
	p.terminate(at)
}
