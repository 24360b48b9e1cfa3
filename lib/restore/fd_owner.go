package restore

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
)

// A description with O_ASYNC (lib/files/owner.go) gets its owner, its
// signal and O_ASYNC itself from the task, at the end, when every thread
// of the tree exists: fcntl F_SETSIG, F_SETOWN_EX and F_SETFL on its fd.
// The task names the owner by its dumped pid, which is its pid in the
// task's PID namespace (also under --pidns), and the kernel keeps the fd
// number that set O_ASYNC for the signal's si_fd: cr-restore's own copy
// would give its own number. Once per description, through its first fd.
func init() {
	registerLastState(ownerCalls)
}

func ownerCalls(rc *Ctx, t *task, s *scratchWriter) ([]call, error) {
	var calls []call
	for _, fd := range t.files.GetFds() {
		d, ok := rc.Shared[descKey(fd.DescId)].(*pb.FileDesc)
		if !ok || d.Owner == nil {
			continue
		}
		key := fmt.Sprintf("owner:%d", d.Id)
		if rc.Shared[key] != nil {
			continue
		}
		rc.Shared[key] = true
		o := d.Owner
		b := binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, o.Type), uint32(o.Pid))
		calls = append(calls,
			sc(fmt.Sprintf("fd %d: F_SETSIG %d", fd.Fd, o.Signal), unix.SYS_FCNTL, uint64(fd.Fd), unix.F_SETSIG, uint64(o.Signal)),
			sc(fmt.Sprintf("fd %d: F_SETOWN_EX type %d pid %d", fd.Fd, o.Type, o.Pid), unix.SYS_FCNTL, uint64(fd.Fd), unix.F_SETOWN_EX, s.put(b)),
			sc(fmt.Sprintf("fd %d: F_SETFL %#o", fd.Fd, d.Flags), unix.SYS_FCNTL, uint64(fd.Fd), unix.F_SETFL, uint64(d.Flags)))
	}
	return calls, nil
}
