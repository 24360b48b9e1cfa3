// Package freeze starts a checkpoint: it freezes a process in a transient
// cgroup v2 group with the cgroup freezer (or, with --cgroup, the cgroup
// that holds its tree, where it is), records what it froze (Inventory,
// Freeze and Process records), and later applies the disposition: thaw
// (everything back where it was) or kill.
//
// The frozen state lives in the kernel, not in cr-freeze: the stages that
// follow attach, read and detach while the tasks stay frozen. What thaw and
// kill need is in the stream's Freeze and Process records, and also in a
// user.crpipe.freeze xattr on the frozen cgroup, so `--pid` works without
// the stream.
package freeze

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"crpipe/lib/inject"
	"crpipe/lib/internal/par"
	"crpipe/lib/netlock"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
	"crpipe/lib/tree"
)

// Prefix names transient cgroups, so leftovers are easy to spot.
const Prefix = "crpipe-"

// xattrName holds the thaw/kill state on the frozen cgroup directory.
const xattrName = "user.crpipe.freeze"

// ToolVersion is recorded in the Inventory.
const ToolVersion = "crpipe-dev"

// Options tune Freeze.
type Options struct {
	// Timeout bounds the wait for the cgroup to report frozen.
	Timeout time.Duration
	// Cgroup, when set, is a cgroup v2 directory that holds the tree and
	// nothing else (a container's, a service's): it is frozen where it is
	// (freezeInPlace).
	Cgroup string
	// Mount is where cgroup2 is mounted, when the caller has found it
	// already (Prepare); empty, Freeze finds it.
	Mount string
}

// Prepare does ahead what a freeze needs that does not depend on its
// target: it finds where cgroup2 is mounted (for Options.Mount) and reads
// this process's ancestors, which no target may be. cr-freeze runs it
// while the stages after it start, before the tree is frozen: 0.8-1.4 ms
// of the frozen path on the PVM guest (doc/performance.md 87).
func Prepare() (mount string, err error) {
	selfAndAncestors()
	return cgroup2Mount()
}

func cgroup2Mount() (string, error) {
	mount, err := proc.Cgroup2Mount()
	if err != nil {
		return "", stage.Hint(err, "mount cgroup2 (e.g. mount -t cgroup2 none /sys/fs/cgroup/unified)")
	}
	return mount, nil
}

// Task is one frozen process and where it lived before.
type Task struct {
	Pid       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
	Cgroup2   string `json:"cgroup2"` // absolute directory of its original cgroup
}

// Frozen is the result of a successful Freeze.
type Frozen struct {
	Root    int
	Cgroup  string // absolute directory of the frozen cgroup
	InPlace bool   // Cgroup is the tree's own, frozen where it is; else transient
	Tasks   []Task
	Procs   []*pb.Process
}

// ErrRefused marks a target cr-freeze will not checkpoint (yet); nothing
// was changed. errors.Is finds it in the errors refuse returns.
var ErrRefused = errors.New("refused")

type refusedError struct{ error }

func (e refusedError) Is(target error) bool { return target == ErrRefused }

func refuse(format string, a ...any) error { return refusedError{fmt.Errorf(format, a...)} }

// ErrNotFrozen is returned by thaw and kill when there is no transient
// cgroup for the pid.
var ErrNotFrozen = errors.New("not frozen by cr-freeze")

// errNoState: the transient cgroup exists but carries no state.
var errNoState = fmt.Errorf("no recorded state: %w", ErrNotFrozen)

func cgroupDir(mount string, pid int) string {
	return filepath.Join(mount, Prefix+strconv.Itoa(pid))
}

// isTransient says whether dir is a transient cgroup of cr-freeze's (a
// cgroup of someone else's may begin with the prefix too).
func isTransient(mount, dir string) bool {
	n, ok := strings.CutPrefix(filepath.Base(dir), Prefix)
	_, err := strconv.ParseUint(n, 10, 32)
	return ok && err == nil && filepath.Dir(dir) == filepath.Clean(mount)
}

