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
//
// Into a compressing output (image.RawSink) from a pipe, contents that do
// not compress are stored as they are, spliced, never read here (peek).
func SpliceMover(dst io.Writer, src io.Reader, n int64) (int64, error) {
	df, ok := dst.(*os.File)
	sf, ok2 := src.(*os.File)
	if sink, isSink := dst.(image.RawSink); isSink && ok2 && isPipe(int(sf.Fd())) {
		return sink.MoveFrom(sf, n, func(p []byte) (int, error) { return peek(sf, p) }, SpliceMover)
	}
	if !ok || !ok2 {
		return image.CopyMover(dst, src, n)
	}
	dfd, sfd := int(df.Fd()), int(sf.Fd())
	if isRegularFile(dfd) && isPipe(sfd) {
		return relayMove(df, sf, n)
	}
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

// The relay: a pipe of this stage's own between its input pipe and a
// regular output file. A splice from a pipe into a file holds the pipe's
// mutex for the whole copy into the file, so the stage before could not
// put the next pages into the input pipe while this one copies: the two
// took turns. From pipe to pipe, splice moves page references in a
// moment; the input pipe is then free again while the pages are copied
// out of the relay. A C model of the last two processes of a dump (a
// child vmsplicing 1 GiB, the parent splicing it to tmpfs, 10 rounds):
// 0.423 / 0.45 s (min / median) through a relay, 0.474 / 0.50 without;
// write(2) of the same memory 0.344 / 0.36. See doc/performance.md.
var relay ownPipe

// ownPipe is a pipe of this stage's own, made when first used.
type ownPipe struct {
	sync.Mutex
	r, w *os.File
}

// lock locks the pipe, making it first if need be.
func (p *ownPipe) lock() error {
	p.Lock()
	if p.r != nil {
		return nil
	}
	r, w, err := os.Pipe()
	if err != nil {
		p.Unlock()
		return err
	}
	growPipe(w)
	p.r, p.w = r, w
	return nil
}

// drop closes the pipe with whatever it holds; the next lock makes another.
func (p *ownPipe) drop() {
	p.r.Close()
	p.w.Close()
	p.r, p.w = nil, nil
}

func relayMove(df, sf *os.File, n int64) (int64, error) {
	if err := relay.lock(); err != nil {
		return 0, err
	}
	defer relay.Unlock()
	var moved int64
	for moved < n {
		m, err := unix.Splice(int(sf.Fd()), nil, int(relay.w.Fd()), nil, int(min(n-moved, pipeSize)), 0)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return moved, &os.PathError{Op: "splice", Path: sf.Name(), Err: err}
		case m == 0:
			return moved, io.ErrUnexpectedEOF
		}
		if err := drainRelay(df, m); err != nil {
			return moved, err
		}
		moved += m
	}
	return moved, nil
}

// drainRelay moves the relay's n bytes into df. On failure the relay is
// dropped with what is left in it: the stage fails, and nothing stale
// may reach the next frame.
func drainRelay(df *os.File, n int64) error {
	for n > 0 {
		m, err := unix.Splice(int(relay.r.Fd()), nil, int(df.Fd()), nil, int(n), 0)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EINVAL:
			// A file that splice cannot write (O_APPEND, a file system
			// without splice): copy the rest out of the relay. (Its
			// errors name the read or write that failed.)
			if _, err = image.CopyMover(df, relay.r, n); err != nil {
				relay.drop()
			}
			return err
		case err == nil && m == 0:
			err = io.ErrShortWrite
		}
		if err != nil {
			relay.drop()
			return &os.PathError{Op: "splice", Path: df.Name(), Err: err}
		}
		n -= int64(m)
	}
	return nil
}

// peek copies the next bytes of the pipe src into p without consuming
// them: tee(2) duplicates them into a pipe of this stage's own, read back
// at once. It waits for the first bytes; 0 means src ended.
func peek(src *os.File, p []byte) (int, error) {
	if err := sample.lock(); err != nil {
		return 0, err
	}
	defer sample.Unlock()
	for {
		n, err := unix.Tee(int(src.Fd()), int(sample.w.Fd()), len(p), 0)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, &os.PathError{Op: "tee", Path: src.Name(), Err: err}
		}
		if _, err := io.ReadFull(sample.r, p[:n]); err != nil {
			sample.drop()
			return 0, err
		}
		return int(n), nil
	}
}

var sample ownPipe

func isRegularFile(fd int) bool { return fdType(fd) == unix.S_IFREG }
func isPipe(fd int) bool        { return fdType(fd) == unix.S_IFIFO }

func fdType(fd int) uint32 {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return 0
	}
	return st.Mode & unix.S_IFMT
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
	var notPipe *os.File // found once: each batch need not ask again
	return func(dst io.Writer, p []byte) (bool, error) {
		f, ok := dst.(*os.File)
		if !ok || len(p) == 0 || f == notPipe {
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
				notPipe = f
				return false, nil
			case err != nil:
				return true, &os.PathError{Op: "vmsplice", Path: f.Name(), Err: err}
			}
			rest = rest[n:]
		}
		return true, nil
	}
}
