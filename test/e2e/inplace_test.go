package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/proc"
)

// A tree alone in a cgroup of its own (a container's, a service's) is
// frozen where it is with --cgroup: no process moves, the cgroup is left
// as it was (thawed, its state gone), and a restart restores into it.

// inPlaceTree starts treestate (a root and its children) and moves the
// whole tree into a cgroup the test made, as a service manager would
// have started it there.
func inPlaceTree(t *testing.T) (*target, string, string) {
	mount, err := proc.Cgroup2Mount()
	if err != nil {
		t.Skipf("no cgroup2 mount: %v", err)
	}
	cg := testCgroup(t, mount, "inplace")
	p := startStateProg(t, "treestate")
	t.Cleanup(func() { killDescendants(t, p) })
	kids := descendants(p.pid)
	if len(kids) == 0 {
		t.Fatal("treestate has no children")
	}
	for _, pid := range append([]int{p.pid}, kids...) {
		moveInto(t, cg, pid)
	}
	p.cgroup = readFile(fmt.Sprintf("/proc/%d/cgroup", p.pid))
	return p, cg, mount
}

func moveInto(t *testing.T, cg string, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		t.Fatal(err)
	}
}

// checkLeftAsItWas: cg is thawed, carries no crpipe state, and no
// transient cgroup was made for the tree.
func checkLeftAsItWas(t *testing.T, p *target, cg string) {
	t.Helper()
	if f := strings.TrimSpace(readFile(filepath.Join(cg, "cgroup.freeze"))); f != "0" {
		t.Errorf("%s/cgroup.freeze is %q after the checkpoint, want 0", cg, f)
	}
	buf := make([]byte, 1024)
	if n, err := unix.Listxattr(cg, buf); err != nil || strings.Contains(string(buf[:n]), "crpipe") {
		t.Errorf("%s keeps xattrs %q (%v)", cg, buf[:n], err)
	}
	p.checkNoCgroup()
}

// TestFreezeInPlace: cr-dump --cgroup checkpoints a tree in its own
// cgroup without moving it; the kill leaves the cgroup empty and thawed,
// and cr-restore --dumped-cgroups starts the tree in it again (cloned
// into it: the kill must not have been a write to cgroup.kill, after
// which Linux 6.18 kills every process cloned into the cgroup). With
// --leave-running the tree goes on where it was.
func TestFreezeInPlace(t *testing.T) {
	p, cg, mount := inPlaceTree(t)
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d --cgroup %s --leave-running -o %s", p.pid, cg, img))
	p.checkRunning()
	checkLeftAsItWas(t, p, cg)

	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d --cgroup %s -o %s", p.pid, cg, img))
	p.waitKilled()
	at := p.mustProgress()
	checkLeftAsItWas(t, p, cg)
	if pids := strings.TrimSpace(readFile(filepath.Join(cg, "cgroup.procs"))); pids != "" {
		t.Errorf("%s still holds %s after the kill", cg, pids)
	}
	show := mustShell(t, 30*time.Second, "crit show "+img)
	if want := "freeze: cgroup2-given, cgroup " + cg; !strings.Contains(string(show.stdout), want) {
		t.Errorf("crit show says nothing like %q:\n%s", want, show.stdout)
	}
	pidfile := filepath.Join(p.dir, "restored.pid")
	r := mustShell(t, 60*time.Second, fmt.Sprintf("cr-restore -v -d -i %s --pidfile %s --dumped-cgroups", img, pidfile))
	if strings.Contains(string(r.stderr), "moves in") {
		t.Errorf("cr-restore had to move its restorer into %s: the dump's kill wrote cgroup.kill", cg)
	}
	p.checkPidfile(pidfile)
	tree := append([]int{p.pid}, descendants(p.pid)...)
	if len(tree) < 2 {
		t.Fatalf("restored tree %v: want the root and its children", tree)
	}
	for _, pid := range tree {
		if got, err := proc.Cgroup2Of(pid); err != nil || filepath.Join(mount, got) != cg {
			t.Errorf("restored pid %d is in cgroup %q (%v), want %s", pid, got, err, cg)
		}
	}
	p.checkProgressFrom(at)
	p.terminate(at)
}