// Freeze moves pid into a fresh transient cgroup and freezes it, or with
// opt.Cgroup freezes that cgroup in place. On any error everything is put
// back as it was.
func Freeze(pid int, opt Options) (*Frozen, error) {
	if opt.Timeout <= 0 {
		opt.Timeout = 10 * time.Second
	}
	if opt.Cgroup != "" {
		return freezeInPlace(pid, opt)
	}
	st, mount, orig, err := target(pid, opt.Mount)
	if err != nil {
		return nil, err
	}
	if isTransient(mount, orig) {
		return nil, stage.Hint(refuse("pid %d: already in transient cgroup %s", pid, orig),
			fmt.Sprintf("a checkpoint is in progress or was left over; run cr-freeze thaw --pid %d", pid))
	}
	dir := cgroupDir(mount, pid)
	err = os.Mkdir(dir, 0o755)
	if errors.Is(err, os.ErrExist) && removeStale(dir, pid, st.StartTime) {
		err = os.Mkdir(dir, 0o755)
	}
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, stage.Hint(fmt.Errorf("pid %d: cgroup %s already exists", pid, dir),
				fmt.Sprintf("a checkpoint is in progress or was left over; run cr-freeze thaw --pid %d", pid))
		}
		return nil, permission(pid, fmt.Errorf("pid %d: create cgroup: %w", pid, err))
	}
	f := &Frozen{Root: pid, Cgroup: dir, Tasks: []Task{{Pid: pid, StartTime: st.StartTime, Cgroup2: orig}}}
	if err := setState(dir, f.Tasks); err != nil {
		os.Remove(dir)
		return nil, permission(pid, fmt.Errorf("pid %d: record state on %s: %w", pid, dir, err))
	}
	fail := func(err error) (*Frozen, error) {
		if uerr := thawDir(dir, f.Tasks); uerr != nil {
			err = fmt.Errorf("%w (and undoing the freeze failed: %v)", err, uerr)
		}
		return nil, err
	}
	if err := writeFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return fail(noProcess(pid, err))
		}
		return fail(permission(pid, fmt.Errorf("pid %d: move into %s: %w", pid, dir, err)))
	}
	// Descendants follow until no new one appears. A child forked by a
	// process already moved is born inside; one forked by a process not yet
	// moved is caught by the next round, and after the freeze by a rescan.
	if err := f.adoptStable(dir, 100); err != nil {
		return fail(err)
	}
	if err := writeFile(filepath.Join(dir, "cgroup.freeze"), "1"); err != nil {
		return fail(fmt.Errorf("pid %d: freeze %s: %w", pid, dir, err))
	}
	for round := 0; ; round++ {
		if err := waitEvent(dir, "frozen", "1", opt.Timeout); err != nil {
			return fail(stage.Hint(fmt.Errorf("pid %d: %w", pid, err), "a task in uninterruptible sleep (state D) cannot freeze; retry later"))
		}
		n, err := f.adopt(dir)
		if err != nil {
			return fail(err)
		}
		if n == 0 {
			break
		}
		if round > 10 {
			return fail(fmt.Errorf("pid %d: the tree keeps growing while it is frozen", pid))
		}
	}
	// Everything is frozen now: the records describe a tree that cannot change.
	procs, err := readPids(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return fail(err)
	}
	if err := f.describe(procs); err != nil {
		return fail(err)
	}
	return f, nil
}

// target checks pid (check) and finds the cgroup2 mount (known, unless
// empty) and the cgroup directory pid is in.
func target(pid int, known string) (st *proc.Stat, mount, cgroup string, err error) {
	if st, err = check(pid); err != nil {
		return nil, "", "", err
	}
	if mount = known; mount == "" {
		if mount, err = cgroup2Mount(); err != nil {
			return nil, "", "", err
		}
	}
	rel, err := proc.Cgroup2Of(pid)
	if err != nil {
		return nil, "", "", noProcess(pid, err)
	}
	return st, mount, filepath.Join(mount, rel), nil
}

// describe makes the records of the frozen tree, whose live processes are
// procs (the cgroup's), and refuses a tree that cannot be restored.
func (f *Frozen) describe(procs []int) error {
	recs, err := f.records(procs)
	if err != nil {
		return err
	}
	ordered, err := tree.Order(recs)
	if err != nil {
		return err
	}
	if err := tree.Check(ordered); err != nil {
		return stage.Hint(refuse("%v", err), "checkpoint a tree whose sessions and process groups are its own")
	}
	if err := checkNamespaces(ordered); err != nil {
		return err
	}
	f.Procs = ordered
	return nil
}

// freezeInPlace freezes opt.Cgroup where it is. No process moves: no
// write to cgroup.procs, and none of the RCU grace period a move can wait
// for (10-18 ms here, doc/performance.md), nor the moves back at thaw.
// The cgroup must hold pid's tree and nothing else, every process directly
// in it. One frozen already is refused: someone else froze it, and the
// thaw after the checkpoint would undo that. On any error it is thawed
// again, as it was.
func freezeInPlace(pid int, opt Options) (*Frozen, error) {
	st, mount, got, err := target(pid, opt.Mount)
	if err != nil {
		return nil, err
	}
	dir, err := inPlaceDir(mount, opt.Cgroup)
	if err != nil {
		return nil, err
	}
	if got != dir {
		return nil, stage.Usagef("pid %d is in cgroup %s, not in %s", pid, got, dir)
	}
	if self, err := proc.Cgroup2Of(os.Getpid()); err == nil && inside(filepath.Join(mount, self), dir) {
		return nil, stage.Hint(refuse("cr-freeze runs in cgroup %s itself: freezing it would freeze this pipeline", dir),
			"run the checkpoint from outside the cgroup")
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.freeze"))
	if err != nil {
		return nil, permission(pid, err)
	}
	if strings.TrimSpace(string(b)) != "0" {
		return nil, stage.Hint(refuse("cgroup %s is frozen already: someone else froze it", dir),
			fmt.Sprintf("thaw it (echo 0 > %s/cgroup.freeze) and checkpoint again: cr-freeze freezes it itself, and thaws it after", dir))
	}
	if tasks, err := getState(dir); err == nil && len(tasks) > 0 {
		if cur, err := proc.ReadStat(tasks[0].Pid); err == nil && cur.StartTime == tasks[0].StartTime {
			return nil, stage.Hint(refuse("cgroup %s: a checkpoint of pid %d is in progress or was left over", dir, tasks[0].Pid),
				fmt.Sprintf("run cr-freeze thaw --pid %d", tasks[0].Pid))
		}
		removeState(dir) // left by a checkpoint of a process long gone
	}
	f := &Frozen{Root: pid, Cgroup: dir, InPlace: true, Tasks: []Task{{Pid: pid, StartTime: st.StartTime, Cgroup2: dir}}}
	// Recorded before frozen: a thaw after a crash finds it.
	if err := setState(dir, f.Tasks); err != nil {
		return nil, permission(pid, fmt.Errorf("pid %d: record state on %s: %w", pid, dir, err))
	}
	fail := func(err error) (*Frozen, error) {
		if uerr := thawInPlace(dir, pid); uerr != nil {
			err = fmt.Errorf("%w (and undoing the freeze failed: %v)", err, uerr)
		}
		return nil, err
	}
	if err := writeFile(filepath.Join(dir, "cgroup.freeze"), "1"); err != nil {
		return fail(fmt.Errorf("pid %d: freeze %s: %w", pid, dir, err))
	}
	if err := waitEvent(dir, "frozen", "1", opt.Timeout); err != nil {
		return fail(stage.Hint(fmt.Errorf("pid %d: %w", pid, err), "a task in uninterruptible sleep (state D) cannot freeze; retry later"))
	}
	if err := refuseNested(dir); err != nil {
		return fail(err)
	}
	procs, err := readPids(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return fail(err)
	}
	if err := f.checkAll(procs, dir); err != nil {
		return fail(err)
	}
	if err := setState(dir, f.Tasks); err != nil {
		return fail(err)
	}
	if err := f.describe(procs); err != nil {
		return fail(stage.Hint(err, "a cgroup frozen in place must hold the tree of --pid and nothing else; leave out --cgroup to freeze the tree alone"))
	}
	return f, nil
}

// inPlaceDir checks that dir is a cgroup v2 directory that can be frozen in
// place, and returns its absolute path.
func inPlaceDir(mount, dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", stage.Usagef("--cgroup %s: %v", dir, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(abs, &fs); err != nil || fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return "", stage.Hint(stage.Usagef("--cgroup %s: not a cgroup v2 directory", dir), "give a directory under the cgroup2 mount "+mount)
	}
	switch mount = filepath.Clean(mount); {
	case abs == mount:
		return "", stage.Usagef("--cgroup %s: the root cgroup cannot be frozen; give the tree's own cgroup under %s", dir, mount)
	case !inside(abs, mount):
		return "", stage.Usagef("--cgroup %s: not under the cgroup2 mount cr-freeze uses, %s", dir, mount)
	}
	if isTransient(mount, abs) {
		return "", stage.Usagef("--cgroup %s: a transient cgroup of cr-freeze's", dir)
	}
	return abs, nil
}

