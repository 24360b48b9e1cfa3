package files

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/internal/par"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// File locks. The kernel (fs/locks.c, show_fd_locks) lists in the fdinfo of
// an fd the locks taken through its open file description that this fd's
// process owns: flock and OFD locks, owned by the description, show on every
// fd of it in every process; a POSIX lock, owned by a process (its fd
// table), shows only on that process's fds of the description it was taken
// through. So the fdinfo lines tie every lock to its owner. A POSIX lock
// cannot outlive its owner's last fd of the file (any close drops them all),
// so none hides from the fdinfo; /proc/locks is read only for a lock held
// through a mapping alone (mappedLocks, below): each read takes
// file_rwsem for writing, an RCU grace period (12-25 ms here) per dump.
// flock locks show the pid that took them (not an owner), OFD locks -1.

// lockLine is one lock as lock_get_status prints it in the "lock:" lines of
// an fdinfo (waiters, "N: -> POSIX ...", show only in /proc/locks):
//
//	1: POSIX  ADVISORY  WRITE 14504 fe:00:9986145 10 29
//	2: OFDLCK ADVISORY  READ -1 fe:00:9986145 50 EOF
//	3: FLOCK  ADVISORY  WRITE 14504 fe:00:9986129 0 EOF
//	4: LEASE  ACTIVE    READ 14504 fe:00:9986129 0 EOF
type lockLine struct {
	class string // POSIX, OFDLCK, FLOCK, LEASE, DELEG, ...
	mode  string // ADVISORY, MANDATORY (before Linux 5.15); a lease's state
	write bool
	pid   int
	inode string // MAJ:MIN:INO of the locked inode, as printed
	start int64
	end   int64 // last byte; -1: to the end of the file
}

func parseLockLine(s string) (lockLine, error) {
	var l lockLine
	f := strings.Fields(s)
	if len(f) != 8 || !strings.HasSuffix(f[0], ":") {
		return l, fmt.Errorf("lock line %q: %w", s, errFdinfoSyntax)
	}
	l.class, l.mode, l.inode = f[1], f[2], f[5]
	switch f[3] {
	case "WRITE":
		l.write = true
	case "READ", "UNLCK":
	default:
		return l, fmt.Errorf("lock line %q: type %q: %w", s, f[3], errFdinfoSyntax)
	}
	var err1, err2, err3 error
	l.pid, err1 = strconv.Atoi(f[4])
	l.start, err2 = strconv.ParseInt(f[6], 10, 64)
	if l.end = -1; f[7] != "EOF" {
		l.end, err3 = strconv.ParseInt(f[7], 10, 64)
	}
	if err := errors.Join(err1, err2, err3); err != nil || l.start < 0 || l.end < -1 || (l.end >= 0 && l.end < l.start) {
		return l, fmt.Errorf("lock line %q: %w", s, errFdinfoSyntax)
	}
	return l, nil
}

func (l lockLine) rangeString() string {
	if l.end < 0 {
		return fmt.Sprintf("bytes %d-EOF", l.start)
	}
	return fmt.Sprintf("bytes %d-%d", l.start, l.end)
}

func (l lockLine) typeString() string {
	if l.write {
		return "write"
	}
	return "read"
}

// lockKinds are the lock classes a restore takes again.
var lockKinds = map[string]pb.FileLockKind{
	"POSIX":  pb.FileLockKind_LOCK_POSIX,
	"OFDLCK": pb.FileLockKind_LOCK_OFD,
	"FLOCK":  pb.FileLockKind_LOCK_FLOCK,
}

// lockable are the fd kinds whose locks a restore takes again: files it
// opens as they were (a lock on a pipe or socket is refused).
var lockable = map[pb.FdKind]bool{pb.FdKind_FD_REGULAR: true, pb.FdKind_FD_DIRECTORY: true, pb.FdKind_FD_MEMFD: true}

