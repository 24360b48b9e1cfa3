package restore

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/sys"
)

// eventfd, signalfd, timerfd and pidfd: the coordinator creates each with
// its dumped state; the task gets it over SCM_RIGHTS like any file.

func init() {
	registerFdKind(pb.FdKind_FD_EVENTFD, openEventfd)
	registerFdKind(pb.FdKind_FD_SIGNALFD, openSignalfd)
	registerFdKind(pb.FdKind_FD_TIMERFD, openTimerfd)
	registerFdKind(pb.FdKind_FD_PIDFD, openPidfd)
}

// openPidfd makes a pidfd of the restored process the dumped one referred
// to (pidfd_open of its pid here, which differs under --pidns). Every
// process of the tree, zombies included, exists when files are restored.
func openPidfd(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	d, err := fileDesc(rc, t, fd)
	if err != nil {
		return nil, err
	}
	where := fmt.Sprintf("pid %d fd %d", t.pid, fd.Fd)
	if d.Pidfd == nil {
		return nil, fmt.Errorf("%s: pidfd description without its state", where)
	}
	of := rc.Tasks[d.Pidfd.Pid]
	if of == nil {
		return nil, fmt.Errorf("%s: a pidfd of pid %d, which is not a process of the image", where, d.Pidfd.Pid)
	}
	n, err := unix.PidfdOpen(of.pid, int(d.Flags&unix.O_EXCL)) // PIDFD_THREAD is O_EXCL; O_NONBLOCK comes with the status flags
	if err != nil {
		return nil, fmt.Errorf("%s: pidfd_open(%d): %w", where, of.pid, err)
	}
	return newAnon(n, "pidfd", d)
}

// newAnon wraps a new fd and gives it the dumped status flags.
func newAnon(fd int, name string, d *pb.FileDesc) (*os.File, error) {
	f := os.NewFile(uintptr(fd), name)
	if err := setStatusFlags(f, d.Flags); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func openEventfd(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	d, err := fileDesc(rc, t, fd)
	if err != nil {
		return nil, err
	}
	where := fmt.Sprintf("pid %d fd %d", t.pid, fd.Fd)
	if d.Eventfd == nil {
		return nil, fmt.Errorf("%s: eventfd description without its state", where)
	}
	flags := unix.EFD_CLOEXEC
	if d.Eventfd.Semaphore {
		flags |= unix.EFD_SEMAPHORE
	}
	n, err := unix.Eventfd(0, flags)
	if err != nil {
		return nil, fmt.Errorf("%s: eventfd: %w", where, err)
	}
	// The initial value of eventfd(2) is 32 bits; the counter is 64.
	if c := d.Eventfd.Count; c != 0 {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], c)
		if _, err := unix.Write(n, b[:]); err != nil {
			unix.Close(n)
			return nil, fmt.Errorf("%s: eventfd counter %d: %w", where, c, err)
		}
	}
	f, err := newAnon(n, "eventfd", d)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return f, nil
}

func openSignalfd(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	d, err := fileDesc(rc, t, fd)
	if err != nil {
		return nil, err
	}
	where := fmt.Sprintf("pid %d fd %d", t.pid, fd.Fd)
	if d.Signalfd == nil {
		return nil, fmt.Errorf("%s: signalfd description without its state", where)
	}
	var set unix.Sigset_t
	set.Val[0] = d.Signalfd.Sigmask
	n, err := unix.Signalfd(-1, &set, unix.SFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("%s: signalfd mask %#x: %w", where, d.Signalfd.Sigmask, err)
	}
	f, err := newAnon(n, "signalfd", d)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return f, nil
}

// openTimerfd arms the timer with the time that was left (an absolute timer
// at now plus that time on its clock), then sets the expirations not yet
// read (TFD_IOC_SET_TICKS), which arming would have cleared.
func openTimerfd(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	d, err := fileDesc(rc, t, fd)
	if err != nil {
		return nil, err
	}
	where := fmt.Sprintf("pid %d fd %d", t.pid, fd.Fd)
	s := d.Timerfd
	if s == nil {
		return nil, fmt.Errorf("%s: timerfd description without its state", where)
	}
	n, err := unix.TimerfdCreate(int(s.Clockid), unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("%s: timerfd_create clock %d: %w", where, s.Clockid, err)
	}
	f := os.NewFile(uintptr(n), "timerfd")
	fail := func(err error) (*os.File, error) {
		f.Close()
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if s.ValueNsec > 0 {
		value := s.ValueNsec
		flags := int(s.SettimeFlags)
		if flags&unix.TFD_TIMER_ABSTIME != 0 {
			var now unix.Timespec
			if err := unix.ClockGettime(s.Clockid, &now); err != nil {
				return fail(fmt.Errorf("clock_gettime %d: %w", s.Clockid, err))
			}
			value += now.Nano()
		}
		spec := unix.ItimerSpec{Interval: unix.NsecToTimespec(s.IntervalNsec), Value: unix.NsecToTimespec(value)}
		if err := unix.TimerfdSettime(n, flags, &spec, nil); err != nil {
			return fail(fmt.Errorf("timerfd_settime: %w", err))
		}
	}
	if s.Ticks > 0 {
		if err := sys.TimerfdSetTicks(n, s.Ticks); err != nil {
			return fail(err)
		}
	}
	if err := setStatusFlags(f, d.Flags); err != nil {
		return fail(err)
	}
	return f, nil
}