// inside: cgroup directory d is dir or below it.
func inside(d, dir string) bool { return d == dir || strings.HasPrefix(d, dir+"/") }

// refuseNested refuses a cgroup with processes in a cgroup below it: the
// stages find every process of the tree in the frozen cgroup itself.
func refuseNested(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		sub := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(filepath.Join(sub, "cgroup.events"))
		if err != nil {
			return err
		}
		if strings.Contains(string(b), "populated 1") {
			return stage.Hint(refuse("cgroup %s holds processes in %s below it: not supported", dir, sub),
				"freeze the cgroup of the processes, or leave out --cgroup to freeze the tree in a cgroup of its own")
		}
	}
	return nil
}

// checkAll checks every process of procs but the root, recorded already,
// as the root was, and records them (their cgroup is dir).
func (f *Frozen) checkAll(procs []int, dir string) error {
	sts := make([]*proc.Stat, len(procs))
	err := par.For(len(procs), par.Workers(len(procs)), func(i int) error {
		if procs[i] == f.Root {
			return nil
		}
		st, err := check(procs[i])
		if err != nil {
			if st, serr := proc.ReadStat(procs[i]); serr != nil || st.State == 'Z' {
				return nil // exiting as it froze: describe records a zombie
			}
			return err
		}
		sts[i] = st
		return nil
	})
	if err != nil {
		return err
	}
	for i, pid := range procs {
		if sts[i] != nil {
			f.Tasks = append(f.Tasks, Task{Pid: pid, StartTime: sts[i].StartTime, Cgroup2: dir})
		}
	}
	return nil
}

// adoptStable moves descendants into dir until a round finds none.
func (f *Frozen) adoptStable(dir string, rounds int) error {
	for i := 0; i < rounds; i++ {
		n, err := f.adopt(dir)
		if err != nil || n == 0 {
			return err
		}
	}
	return fmt.Errorf("pid %d: the tree keeps growing; cannot catch up with it", f.Root)
}

// adopt walks the tree from the root and moves every live process not
// moved yet into dir, after the same checks as the root. It returns how
// many it moved. Each generation is looked at on every core; its new
// processes are recorded in dir's state at once, then moved.
func (f *Frozen) adopt(dir string) (int, error) {
	known := map[int]bool{}
	for _, t := range f.Tasks {
		known[t.Pid] = true
	}
	moved := 0
	mount := filepath.Dir(dir)
	type look struct {
		st       *proc.Stat // nil: known, gone, or a zombie (recorded, not moved: it is in no cgroup)
		checkErr error
		exited   bool   // while checked (a shell's short-lived child): not in the tree
		rel      string // its cgroup ("": gone meanwhile)
	}
	err := walkTree(f.Root, func(gen []int) ([]int, error) {
		looks := make([]look, len(gen))
		par.For(len(gen), par.Workers(len(gen)), func(i int) error {
			pid, l := gen[i], &looks[i]
			if known[pid] {
				return nil
			}
			st, err := proc.ReadStat(pid)
			if err != nil || st.State == 'Z' {
				return nil
			}
			l.st = st
			if _, l.checkErr = check(pid); l.checkErr != nil {
				if st, err := proc.ReadStat(pid); err != nil || st.State == 'Z' {
					l.st, l.checkErr, l.exited = nil, nil, true
				}
				return nil
			}
			l.rel, _ = proc.Cgroup2Of(pid)
			return nil
		})
		var descend, move []int
		for i, pid := range gen {
			l := looks[i]
			switch {
			case l.checkErr != nil:
				return nil, l.checkErr
			case l.exited:
				continue
			case l.st != nil && l.rel != "":
				f.Tasks = append(f.Tasks, Task{Pid: pid, StartTime: l.st.StartTime, Cgroup2: filepath.Join(mount, l.rel)})
				move = append(move, pid)
			}
			descend = append(descend, pid)
		}
		if len(move) == 0 {
			return descend, nil
		}
		// Recorded before moved: a thaw after a crash finds where they were.
		if err := setState(dir, f.Tasks); err != nil {
			return nil, err
		}
		for _, pid := range move {
			if err := writeFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
				if errors.Is(err, unix.ESRCH) {
					continue
				}
				return nil, fmt.Errorf("pid %d: move into %s: %w", pid, dir, err)
			}
			moved++
		}
		return descend, nil
	})
	return moved, err
}