// dumpLocks records every lock shown on an fd of the dump in the Files of
// the process that takes it again: a flock or OFD lock once per
// description, through the first fd that has it; a POSIX lock in its owner,
// through the fd it shows on.
func (d *dumper) dumpLocks() error {
	files := map[int]*pb.Files{}
	for _, fs := range d.files {
		files[int(fs.Pid)] = fs
	}
	seen := map[string]bool{}
	for _, e := range d.entries {
		for _, line := range bytes.Split(e.info, []byte{'\n'}) {
			text, ok := bytes.CutPrefix(line, []byte("lock:"))
			if !ok {
				continue
			}
			l, err := parseLockLine(string(text))
			if err != nil {
				return cannot(e, "%v", err)
			}
			lk, err := lockOf(e, l)
			if err != nil {
				return err
			}
			key := posixKey(e.pid, l)
			if lk.Kind != uint32(pb.FileLockKind_LOCK_POSIX) {
				key = fmt.Sprintf("desc %d %s %v %d %d", e.desc.id, l.class, l.write, l.start, l.end)
			}
			if seen[key] {
				continue // another fd of the description
			}
			seen[key] = true
			if e.flight != "" { // no process of the dump holds it to take the lock again
				return stage.Hint(cannot(e, "holds a %s lock, and only a queued message holds the file", l.class),
					"checkpoint again once the program has received it")
			}
			fs := files[e.pid]
			fs.Locks = append(fs.Locks, lk)
		}
	}
	return nil
}

func posixKey(pid int, l lockLine) string {
	return fmt.Sprintf("posix %d %s %v %d %d", pid, l.inode, l.write, l.start, l.end)
}

// lockOf is the record of lock l shown on e, or why it cannot be restored.
func lockOf(e *entry, l lockLine) (*pb.FileLock, error) {
	kind, ok := lockKinds[l.class]
	switch {
	case !ok: // leases are refused by refuseLease
		return nil, cannot(e, "holds a lock of a kind cr-files does not know (%s)", l.class)
	case l.mode != "ADVISORY":
		return nil, cannot(e, "holds a %s %s lock, which is not supported", strings.ToLower(l.mode), l.class)
	case !lockable[e.kind()]:
		return nil, stage.Hint(cannot(e, "holds a %s lock: locks on a %s are not supported", l.class, e.kindName()),
			"unlock it before checkpointing")
	case kind == pb.FileLockKind_LOCK_POSIX && l.pid != e.pid:
		return nil, cannot(e, "a POSIX lock (%s) owned by pid %d shows in the fd table of pid %d: its owner cannot be determined (fd tables shared between processes are not supported)",
			l.rangeString(), l.pid, e.pid)
	}
	lk := &pb.FileLock{Kind: uint32(kind), Write: l.write, Start: l.start, Fd: int32(e.fd), DescId: e.desc.id}
	if l.end >= 0 {
		lk.Length = l.end - l.start + 1
	}
	return lk, nil
}

// refuseLease refuses an fd whose description holds a lease (or an NFS
// delegation): a restore does not take leases. Checked before O_ASYNC,
// which F_SETLEASE sets for its SIGIO.
func refuseLease(pid, fd int, link string, info []byte) error {
	for _, line := range bytes.Split(info, []byte{'\n'}) {
		text, ok := bytes.CutPrefix(line, []byte("lock:"))
		if !ok {
			continue
		}
		if l, err := parseLockLine(string(text)); err == nil && (l.class == "LEASE" || l.class == "DELEG") {
			return stage.Hint(fmt.Errorf("pid %d fd %d: %s: holds a %s lease (F_SETLEASE)", pid, fd, link, l.typeString()),
				"release the lease (fcntl F_SETLEASE F_UNLCK) before checkpointing: a restore does not take leases")
		}
	}
	return nil
}

// A flock or OFD lock belongs to an open file description, and a memory
// mapping holds its description as well as an fd does: a program may lock
// a file, map it shared and close the fd (a database's way; a JVM's perf
// data file, /tmp/hsperfdata_USER/PID). Such a lock shows in no fdinfo,
// only in /proc/locks. So where a shared mapping of a process of the dump
// maps a file that no fd of the dump holds, /proc/locks is read (then
// only: each read waits for an RCU grace period, see above), and a lock on
// that file taken by a process of the dump (flock shows its taker; an OFD
// lock shows none) is recorded with the mapping's address
// (FileLock.vma_start): a restore takes it again on the description it
// maps the file with. Private mappings are left out: every process maps
// its libraries so. cr-files reads the mappings from /proc itself, not
// from cr-pages' Mm records, so that it may come before cr-pages in the
// pipeline (doc/performance.md, 50).

