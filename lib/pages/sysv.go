package pages

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
)

// System V shared memory (shmget, shmat). The kernel shows an attach as a
// shared mapping of "/SYSV<key in 8 hex digits> (deleted)" whose inode is
// the segment's id, and lists the segment itself in /proc/sysvipc/shm
// (size, permissions, owner, removed or locked). A VMA that attaches one is
// dumped as shared memory is (every page the segment holds, read through
// map_files) with the segment's description beside it; a restore makes the
// segment again under the same id, which the program keeps, and attaches it
// with shmat where it was (doc/stream-v1.md).

// isSysvPath: the name the kernel gives an attach of a segment.
func isSysvPath(m *proc.Mapping) bool {
	return m.Shared && m.Deleted && strings.HasPrefix(m.Path, "/SYSV")
}

// sysvVma completes x, an attach of a System V segment, from segs (read
// once per process: ReadSysvShm).
func sysvVma(pid int, x *vma, segs func() ([]proc.SysvShm, error)) error {
	m := x.m
	all, err := segs()
	if err != nil {
		return procErr(pid, err)
	}
	var seg *proc.SysvShm
	for i := range all {
		if uint64(all[i].ID) == m.Inode {
			seg = &all[i]
		}
	}
	// The key is in the name as the segment had it when attached; a
	// removed segment's key reads 0 in the table afterwards.
	key, err := strconv.ParseUint(strings.TrimPrefix(m.Path, "/SYSV"), 16, 32)
	if err != nil || seg == nil || (int32(key) != seg.Key && seg.Mode&proc.ShmDest == 0) {
		return unsupported(pid, m, fmt.Sprintf("System V shared memory mapping %s (id %d), which /proc/sysvipc/shm of cr-pages does not list as such", m.Path, m.Inode), "")
	}
	if size := (seg.Size + image.PageSize - 1) &^ (image.PageSize - 1); m.Offset != 0 || m.Len() != size {
		return unsupported(pid, m, fmt.Sprintf("a part of System V shared memory segment %d (%d of its %d bytes mapped; the rest was unmapped)", seg.ID, m.Len(), seg.Size), "")
	}
	x.kind = pb.VmaKind_VMA_SYSV_SHM
	x.obj = &vmaObject{sysv: &pb.SysvShm{Id: seg.ID, Key: seg.Key, Size: seg.Size, Mode: seg.Mode & 0o777, Uid: seg.UID, Gid: seg.GID,
		Removed: seg.Mode&proc.ShmDest != 0, Locked: seg.Mode&proc.ShmLocked != 0}}
	x.scan = scanShared
	return nil
}

// sysvTable reads /proc/sysvipc/shm for the VMAs of pid when the first one
// asks. The table is the IPC namespace of the reader: pid's must be
// cr-pages' own.
func sysvTable(pid int) func() ([]proc.SysvShm, error) {
	var segs []proc.SysvShm
	var err error
	read := false
	return func() ([]proc.SysvShm, error) {
		if read {
			return segs, err
		}
		read = true
		theirs, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/ipc", pid))
		ours, err2 := os.Readlink("/proc/self/ns/ipc")
		switch {
		case err1 != nil:
			err = err1
		case err2 != nil:
			err = err2
		case theirs != ours:
			err = stage.Hint(fmt.Errorf("attaches System V shared memory of IPC namespace %s, and cr-pages runs in %s", theirs, ours),
				"run cr-pages in the process's IPC namespace (nsenter --ipc)")
		default:
			segs, err = proc.ReadSysvShm()
		}
		return segs, err
	}
}
