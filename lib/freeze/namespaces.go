package freeze

import (
	"fmt"
	"maps"
	"os"
	"slices"

	"crpipe/lib/internal/par"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// A restore recreates a tree inside the namespaces cr-restore runs in: the
// tree's network, mount, UTS, IPC, cgroup and time namespaces are the
// "host" it lives in, and a restore elsewhere is a migration to another
// host. Three kinds of tree would come back wrong, and are refused:
//   - processes (or threads) that do not share those namespaces with the
//     root: a restore would put them all into one;
//   - a user or PID namespace other than cr-freeze's own: the image holds
//     pids and credentials as seen from here, which a restore would give
//     the processes as their own (a process with every capability in a
//     user namespace of its own would get them on the host);
//   - a process that unshared a PID or time namespace its next children
//     would be born into (pid_for_children, time_for_children).
var (
	// treeNamespaces are those every process of the tree must share with
	// the root; the last two also with cr-freeze.
	treeNamespaces = []string{"net", "mnt", "uts", "ipc", "cgroup", "time", "user", "pid"}
	ownNamespaces  = []string{"user", "pid"}
	// childNamespaces[k] must be the process's own k.
	childNamespaces = map[string]string{"pid_for_children": "pid", "time_for_children": "time"}
	// threadNamespaces are looked at in every thread: a thread can change
	// its network, UTS, IPC or cgroup namespace alone (setns, unshare; not
	// its mount or user namespace once the process has threads). Only the
	// network namespace is: a thread that serves another network is the
	// case met in practice, and each look costs ~5 µs (500 threads: 2.5 ms).
	threadNamespaces = []string{"net"}
)

// nsLink is what /proc/PID/task/TID/ns/KIND names ("net:[4026531840]"),
// or "" when the kernel has no such namespace.
func nsLink(pid, tid uint32, kind string) (string, error) {
	l, err := os.Readlink(fmt.Sprintf("/proc/%d/task/%d/ns/%s", pid, tid, kind))
	if os.IsNotExist(err) {
		if _, serr := os.Stat(fmt.Sprintf("/proc/%d/task/%d", pid, tid)); serr == nil {
			return "", nil // a kernel without this kind of namespace
		}
	}
	if err != nil {
		return "", noProcess(int(pid), err)
	}
	return l, nil
}

// checkNamespaces refuses a frozen tree (root first) that a restore would
// bring back in the wrong namespaces (see above). The links are read on
// every core first (~5 µs each, ten a process), then looked at in order.
func checkNamespaces(procs []*pb.Process) error {
	kinds := append(slices.Collect(maps.Keys(childNamespaces)), treeNamespaces...)
	type links struct {
		ns      map[string]string
		threads []map[string]string // of p.Threads[1:]
	}
	all := make([]links, len(procs))
	err := par.For(len(procs), par.Workers(len(procs)), func(i int) error {
		p := procs[i]
		if p.State == "Z" || len(p.Threads) == 0 {
			return nil // a zombie has no namespaces left
		}
		read := func(tid uint32, kinds []string) (map[string]string, error) {
			ns := make(map[string]string, len(kinds))
			for _, kind := range kinds {
				l, err := nsLink(p.Pid, tid, kind)
				if err != nil {
					return nil, err
				}
				ns[kind] = l
			}
			return ns, nil
		}
		var err error
		if all[i].ns, err = read(p.Pid, kinds); err != nil {
			return err
		}
		for _, tid := range p.Threads[1:] {
			ns, err := read(tid, threadNamespaces)
			if err != nil {
				return err
			}
			all[i].threads = append(all[i].threads, ns)
		}
		return nil
	})
	if err != nil {
		return err
	}
	var root *pb.Process
	rootNs := map[string]string{}
	for i, p := range procs {
		ns := all[i].ns
		if ns == nil {
			continue
		}
		if root == nil {
			root, rootNs = p, ns
			for _, kind := range ownNamespaces {
				ours, err := os.Readlink("/proc/self/ns/" + kind)
				if err != nil {
					return fmt.Errorf("cr-freeze's own %s namespace: %w", kind, err)
				}
				if ns[kind] != "" && ns[kind] != ours {
					return stage.Hint(refuse("pid %d (%s) is in a %s namespace of its own (%s; cr-freeze is in %s): a restore would give it the pids and credentials seen from here; not supported",
						p.Pid, p.Comm, kind, ns[kind], ours),
						"run the checkpoint (every stage) and the restore inside that namespace, e.g. with nsenter")
				}
			}
		}
		for child, own := range childNamespaces {
			if ns[child] != ns[own] {
				return stage.Hint(refuse("pid %d (%s): its next children would be born in another %s namespace (%s, it is in %s: unshare without fork); not supported",
					p.Pid, p.Comm, own, ns[child], ns[own]),
					"checkpoint it before it unshares, or once its child exists")
			}
		}
		for _, kind := range treeNamespaces {
			if ns[kind] != rootNs[kind] {
				return differs(p, p.Pid, kind, ns[kind], root, rootNs[kind])
			}
		}
		for j, tid := range p.Threads[1:] {
			for _, kind := range threadNamespaces {
				if l := all[i].threads[j][kind]; l != ns[kind] {
					return differs(p, tid, kind, l, root, rootNs[kind])
				}
			}
		}
	}
	return nil
}

func differs(p *pb.Process, tid uint32, kind, l string, root *pb.Process, rootL string) error {
	who := fmt.Sprintf("pid %d (%s)", p.Pid, p.Comm)
	if tid != p.Pid {
		who = fmt.Sprintf("thread %d of pid %d (%s)", tid, p.Pid, p.Comm)
	}
	return stage.Hint(refuse("%s is in another %s namespace (%s) than the root, pid %d (%s: %s): a restore would put the whole tree into one; not supported",
		who, kind, l, root.Pid, root.Comm, rootL),
		"checkpoint a tree whose processes share their namespaces")
}
