package restore

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// --dumped-cgroups: every process starts in the cgroup v2 directory it was
// dumped from (cr-freeze records them, Freeze.original), as a restart on
// the same machine wants: its resource limits and whoever accounts it by
// cgroup (systemd) see it again. The root's helper starts in the root's
// (CLONE_INTO_CGROUP, as with --cgroup); a child whose cgroup differs from
// its parent's is moved right after its clone, before it runs anything of
// its own. Every directory must exist: checked before anything is created.

func init() {
	registerRecord(image.TypeFreeze, func(rc *Ctx, f *image.Frame) error {
		rc.freeze = &pb.Freeze{}
		return image.Unmarshal(f, rc.freeze)
	})
}

// planCgroups finds each live process's dumped cgroup and opens the root's.
func (rc *Ctx) planCgroups() error {
	if rc.freeze == nil {
		return fmt.Errorf("--dumped-cgroups: the image has no freeze record, which names the cgroups")
	}
	dirs := map[uint32]string{}
	for _, o := range rc.freeze.Original {
		dirs[o.Pid] = o.Cgroup2
	}
	rc.cgroupOf = map[uint32]string{}
	for _, t := range rc.Order {
		if t.zombie() {
			continue // in no cgroup
		}
		dir := dirs[t.proc.Pid]
		if dir == "" {
			return fmt.Errorf("--dumped-cgroups: the image records no cgroup for pid %d", t.proc.Pid)
		}
		f, err := openCgroup(dir)
		if err != nil {
			return stage.Hint(fmt.Errorf("pid %d was dumped in cgroup %s: %w", t.proc.Pid, dir, err),
				"create that cgroup (mkdir), or restore with --cgroup DIR, or into cr-restore's own cgroup (neither flag)")
		}
		if t == rc.Order[0] {
			rc.cgroup = f
			rc.owned = append(rc.owned, f)
		} else {
			f.Close()
		}
		rc.cgroupOf[t.proc.Pid] = dir
	}
	return nil
}

// moveToDumpedCgroup moves t, just cloned from its parent's restorer, into
// its own dumped cgroup when it differs from the parent's.
func (rc *Ctx) moveToDumpedCgroup(t *task) error {
	if rc.cgroupOf == nil || t.parent == nil || t.zombie() {
		return nil
	}
	dir := rc.cgroupOf[t.proc.Pid]
	if dir == rc.cgroupOf[t.parent.proc.Pid] {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(t.pid)), 0); err != nil {
		return fmt.Errorf("pid %d: into its dumped cgroup %s: %w", t.proc.Pid, dir, err)
	}
	return nil
}