// TestFreezeInPlaceRefused: what cr-freeze --cgroup refuses, each time
// with the tree running on as before and the cgroup as it was.
func TestFreezeInPlaceRefused(t *testing.T) {
	p, cg, _ := inPlaceTree(t)
	other := startCounter(t, "counter", 0)
	refused := func(what, flags, want string) {
		t.Helper()
		r := shell(t, 30*time.Second, fmt.Sprintf("cr-freeze %s > /dev/null", flags))
		if r.err == nil || !strings.Contains(string(r.stderr), want) {
			t.Errorf("%s: want a refusal saying %q, got %s", what, want, r)
		}
	}
	refused("not a cgroup", fmt.Sprintf("--pid %d --cgroup /tmp", p.pid), "not a cgroup v2 directory")
	refused("pid elsewhere", fmt.Sprintf("--pid %d --cgroup %s", other.pid, cg), fmt.Sprintf("pid %d is in cgroup", other.pid))
	if err := os.WriteFile(filepath.Join(cg, "cgroup.freeze"), []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	refused("frozen by someone else", fmt.Sprintf("--pid %d --cgroup %s", p.pid, cg), "is frozen already")
	if f := strings.TrimSpace(readFile(filepath.Join(cg, "cgroup.freeze"))); f != "1" {
		t.Errorf("cr-freeze thawed a cgroup someone else froze: cgroup.freeze %q", f)
	}
	if err := os.WriteFile(filepath.Join(cg, "cgroup.freeze"), []byte("0"), 0); err != nil {
		t.Fatal(err)
	}
	p.checkRunning()
	checkLeftAsItWas(t, p, cg)

	// A second tree in the cgroup: found once it is frozen, then thawed.
	moveInto(t, cg, other.pid)
	refused("two trees", fmt.Sprintf("--pid %d --cgroup %s", p.pid, cg), fmt.Sprintf("holds pid %d, which is not in the tree of pid %d", other.pid, p.pid))
	other.cgroup = readFile(fmt.Sprintf("/proc/%d/cgroup", other.pid))
	p.checkRunning()
	other.checkRunning()
	checkLeftAsItWas(t, p, cg)
}

// TestFreezeInPlaceByPid: a tree frozen in place by a pipeline that ended
// without a disposition (its reader gone) is thawed, and then killed, by
// pid alone, as a transient one is: the state on its cgroup says how.
func TestFreezeInPlaceByPid(t *testing.T) {
	p, cg, _ := inPlaceTree(t)
	mustShell(t, 30*time.Second, fmt.Sprintf("cr-freeze --pid %d --cgroup %s > /dev/null", p.pid, cg))
	if f := strings.TrimSpace(readFile(filepath.Join(cg, "cgroup.freeze"))); f != "1" {
		t.Fatalf("after cr-freeze --cgroup, cgroup.freeze is %q", f)
	}
	mustShell(t, 30*time.Second, fmt.Sprintf("cr-freeze thaw --pid %d", p.pid))
	p.checkRunning()
	checkLeftAsItWas(t, p, cg)
	r := mustShell(t, 30*time.Second, fmt.Sprintf("cr-freeze thaw --pid %d", p.pid))
	if !strings.Contains(string(r.stderr), "nothing to thaw") {
		t.Errorf("a second thaw: %s", r)
	}

	mustShell(t, 30*time.Second, fmt.Sprintf("cr-freeze --pid %d --cgroup %s > /dev/null", p.pid, cg))
	mustShell(t, 30*time.Second, fmt.Sprintf("cr-freeze kill --pid %d", p.pid))
	p.waitKilled()
	checkLeftAsItWas(t, p, cg)
	if _, err := os.Stat(cg); err != nil {
		t.Errorf("the kill removed the tree's own cgroup: %v", err)
	}
}

// TestRestoreIntoKilledCgroup: a cgroup that cgroup.kill was written to
// kills every process cloned into it on Linux 6.18; cr-restore --cgroup
// then starts its restorer outside and moves it in.
func TestRestoreIntoKilledCgroup(t *testing.T) {
	mount, err := proc.Cgroup2Mount()
	if err != nil {
		t.Skipf("no cgroup2 mount: %v", err)
	}
	cg := testCgroup(t, mount, "killed")
	if err := os.WriteFile(filepath.Join(cg, "cgroup.kill"), []byte("1"), 0); err != nil {
		t.Skipf("no cgroup.kill: %v", err)
	}
	p := startCounter(t, "counter", 0)
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	p.waitKilled()
	at := p.mustProgress()
	pidfile := filepath.Join(p.dir, "restored.pid")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-restore -d -i %s --pidfile %s --cgroup %s", img, pidfile, cg))
	p.checkPidfile(pidfile)
	if got, err := proc.Cgroup2Of(p.pid); err != nil || filepath.Join(mount, got) != cg {
		t.Errorf("restored pid %d is in cgroup %q (%v), want %s", p.pid, got, err, cg)
	}
	p.checkProgressFrom(at)
	p.terminate(at)
}
