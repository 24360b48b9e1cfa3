package stage

import (
	"bytes"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
)

// pipeSize is what stages ask for their stdin and stdout pipes (the
// default is 64 KiB; 1 MiB is the unprivileged maximum,
// /proc/sys/fs/pipe-max-size). Fewer, larger transfers between stages:
// see doc/performance.md.
const pipeSize = 1 << 20

// growPipe enlarges f's pipe buffer when f is a pipe; failure is harmless.
func growPipe(f *os.File) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		return
	}
	if size, err := unix.FcntlInt(f.Fd(), unix.F_GETPIPE_SZ, 0); err == nil && size >= pipeSize {
		return
	}
	unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, pipeSize)
}

// SpliceMover is an image.Mover that moves page contents from the input to
// the output with splice(2) when both are files and one is a pipe: from
// pipe to pipe the kernel passes page references, and the bytes are never
// copied, not even into this process. Anything else is copied.
func SpliceMover(dst io.Writer, src io.Reader, n int64) (int64, error) {
	df, ok := dst.(*os.File)
	sf, ok2 := src.(*os.File)
	if !ok || !ok2 {
		return image.CopyMover(dst, src, n)
	}
	dfd, sfd := int(df.Fd()), int(sf.Fd())
	var moved int64
	for moved < n {
		awaitRoom(dfd)
		m, err := unix.Splice(sfd, nil, dfd, nil, int(min(n-moved, 1<<30)), unix.SPLICE_F_MOVE)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EINVAL || err == unix.ENOSYS || err == unix.EBADF && moved == 0:
			// Not spliceable (no pipe on either side, O_APPEND, a file
			// system without splice): copy. (Trying again for the next
			// frame costs one system call.)
			c, err := image.CopyMover(dst, src, n-moved)
			return moved + c, err
		case err != nil:
			return moved, &os.PathError{Op: "splice", Path: df.Name(), Err: err}
		case m == 0:
			return moved, io.ErrUnexpectedEOF
		}
		moved += m
	}
	return moved, nil
}

// awaitRoom waits until the output pipe fd has room, asleep. A splice into
// a full pipe would otherwise spin on the pipe's mutex for as long as the
// next stage holds it, and the last stage holds it while it writes the
// pipe's pages into the image file: with the image on tmpfs, cr-files
// burnt 0.08 s of CPU per GiB spinning there (mutex_spin_on_owner),
// taken from the stages beside it on a 2-core machine. poll(2) looks at
// the pipe without its mutex; for any other fd it returns at once.
func awaitRoom(fd int) {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	for {
		if _, err := unix.Poll(fds, -1); err != unix.EINTR {
			return
		}
	}
}

// thpUsable: donated pages are only cheaper than copying when the buffers
// they come from are transparent huge pages (a fresh 4 KiB page per page
// given away costs twice a copy; a fresh 2 MiB page, a fifth).
var thpUsable = sync.OnceValue(func() bool {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	return err == nil && !bytes.Contains(b, []byte("[never]"))
})

// donor is the image.Donor of stages: vmsplice(2) with SPLICE_F_GIFT into
// the output pipe. The pages then travel to the next stages without a
// copy. The caller drops them from its own mapping afterwards (see
// image.Writer.WritePagesSummed), so that its next write into the range
// faults in fresh pages instead of changing bytes a pipe still refers to.
func donor() image.Donor {
	if !thpUsable() || verifyAll() {
		return nil
	}
	return func(dst io.Writer, p []byte) (bool, error) {
		f, ok := dst.(*os.File)
		if !ok || len(p) == 0 {
			return false, nil
		}
		fd := int(f.Fd())
		for rest, first := p, true; len(rest) > 0; first = false {
			iov := []unix.Iovec{{Base: &rest[0]}}
			iov[0].SetLen(len(rest))
			awaitRoom(fd)
			n, err := unix.Vmsplice(fd, iov, unix.SPLICE_F_GIFT)
			switch {
			case err == unix.EINTR:
				continue
			case first && (err == unix.EBADF || err == unix.EINVAL):
				return false, nil // not a pipe
			case err != nil:
				return true, &os.PathError{Op: "vmsplice", Path: f.Name(), Err: err}
			}
			rest = rest[n:]
		}
		return true, nil
	}
}