// walkTree visits root and its descendants breadth first, a generation at
// a time (parents before children): visit gets the processes of one
// generation not visited before and returns those to go on below.
func walkTree(root int, visit func(gen []int) (descend []int, err error)) error {
	seen := map[int]bool{root: true}
	gen := []int{root}
	for len(gen) > 0 {
		descend, err := visit(gen)
		if err != nil {
			return err
		}
		// Read on every core: a wide generation has as many lists of children.
		kids := make([][]int, len(descend))
		err = par.For(len(descend), par.Workers(len(descend)), func(i int) (err error) {
			kids[i], err = proc.Children(descend[i])
			if errors.Is(err, proc.ErrNoProcess) {
				err = nil
			}
			return err
		})
		if err != nil {
			return err
		}
		gen = nil
		for _, ks := range kids {
			for _, k := range ks {
				if !seen[k] {
					seen[k] = true
					gen = append(gen, k)
				}
			}
		}
	}
	return nil
}

// records describes every process of the frozen tree: the live ones in the
// cgroup, and zombies found among their children.
func (f *Frozen) records(inCgroup []int) ([]*pb.Process, error) {
	live := map[int]bool{}
	for _, pid := range inCgroup {
		live[pid] = true
	}
	var recs []*pb.Process
	ctty := map[*pb.Process]int{} // the pty that is a process's controlling terminal
	masters := map[int]bool{}     // ptys whose master a process of the tree holds
	type look struct {
		st      *proc.Stat
		rec     *pb.Process
		masters []int
		err     error
		gone    bool // it was exiting, and has been reaped (its parent ignores SIGCHLD)
	}
	err := walkTree(f.Root, func(gen []int) ([]int, error) {
		// Read on every core; the tree is frozen.
		looks := make([]look, len(gen))
		par.For(len(gen), par.Workers(len(gen)), func(i int) error {
			pid, l := gen[i], &looks[i]
			if l.st, l.err = proc.ReadStat(pid); l.err != nil {
				l.err = fmt.Errorf("pid %d vanished while frozen: %w", pid, l.err)
				return nil
			}
			if l.st.State != 'Z' && l.st.Flags&pfExiting != 0 {
				l.st, l.gone, l.err = awaitZombie(pid)
				if l.gone || l.err != nil {
					return nil
				}
			}
			if l.st.State == 'Z' || !live[pid] {
				return nil
			}
			if l.rec, l.err = processRecord(pid, l.st); l.err != nil {
				return nil
			}
			if l.masters, l.err = proc.PtyMasters(pid); l.err != nil {
				l.err = fmt.Errorf("pid %d: %w", pid, l.err)
			}
			return nil
		})
		var descend []int
		for i, pid := range gen {
			l := looks[i]
			if l.err != nil {
				return nil, l.err
			}
			if l.gone {
				delete(live, pid)
				continue
			}
			st := l.st
			if st.State == 'Z' {
				recs = append(recs, &pb.Process{Pid: uint32(pid), Ppid: uint32(st.Ppid), Pgid: uint32(st.Pgid), Sid: uint32(st.Sid),
					Comm: st.Comm, StartTime: st.StartTime, State: "Z", ExitCode: int32(st.ExitCode)})
				continue
			}
			if !live[pid] {
				return nil, fmt.Errorf("pid %d of the tree is not in %s", pid, f.Cgroup)
			}
			if pid == f.Root && st.StartTime != f.Tasks[0].StartTime {
				return nil, fmt.Errorf("pid %d: %w (the pid was reused during freezing)", pid, proc.ErrNoProcess)
			}
			delete(live, pid)
			recs = append(recs, l.rec)
			if i := proc.PtyIndex(st.TtyNr); i >= 0 {
				ctty[l.rec] = i
			}
			for _, m := range l.masters {
				masters[m] = true
			}
			descend = append(descend, pid)
		}
		return descend, nil
	})
	if err != nil {
		return nil, err
	}
	for rec, i := range ctty {
		if masters[i] {
			rec.CttyPty = uint32(i) + 1
		}
	}
	for pid := range live {
		return nil, fmt.Errorf("cgroup %s holds pid %d, which is not in the tree of pid %d", f.Cgroup, pid, f.Root)
	}
	return recs, nil
}

// pfExiting is PF_EXITING in the flags of /proc/PID/stat.
const pfExiting = 0x4

// awaitZombie waits for pid, which is exiting, to be a zombie. The freezer
// leaves an exiting task be, so a process killed or exiting as its tree
// froze goes on: it leaves its cgroup, then becomes a zombie (its frozen
// parent cannot reap it), and a dump records it as one. gone: it was
// reaped meanwhile (its parent ignores SIGCHLD), and is in no tree.
func awaitZombie(pid int) (st *proc.Stat, gone bool, err error) {
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; ; i++ {
		st, err := proc.ReadStat(pid)
		if err != nil {
			return nil, true, nil
		}
		if st.State == 'Z' {
			return st, false, nil
		}
		if time.Now().After(deadline) {
			return nil, false, fmt.Errorf("pid %d has been exiting for 5 s (state %c)", pid, st.State)
		}
		sys.Backoff(i)
	}
}

