package restore

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
)

// epoll: the coordinator creates the epoll file; its watches name their
// targets by fd number in the process that added them, so they are added
// again from inside that process (epoll_ctl run by its restorer) once its
// fds are installed. Level-triggered readiness is found again by the
// kernel's poll on EPOLL_CTL_ADD; an edge-triggered watch whose file is
// ready reports one edge more. A EPOLLONESHOT watch that already fired
// comes back armed for EPOLLERR and EPOLLHUP only (epoll_ctl always adds
// them).

func init() {
	registerFdKind(pb.FdKind_FD_EPOLL, openEpoll)
	registerProcessState(epollWatches)
}

func openEpoll(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	d, err := fileDesc(rc, t, fd)
	if err != nil {
		return nil, err
	}
	n, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("pid %d fd %d: epoll_create1: %w", t.pid, fd.Fd, err)
	}
	f := os.NewFile(uintptr(n), "eventpoll")
	if err := setStatusFlags(f, d.Flags); err != nil {
		f.Close()
		return nil, fmt.Errorf("pid %d fd %d: %w", t.pid, fd.Fd, err)
	}
	return f, nil
}

// epollWatches are the EPOLL_CTL_ADD calls that process t makes: for each
// epoll description it holds, the watches the dump found in its fd table.
func epollWatches(rc *Ctx, t *task, s *scratchWriter) ([]call, error) {
	var calls []call
	done := map[uint64]bool{}
	for _, fd := range t.files.Fds {
		if pb.FdKind(fd.Kind) != pb.FdKind_FD_EPOLL || done[fd.DescId] {
			continue
		}
		done[fd.DescId] = true
		d, err := fileDesc(rc, t, fd)
		if err != nil {
			return nil, err
		}
		if d.Epoll == nil {
			continue
		}
		for _, w := range d.Epoll.Watches {
			if w.Pid != t.proc.Pid {
				continue
			}
			if !hasFd(t.files, w.Fd) {
				return nil, fmt.Errorf("pid %d fd %d: epoll watch of fd %d, which the image does not give the process", t.pid, fd.Fd, w.Fd)
			}
			// struct epoll_event is packed on x86_64: u32 events, u64 data.
			ev := make([]byte, 12)
			binary.LittleEndian.PutUint32(ev, w.Events)
			binary.LittleEndian.PutUint64(ev[4:], w.Data)
			calls = append(calls, sc(fmt.Sprintf("epoll fd %d: watch fd %d", fd.Fd, w.Fd),
				unix.SYS_EPOLL_CTL, uint64(fd.Fd), unix.EPOLL_CTL_ADD, uint64(w.Fd), s.put(ev)))
		}
	}
	return calls, nil
}

func hasFd(fl *pb.Files, n int32) bool {
	for _, fd := range fl.Fds {
		if fd.Fd == n {
			return true
		}
	}
	return false
}
