package restore

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// /dev/tty fds (cr-files' devtty.go). A description of /dev/tty is a file
// of the terminal its opener had as controlling terminal, and only such an
// open makes one. For a shell job's terminal that is cr-restore's own
// terminal, which the restored job inherits: cr-restore opens /dev/tty
// itself. For a pty of the dump it is the pty's session leader once it has
// the pty back (cttyCalls): once every process has its per-process state,
// the leader opens /dev/tty (its restorer runs the open), cr-restore takes
// the file with pidfd_getfd and passes it to every fd of the description,
// in place of a /dev/null that kept the fd number until then.

func init() {
	registerFdKind(pb.FdKind_FD_DEVTTY, openDevTty)
	registerLastState(devTtyCalls)
}

func devTtyFlags(d *pb.FileDesc) int {
	return int(d.Flags)&^creationFlags | unix.O_NOCTTY | unix.O_CLOEXEC
}

func openDevTty(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	d, err := fileDesc(rc, t, fd)
	if err != nil {
		return nil, err
	}
	where := fmt.Sprintf("pid %d fd %d", t.pid, fd.Fd)
	if d.Tty == nil {
		return nil, fmt.Errorf("%s: /dev/tty description without its terminal", where)
	}
	if !d.Tty.External {
		f, err := os.OpenFile("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("%s: a stand-in until /dev/tty is opened: %w", where, err)
		}
		return f, nil
	}
	f, err := os.OpenFile("/dev/tty", devTtyFlags(d), 0)
	if err != nil {
		return nil, stage.Hint(fmt.Errorf("%s: /dev/tty of the shell job (it was /dev/pts/%d): cr-restore has no controlling terminal: %w", where, d.Tty.Index, err),
			"run cr-restore from the interactive shell (on the terminal) the job should come back to")
	}
	return f, nil
}

func devTtyKey(desc uint64) string { return fmt.Sprintf("devtty:%d", desc) }

// devTtyCalls install t's /dev/tty fds on a pty of the dump. It runs its
// own calls (an open whose result the next call needs), and leaves none
// for the batch.
func devTtyCalls(rc *Ctx, t *task, _ *scratchWriter) ([]call, error) {
	for _, fd := range t.files.Fds {
		if pb.FdKind(fd.Kind) != pb.FdKind_FD_DEVTTY {
			continue
		}
		d, err := fileDesc(rc, t, fd)
		if err != nil {
			return nil, err
		}
		if d.Tty == nil || d.Tty.External {
			continue
		}
		where := fmt.Sprintf("pid %d fd %d: /dev/tty on /dev/pts/%d", t.pid, fd.Fd, d.Tty.Index)
		sf, ok := rc.Shared[devTtyKey(d.Id)].(sharedFile)
		if !ok {
			leader := rc.Tasks[d.Tty.Session]
			if leader == nil || leader.zombie() {
				return nil, fmt.Errorf("%s: the session leader %d that has it as controlling terminal is not restored", where, d.Tty.Session)
			}
			f, err := leader.openDevTty(d)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			sf = sharedFile{File: f}
			rc.Shared[devTtyKey(d.Id)] = sf
		}
		remote, err := t.r.sendFds([]*os.File{sf.File})
		if err != nil {
			return nil, err
		}
		flags := uint64(0)
		if fd.Cloexec {
			flags = unix.O_CLOEXEC
		}
		if _, err := t.r.run(sc(fmt.Sprintf("install fd %d (/dev/tty)", fd.Fd), unix.SYS_DUP3, uint64(remote[0]), uint64(fd.Fd), flags),
			sc("close received /dev/tty", unix.SYS_CLOSE, uint64(remote[0]))); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// openDevTty opens /dev/tty inside t (a session leader with its controlling
// terminal back) and returns cr-restore's copy of that file.
func (t *task) openDevTty(d *pb.FileDesc) (*os.File, error) {
	s := &scratchWriter{base: t.scratch}
	path := s.putString("/dev/tty")
	if err := t.flushScratch(s); err != nil {
		return nil, err
	}
	r, err := t.r.run(sc("open /dev/tty", unix.SYS_OPEN, path, uint64(devTtyFlags(d)), 0))
	if err != nil {
		return nil, err
	}
	return t.takeFd(int(r[0]), "its /dev/tty")
}

// takeFd moves fd n of t into cr-restore: t closes it once copied.
func (t *task) takeFd(n int, what string) (*os.File, error) {
	pidfd, err := unix.PidfdOpen(t.pid, 0)
	if err != nil {
		t.r.run(sc("close "+what, unix.SYS_CLOSE, uint64(n)))
		return nil, fmt.Errorf("pidfd_open %d: %w", t.pid, err)
	}
	f, err := sys.PidfdGetfd(pidfd, n)
	unix.Close(pidfd)
	if _, cerr := t.r.run(sc("close "+what, unix.SYS_CLOSE, uint64(n))); err == nil && cerr != nil {
		f.Close()
		return nil, cerr
	}
	return f, err
}