// check refuses, without changing anything, targets this stage cannot handle.
func check(pid int) (*proc.Stat, error) {
	if pid <= 0 {
		return nil, stage.Usagef("invalid pid %d", pid)
	}
	st, err := proc.ReadStat(pid)
	if err != nil {
		return nil, noProcess(pid, err)
	}
	const pfKthread = 0x00200000
	if pid == 1 {
		return nil, refuse("pid 1 (%s) is init: it cannot be checkpointed or killed", st.Comm)
	}
	if st.Flags&pfKthread != 0 {
		return nil, refuse("pid %d (%s) is a kernel thread", pid, st.Comm)
	}
	if st.State == 'Z' || st.State == 'X' {
		return nil, noProcess(pid, fmt.Errorf("pid %d (%s) is a zombie: %w", pid, st.Comm, proc.ErrNoProcess))
	}
	if selfAndAncestors()[pid] {
		return nil, stage.Hint(refuse("pid %d (%s) is cr-freeze itself or one of its ancestors", pid, st.Comm),
			"freezing it would freeze this pipeline; run the checkpoint from outside the target's process tree")
	}
	status, err := proc.ReadStatus(pid)
	if err != nil {
		return nil, noProcess(pid, err)
	}
	if status.TracerPid != 0 {
		return nil, stage.Hint(refuse("pid %d (%s) is traced by pid %d", pid, st.Comm, status.TracerPid),
			"detach the debugger or tracer first")
	}
	return st, nil
}

// selfAndAncestors is this process and its ancestors, read once: every
// process of a tree is checked against them.
var selfAndAncestors = sync.OnceValue(func() map[int]bool {
	up := map[int]bool{}
	for a := os.Getpid(); a > 1 && !up[a]; {
		up[a] = true
		st, err := proc.ReadStat(a)
		if err != nil {
			break
		}
		a = st.Ppid
	}
	return up
})

func processRecord(pid int, st *proc.Stat) (*pb.Process, error) {
	tids, err := proc.Threads(pid)
	if err != nil {
		return nil, err
	}
	p := &pb.Process{
		Pid: uint32(pid), Ppid: uint32(st.Ppid), Pgid: uint32(st.Pgid), Sid: uint32(st.Sid),
		Comm: st.Comm, StartTime: st.StartTime, State: string(st.State),
	}
	for _, t := range tids {
		p.Threads = append(p.Threads, uint32(t))
	}
	return p, nil
}

// Undo thaws what Freeze froze, as it was before.
func (f *Frozen) Undo() error {
	if f.InPlace {
		return thawInPlace(f.Cgroup, f.Root)
	}
	return thawDir(f.Cgroup, f.Tasks)
}

// Records returns the records that open the stream.
func (f *Frozen) Records() (*pb.Inventory, *pb.Freeze, []*pb.Process) {
	inv := &pb.Inventory{
		RootPid:         uint32(f.Root),
		CreatedUnixNano: time.Now().UnixNano(),
		ToolVersion:     ToolVersion,
		PageSize:        uint32(os.Getpagesize()),
	}
	inv.Hostname, _ = os.Hostname()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		inv.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	inv.BootId, _ = proc.BootID()
	fr := &pb.Freeze{Method: "cgroup2-transient", Cgroup: f.Cgroup, Transient: true}
	if f.InPlace {
		fr.Method, fr.Transient = "cgroup2-given", false
	}
	for _, t := range f.Tasks {
		fr.Original = append(fr.Original, &pb.TaskCgroup{Pid: uint32(t.Pid), Cgroup2: t.Cgroup2})
	}
	return inv, fr, f.Procs
}

// Thaw undoes a Freeze described by a stream's records: unfreeze, move the
// processes back to their original cgroups, remove the transient cgroup
// (or, frozen in place, unfreeze it and remove the state).
// procs (optional) supply start times so a reused pid is never moved.
func Thaw(fr *pb.Freeze, procs []*pb.Process) error {
	if fr == nil || fr.Cgroup == "" || len(fr.Original) == 0 {
		return errors.New("the stream has no freeze record")
	}
	if !fr.Transient {
		return thawInPlace(fr.Cgroup, int(fr.Original[0].Pid))
	}
	return thawDir(fr.Cgroup, tasksOf(fr, procs))
}

func tasksOf(fr *pb.Freeze, procs []*pb.Process) []Task {
	start := map[uint32]uint64{}
	for _, p := range procs {
		start[p.Pid] = p.StartTime
	}
	var ts []Task
	for _, o := range fr.Original {
		ts = append(ts, Task{Pid: int(o.Pid), StartTime: start[o.Pid], Cgroup2: o.Cgroup2})
	}
	return ts
}

// ThawPid thaws the cgroup pid was frozen in, using the state recorded on it.
// A pid that is not frozen is not an error: thaw is idempotent.
func ThawPid(pid int) (bool, error) {
	dir, tasks, inPlace, err := findPid(pid)
	if errors.Is(err, errNoState) {
		// cr-freeze died between creating the cgroup and recording its
		// state: nothing can have been moved in yet unless it is populated.
		if pids, _ := readPids(filepath.Join(dir, "cgroup.procs")); len(pids) > 0 {
			return false, stage.Hint(err, fmt.Sprintf("move the processes %v back by hand (echo PID > CGROUP/cgroup.procs) and rmdir %s", pids, dir))
		}
		writeFile(filepath.Join(dir, "cgroup.freeze"), "0")
		return true, rmdirWait(dir)
	}
	if errors.Is(err, ErrNotFrozen) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if inPlace {
		return true, thawInPlace(dir, pid)
	}
	return true, thawDir(dir, tasks)
}

