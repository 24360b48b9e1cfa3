package restore

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
)

// inotify: watches are added again by path, each with its dumped watch
// descriptor. The kernel hands out watch descriptors cyclically from the
// last one, so a watch that comes out too low is removed and added again
// until it gets its number; the IN_IGNORED events those removals queue are
// read off before the task gets the fd (cr-files refuses an inotify fd with
// unread events, so nothing of the program's is lost).

func init() {
	registerFdKind(pb.FdKind_FD_INOTIFY, openInotify)
}

// maxWdTries bounds the remove-and-add loop for one watch.
const maxWdTries = 1 << 20

func openInotify(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	d, err := fileDesc(rc, t, fd)
	if err != nil {
		return nil, err
	}
	where := fmt.Sprintf("pid %d fd %d", t.pid, fd.Fd)
	if d.Inotify == nil {
		return nil, fmt.Errorf("%s: inotify description without its state", where)
	}
	n, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("%s: inotify_init1: %w", where, err)
	}
	f := os.NewFile(uintptr(n), "inotify")
	fail := func(err error) (*os.File, error) {
		f.Close()
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	for _, w := range d.Inotify.Watches {
		var st unix.Stat_t
		if err := unix.Lstat(w.Path, &st); err != nil {
			return fail(fmt.Errorf("inotify watch %d: %w", w.Wd, err))
		}
		if w.Inode != 0 && (st.Ino != w.Inode || st.Dev != w.Dev) {
			return fail(fmt.Errorf("inotify watch %d: %s is no longer the watched file (inode %d, was %d)", w.Wd, w.Path, st.Ino, w.Inode))
		}
		mask := w.Mask
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			mask |= unix.IN_DONT_FOLLOW
		}
		for tries := 0; ; tries++ {
			wd, err := unix.InotifyAddWatch(n, w.Path, mask)
			if err != nil {
				return fail(fmt.Errorf("inotify watch %d on %s: %w", w.Wd, w.Path, err))
			}
			if int32(wd) == w.Wd {
				break
			}
			if int32(wd) > w.Wd || tries > maxWdTries {
				return fail(fmt.Errorf("inotify watch on %s got descriptor %d, not %d", w.Path, wd, w.Wd))
			}
			if _, err := unix.InotifyRmWatch(n, uint32(wd)); err != nil {
				return fail(fmt.Errorf("inotify_rm_watch %d: %w", wd, err))
			}
			if tries%512 == 511 {
				drainInotify(n)
			}
		}
	}
	drainInotify(n)
	if err := setStatusFlags(f, d.Flags); err != nil {
		return fail(err)
	}
	return f, nil
}

// drainInotify reads (and drops) every queued event of a non-blocking
// inotify fd.
func drainInotify(fd int) {
	buf := make([]byte, 64<<10)
	for {
		if n, err := unix.Read(fd, buf); n <= 0 || err != nil {
			return
		}
	}
}
