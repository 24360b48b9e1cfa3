package restore

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/pb"
)

// Files in flight (SCM_RIGHTS) and credentials (SCM_CREDENTIALS) of queued
// unix messages (cr-files' scm.go). writeQueue (fd_unix.go) sends each
// message again with the control message built here.
//
// The files are opened through the fd kinds' openers like the fds of a
// process (shareDesc), so a description that a process also holds is the
// very file that process gets. A description that only a queue holds is
// opened from its FileDesc's in_flight fd; once sent it lives in the queue,
// and the coordinator's copies close (after the send, and at closeShared).
//
// Root may send any uid and gid, and the pid of any process of its own pid
// namespace (the kernel refuses a pid that does not exist). A restored
// process is named by its pid as the coordinator sees it: under --pidns the
// receiver, in the new namespace, then reads the dumped pid.

// unixControl returns the control message of queued message m and the
// files it carries, which the caller closes once it is sent. creds is the
// credentials part alone, for the rest of a stream message sent in parts.
func (rc *Ctx) unixControl(m *pb.UnixMessage) (oob, creds []byte, files []*os.File, err error) {
	if c := m.Creds; c != nil {
		pid := int32(c.Pid)
		if t := rc.Tasks[c.Pid]; t != nil && t.pid != 0 {
			pid = int32(t.pid)
		}
		creds = unix.UnixCredentials(&unix.Ucred{Pid: pid, Uid: c.Uid, Gid: c.Gid})
	}
	if len(m.Fds) == 0 {
		return creds, creds, nil, nil
	}
	fds := make([]int, 0, len(m.Fds))
	for _, id := range m.Fds {
		f, err := rc.openDesc(id)
		if err != nil {
			closeFiles(files)
			return nil, nil, nil, err
		}
		files = append(files, f)
		fds = append(fds, int(f.Fd()))
	}
	return append(unix.UnixRights(fds...), creds...), creds, files, nil
}

// openDesc opens description id for a message: as the first fd of a process
// that has it, or from its in_flight fd.
func (rc *Ctx) openDesc(id uint64) (*os.File, error) {
	for _, t := range rc.Order {
		if t.files == nil {
			continue
		}
		for _, fd := range t.files.Fds {
			if fd.DescId == id {
				return openFd(rc, t, fd)
			}
		}
	}
	d, ok := rc.Shared[descKey(id)].(*pb.FileDesc)
	if !ok || d.InFlight == nil || d.InFlight.DescId != id || len(rc.Order) == 0 {
		return nil, fmt.Errorf("file in flight: no fd and no in-flight file-desc record has description %d: %w", id, image.ErrCorrupt)
	}
	// The root's name in messages: the file belongs to no process yet.
	f, err := openFd(rc, rc.Order[0], d.InFlight)
	if err != nil {
		return nil, fmt.Errorf("file in flight (description %d): %w", id, err)
	}
	return f, nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