// findPid finds the cgroup pid was frozen in, and its recorded tasks:
// the transient cgroup named after it, or (inPlace) its own cgroup, frozen
// in place with pid as the root.
func findPid(pid int) (dir string, tasks []Task, inPlace bool, err error) {
	mount, err := proc.Cgroup2Mount()
	if err != nil {
		return "", nil, false, err
	}
	dir = cgroupDir(mount, pid)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if own, tasks, ok := inPlaceOf(mount, pid); ok {
			return own, tasks, true, nil
		}
		return "", nil, false, fmt.Errorf("pid %d: no cgroup %s, and its own is not frozen by cr-freeze --cgroup: %w", pid, dir, ErrNotFrozen)
	}
	tasks, err = getState(dir)
	if err != nil {
		return dir, nil, false, fmt.Errorf("pid %d: %s has no crpipe state (%v): %w", pid, dir, err, errNoState)
	}
	return dir, tasks, false, nil
}

// inPlaceOf finds the state of a freeze in place whose root is pid, on
// the cgroup pid is in.
func inPlaceOf(mount string, pid int) (string, []Task, bool) {
	rel, err := proc.Cgroup2Of(pid)
	if err != nil {
		return "", nil, false
	}
	dir := filepath.Join(mount, rel)
	tasks, err := getState(dir)
	if err != nil || len(tasks) == 0 || tasks[0].Pid != pid {
		return "", nil, false
	}
	if st, err := proc.ReadStat(pid); err != nil || st.StartTime != tasks[0].StartTime {
		return "", nil, false // the state of an earlier process with that pid
	}
	return dir, tasks, true
}

// thawInPlace undoes a freeze in place of dir, whose tree's root is root:
// the TCP connections released, the cgroup thawed, what a dead stage left
// put back, the state removed.
func thawInPlace(dir string, root int) error {
	pids, err := readPids(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return fmt.Errorf("thaw %s: %w", dir, err)
	}
	// Stopped at a failure here, the tree stays frozen for another try.
	if err := releaseNetwork(netlock.TableName(root), pids); err != nil {
		return err
	}
	callsErr := putBackCalls(dir)
	if err := writeFile(filepath.Join(dir, "cgroup.freeze"), "0"); err != nil {
		return fmt.Errorf("thaw %s: %w", dir, err)
	}
	return errors.Join(callsErr, recoverStubs(dir, pids), removeState(dir))
}

// thawDir unfreezes dir, moves every process in it back to where it came
// from (a process not recorded goes where the first recorded one came
// from: it was forked inside), and removes dir.
func thawDir(dir string, tasks []Task) error {
	// A failure to release the TCP connections (cr-tcp's lock table is
	// named like the transient cgroup) or to put back what a dead stage
	// left does not stop the thaw: it is reported once the rest is done.
	var laterErr error
	if pids, err := readPids(filepath.Join(dir, "cgroup.procs")); err == nil {
		laterErr = releaseNetwork(filepath.Base(dir), pids)
	}
	laterErr = errors.Join(laterErr, putBackCalls(dir))
	if err := writeFile(filepath.Join(dir, "cgroup.freeze"), "0"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("thaw %s: %w", dir, err)
	}
	pids, err := readPids(filepath.Join(dir, "cgroup.procs"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	laterErr = errors.Join(laterErr, recoverStubs(dir, pids))
	var errs []error
	for _, pid := range pids {
		dst := ""
		for _, t := range tasks {
			if t.Pid == pid {
				dst = t.Cgroup2
			}
		}
		if dst == "" && len(tasks) > 0 {
			dst = tasks[0].Cgroup2
		}
		if dst == "" {
			errs = append(errs, fmt.Errorf("pid %d: no original cgroup recorded", pid))
			continue
		}
		if err := writeFile(filepath.Join(dst, "cgroup.procs"), strconv.Itoa(pid)); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("pid %d: move back to %s: %w", pid, dst, err))
		}
	}
	if len(errs) > 0 {
		return stage.Hint(errors.Join(append(errs, laterErr)...), fmt.Sprintf("the processes are thawed but still in %s; move them by hand with echo PID > CGROUP/cgroup.procs", dir))
	}
	if err := rmdirWait(dir); err != nil {
		return errors.Join(err, laterErr)
	}
	return laterErr
}

// putBackCalls gives the threads a stage that died in a frozen injected
// call left trapped by the freezer their own registers back, before the
// thaw lets them run (inject.PutBackCalls).
func putBackCalls(dir string) error {
	fixed, err := inject.PutBackCalls(dir)
	for _, tid := range fixed {
		fmt.Fprintf(os.Stderr, "%s: tid %d: a stage died while it injected a call into the thread; its registers are put back\n", filepath.Base(os.Args[0]), tid)
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("putting back the threads a stage left in an injected call: %w", err)
	}
	return nil
}