// sharedMapping is a shared file mapping of a process of the dump, with
// the device and inode of the mapped file as fstat shows them.
type sharedMapping struct {
	pid        uint32
	start, end uint64
	path       string
	dev, inode uint64
}

// sharedMappings reads the shared file mappings of every live process of
// the dump.
func (d *dumper) sharedMappings() ([]sharedMapping, error) {
	live := d.live()
	of := make([][]sharedMapping, len(live))
	if err := par.For(len(live), par.Workers(len(live)), func(i int) error {
		pid := live[i].Pid
		ms, err := proc.ReadSharedFileMaps(int(pid))
		if err != nil {
			return fmt.Errorf("pid %d: %w", pid, err)
		}
		for _, m := range ms {
			// map_files is the mapped file itself, where maps may show
			// another layer's device (overlayfs).
			var st unix.Stat_t
			if err := unix.Stat(fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, m.Start, m.End), &st); err != nil {
				return fmt.Errorf("pid %d vma %x-%x: %s: %w", pid, m.Start, m.End, m.Path, err)
			}
			of[i] = append(of[i], sharedMapping{pid, m.Start, m.End, m.Path, st.Dev, st.Ino})
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return slices.Concat(of...), nil
}

// mappedLocks records every flock or OFD lock held through a shared
// mapping alone, in the Files of a process that maps the file: the taker
// of a flock where it maps it.
func (d *dumper) mappedLocks() error {
	maps, err := d.sharedMappings()
	if err != nil || len(maps) == 0 {
		return err
	}
	held := map[[2]uint64]bool{}
	for _, e := range d.entries {
		held[[2]uint64{e.st.Dev, e.st.Ino}] = true
	}
	only := map[string][]sharedMapping{} // by the inode as /proc/locks prints it
	for _, m := range maps {
		if !held[[2]uint64{m.dev, m.inode}] {
			k := fmt.Sprintf("%02x:%02x:%d", unix.Major(m.dev), unix.Minor(m.dev), m.inode)
			only[k] = append(only[k], m)
		}
	}
	if len(only) == 0 {
		return nil
	}
	b, err := sys.ReadFile("/proc/locks")
	if err != nil {
		return fmt.Errorf("/proc/locks: %w", err)
	}
	files := map[uint32]*pb.Files{}
	for _, fs := range d.files {
		files[fs.Pid] = fs
	}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || strings.Contains(line, "->") { // a waiter holds nothing yet
			continue
		}
		l, err := parseLockLine(line)
		if err != nil {
			return fmt.Errorf("/proc/locks: %w", err)
		}
		ms, ok := only[l.inode]
		if !ok || (l.class == "FLOCK" && !d.inTree[l.pid]) || (l.class != "FLOCK" && l.class != "OFDLCK") {
			continue
		}
		m := ms[0]
		for _, o := range ms {
			if int(o.pid) == l.pid {
				m = o // a flock where its taker maps the file
			}
		}
		if l.mode != "ADVISORY" {
			return fmt.Errorf("pid %d vma %x-%x: %s: holds a %s %s lock through the mapping, which is not supported", m.pid, m.start, m.end, m.path, strings.ToLower(l.mode), l.class)
		}
		lk := &pb.FileLock{Kind: uint32(lockKinds[l.class]), Write: l.write, Start: l.start, VmaStart: m.start}
		if l.end >= 0 {
			lk.Length = l.end - l.start + 1
		}
		fs := files[m.pid]
		if fs == nil {
			return fmt.Errorf("pid %d vma %x-%x: %s: a %s lock through the mapping, and no files record of the process", m.pid, m.start, m.end, m.path, l.class)
		}
		fs.Locks = append(fs.Locks, lk)
	}
	return nil
}
