// Package tree holds the rules of a process tree in a stream, shared by
// cr-freeze (which refuses at dump time what cannot be restored) and
// cr-restore (which rebuilds the tree): one root, parents before children,
// and sessions and process groups that inheritance, setsid and setpgid can
// rebuild.
package tree

import (
	"fmt"

	"crpipe/lib/pb"
)

// Order returns the processes with the root first and every parent before
// its children, or an error when they do not form one tree.
func Order(procs []*pb.Process) ([]*pb.Process, error) {
	byPid := map[uint32]*pb.Process{}
	for _, p := range procs {
		if _, dup := byPid[p.Pid]; dup || p.Pid == 0 {
			return nil, fmt.Errorf("duplicate or zero pid %d", p.Pid)
		}
		byPid[p.Pid] = p
	}
	var root *pb.Process
	for _, p := range procs {
		if _, ok := byPid[p.Ppid]; ok && p.Ppid != p.Pid {
			continue
		}
		if root != nil {
			return nil, fmt.Errorf("pids %d and %d both have their parent outside the tree: a stream has one root", root.Pid, p.Pid)
		}
		root = p
	}
	if root == nil {
		return nil, fmt.Errorf("the process records form no tree (a parent cycle)")
	}
	order := []*pb.Process{root}
	for i := 0; i < len(order); i++ {
		for _, p := range procs {
			if p.Ppid == order[i].Pid && p != root {
				order = append(order, p)
			}
		}
	}
	if len(order) != len(procs) {
		return nil, fmt.Errorf("the process records form no tree (%d of %d reachable from pid %d)", len(order), len(procs), root.Pid)
	}
	return order, nil
}

// Check refuses sessions and process groups that cannot be rebuilt by
// inheritance, setsid and setpgid: a process must be in its parent's
// session or lead its own, and in its parent's group, its own, or the group
// of a process in the tree.
func Check(procs []*pb.Process) error {
	byPid := map[uint32]*pb.Process{}
	for _, p := range procs {
		byPid[p.Pid] = p
	}
	for _, p := range procs {
		if p.Sid == p.Pid && p.Pgid != p.Pid {
			// setpgid refuses a session leader: no process is ever so.
			return fmt.Errorf("pid %d leads session %d but is in process group %d", p.Pid, p.Sid, p.Pgid)
		}
		parent, ok := byPid[p.Ppid]
		if !ok {
			continue // the root
		}
		if p.Sid != parent.Sid && p.Sid != p.Pid {
			return fmt.Errorf("pid %d is in session %d, neither its parent's (%d) nor its own: not supported yet", p.Pid, p.Sid, parent.Sid)
		}
		if _, inTree := byPid[p.Pgid]; p.Pgid != p.Pid && !inTree && p.Pgid != parent.Pgid {
			return fmt.Errorf("pid %d is in process group %d, whose leader is not in the tree: not supported yet", p.Pid, p.Pgid)
		}
	}
	return nil
}