// recoverStubs puts back the threads a stage that died while its code ran
// in them left behind (lib/inject/recover.go), once they are thawed: the
// recovery runs code in them. Then the signal masks a dead stage left
// blocked, from the records on dir, the frozen cgroup (inject.KeepMasks).
func recoverStubs(dir string, pids []int) error {
	var errs []error
	for _, pid := range pids {
		found, err := inject.RecoverStub(pid)
		if found {
			fmt.Fprintf(os.Stderr, "%s: pid %d: a stage died while its code ran in the process; its threads are put back as they were\n", filepath.Base(os.Args[0]), pid)
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("pid %d: putting back what a dead stage left: %w", pid, err))
		}
	}
	fixed, unmapped, err := inject.PutBackMasks(dir)
	for _, pid := range unmapped {
		fmt.Fprintf(os.Stderr, "%s: pid %d: a stage died while it mapped its code into the process; the mapping is removed\n", filepath.Base(os.Args[0]), pid)
	}
	for _, pid := range fixed {
		fmt.Fprintf(os.Stderr, "%s: pid %d: a stage died with the process's signals blocked; its threads' signal masks are put back\n", filepath.Base(os.Args[0]), pid)
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("putting back the signal masks a dead stage left: %w", err))
	}
	return errors.Join(errs...)
}

// releaseNetwork undoes cr-tcp's hold on the TCP connections of processes
// that go on running: sockets out of repair mode, network lock lifted
// (lib/netlock). Before unfreezing, so no task sees a socket in repair.
// (The non-transient thaw stops at a failure here: it has nothing else to
// undo, and the processes stay frozen for another try.)
func releaseNetwork(table string, pids []int) error {
	n, err := netlock.Release(table, pids)
	if n > 0 {
		stage.Logf("%d TCP connections out of repair mode, network lock %s lifted", n, table)
	}
	if err != nil {
		return stage.Hint(fmt.Errorf("releasing the TCP connections: %w", err),
			fmt.Sprintf("fix the cause and run cr-freeze thaw --pid again, or remove the lock with nft delete table inet %s", table))
	}
	return nil
}

// Kill kills the processes of a Freeze after checking that the cgroup
// holds exactly the recorded processes (pid and start time), waits until it
// is empty and removes it.
func Kill(fr *pb.Freeze, procs []*pb.Process) error {
	if fr == nil || fr.Cgroup == "" {
		return errors.New("the stream has no freeze record")
	}
	if len(procs) == 0 {
		return errors.New("the stream has no process records: cannot check identities before killing")
	}
	return killDir(fr.Cgroup, tasksOf(fr, procs), fr.Transient)
}

// KillPid kills the processes in the cgroup pid was frozen in.
func KillPid(pid int) error {
	dir, tasks, inPlace, err := findPid(pid)
	if err != nil {
		return stage.Hint(err, "only a process frozen by cr-freeze --pid can be killed this way")
	}
	return killDir(dir, tasks, !inPlace)
}

func killDir(dir string, tasks []Task, transient bool) error {
	pids, err := readPids(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("no cgroup %s: %w", dir, ErrNotFrozen)
		}
		return err
	}
	known := map[int]uint64{}
	for _, t := range tasks {
		known[t.Pid] = t.StartTime
	}
	inCgroup := map[int]bool{}
	for _, pid := range pids {
		inCgroup[pid] = true
	}
	var orphans []*proc.Stat // killed with their parent: reaped by whoever adopts them
	for _, pid := range pids {
		want, ok := known[pid]
		if !ok {
			return fmt.Errorf("cgroup %s holds pid %d which this checkpoint did not freeze; refusing to kill", dir, pid)
		}
		st, err := proc.ReadStat(pid)
		if err != nil {
			continue // gone already
		}
		if want != 0 && st.StartTime != want {
			return fmt.Errorf("pid %d in %s started at %d, not %d as recorded; refusing to kill", pid, dir, st.StartTime, want)
		}
		if inCgroup[st.Ppid] {
			orphans = append(orphans, st)
		}
	}
	// A cgroup frozen in place is someone else's, and on Linux 6.18 a
	// write to cgroup.kill leaves it killing every process cloned into it
	// later (CLONE_INTO_CGROUP, as container runtimes and cr-restore
	// start processes): its processes are signalled one by one instead,
	// as where cgroup.kill is missing (before Linux 5.14). Frozen, none
	// can fork meanwhile, and none was added (checked above).
	err = os.ErrNotExist
	if transient {
		err = writeFile(filepath.Join(dir, "cgroup.kill"), "1")
	}
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("kill %s: %w", dir, err)
		}
		for _, pid := range pids {
			unix.Kill(pid, unix.SIGKILL)
		}
		writeFile(filepath.Join(dir, "cgroup.freeze"), "0")
	}
	if err := waitEvent(dir, "populated", "0", 10*time.Second); err != nil {
		return fmt.Errorf("kill %s: %w", dir, err)
	}
	waitReaped(orphans, 2*time.Second)
	if !transient {
		// Frozen in place: the cgroup is someone else's, left as it was
		// before, thawed (empty now) and without the state.
		if err := writeFile(filepath.Join(dir, "cgroup.freeze"), "0"); err != nil {
			return fmt.Errorf("thaw %s after the kill: %w", dir, err)
		}
		return removeState(dir)
	}
	return rmdirWait(dir)
}

// waitReaped waits, at most timeout, until the killed processes of procs
// are reaped (by init or a subreaper, their parent having died with them).
// A zombie keeps its pid, and the pid of its process group and session:
// a restore right after the kill would find them in use.
func waitReaped(procs []*proc.Stat, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for _, want := range procs {
		for {
			st, err := proc.ReadStat(want.Pid)
			if err != nil || st.StartTime != want.StartTime {
				break
			}
			if time.Now().After(deadline) {
				stage.Logf("pid %d, killed, is not reaped yet by its parent %d: its pid stays in use until it is", want.Pid, st.Ppid)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func rmdirWait(dir string) error {
	// The last task leaving may still be on its way out: retry briefly.
	var err error
	for i := 0; i < 200; i++ {
		err = unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}

func readPids(path string) ([]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %q: %w", path, f, err)
		}
		pids = append(pids, n)
	}
	return pids, nil
}

func writeFile(path, s string) error {
	return sys.CgroupWrite(filepath.Dir(path), filepath.Base(path), s)
}

func waitEvent(dir, key, value string, timeout time.Duration) error {
	return sys.CgroupWaitEvent(dir, key, value, timeout)
}

// state is what the transient cgroup's xattr holds: every task moved in
// and its original cgroup, as an index into Cgroups. A tree's processes
// share a handful of cgroups, and an xattr holds at most 64 KiB: about
// 2,700 tasks this way, against 1,000 with the path repeated in each.
type state struct {
	Cgroups []string    `json:"cgroups"`
	Tasks   [][3]uint64 `json:"tasks"` // pid, start time, index in Cgroups
}

// maxStateSize is XATTR_SIZE_MAX.
const maxStateSize = 64 << 10

func encodeState(tasks []Task) ([]byte, error) {
	var st state
	index := map[string]uint64{}
	for _, t := range tasks {
		// JSON carries UTF-8 only: a cgroup name with other bytes (any
		// but '/' may stand in one) would come back changed, and the
		// thaw would have nowhere to put the process.
		if !utf8.ValidString(t.Cgroup2) {
			return nil, stage.Hint(refuse("pid %d: its cgroup %q is not valid UTF-8: cr-freeze could not record it to put the process back", t.Pid, t.Cgroup2),
				"rename the cgroup (a name of UTF-8 characters), then checkpoint")
		}
		i, ok := index[t.Cgroup2]
		if !ok {
			i = uint64(len(st.Cgroups))
			index[t.Cgroup2] = i
			st.Cgroups = append(st.Cgroups, t.Cgroup2)
		}
		st.Tasks = append(st.Tasks, [3]uint64{uint64(t.Pid), t.StartTime, i})
	}
	b, err := json.Marshal(st)
	if err == nil && len(b) > maxStateSize {
		return nil, stage.Hint(refuse("%d processes are too many to record where they came from (%d bytes, at most %d)", len(tasks), len(b), maxStateSize),
			"cr-freeze records at most about 2,700 processes per checkpoint")
	}
	return b, err
}

func decodeState(b []byte) ([]Task, error) {
	if bytes.HasPrefix(b, []byte("[")) {
		// The layout before (one object per task): a cgroup left
		// frozen by an older build is thawed all the same.
		var tasks []Task
		return tasks, strictJSON(b, &tasks)
	}
	var st state
	if err := strictJSON(b, &st); err != nil {
		return nil, err
	}
	tasks := make([]Task, 0, len(st.Tasks))
	for _, t := range st.Tasks {
		if t[2] >= uint64(len(st.Cgroups)) || t[0] == 0 || t[0] >= 1<<22 { // PID_MAX_LIMIT
			return nil, fmt.Errorf("malformed state: task %v", t)
		}
		tasks = append(tasks, Task{Pid: int(t[0]), StartTime: t[1], Cgroup2: st.Cgroups[t[2]]})
	}
	return tasks, nil
}

func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// removeStale removes dir, the transient cgroup of pid, when it is what a
// checkpoint of an earlier process with that pid left behind: empty, and
// recorded for another start time (the process was killed frozen, without
// cr-freeze kill). A later process given the same pid could not be
// checkpointed otherwise. A cgroup of this very process is never removed
// here: that checkpoint may be in progress (cr-freeze thaw clears it).
func removeStale(dir string, pid int, start uint64) bool {
	tasks, err := getState(dir)
	if err != nil || len(tasks) == 0 || tasks[0].Pid == pid && tasks[0].StartTime == start {
		return false
	}
	if pids, err := readPids(filepath.Join(dir, "cgroup.procs")); err != nil || len(pids) > 0 {
		return false
	}
	if os.Remove(dir) != nil {
		return false
	}
	stage.Logf("pid %d: removed %s, left by a checkpoint of an earlier process %d", pid, dir, tasks[0].Pid)
	return true
}

func setState(dir string, tasks []Task) error {
	b, err := encodeState(tasks)
	if err != nil {
		return err
	}
	return unix.Setxattr(dir, xattrName, b, 0)
}

// removeState removes the state of a freeze in place, and any record of
// signal masks or registers a dead stage left on it; none is no error.
func removeState(dir string) error {
	if err := unix.Removexattr(dir, xattrName); err != nil && !errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("remove the state on %s: %w", dir, err)
	}
	return errors.Join(inject.ForgetMasks(dir), inject.ForgetCalls(dir))
}

func getState(dir string) ([]Task, error) {
	buf := make([]byte, maxStateSize)
	n, err := unix.Getxattr(dir, xattrName, buf)
	if err != nil {
		return nil, err
	}
	return decodeState(buf[:n])
}

func noProcess(pid int, err error) error {
	if errors.Is(err, proc.ErrNoProcess) || errors.Is(err, unix.ESRCH) {
		return stage.Hint(fmt.Errorf("pid %d: no such process", pid), fmt.Sprintf("check the pid (ps -p %d); the process may have exited", pid))
	}
	return permission(pid, err)
}

func permission(pid int, err error) error {
	if errors.Is(err, os.ErrPermission) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return stage.Hint(err, "checkpointing needs root (CAP_SYS_ADMIN and CAP_SYS_PTRACE) to move the process into a new cgroup and trace it")
	}
	return err
}
