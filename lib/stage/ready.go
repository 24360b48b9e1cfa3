package stage

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
)

// The stages of a pipeline start together, and each takes a while to start
// (a Go process, its packages' initialisation: ~15-30 ms of CPU each on
// the PVM guest, doc/performance.md 66). cr-freeze used to freeze the tree
// as soon as it had started itself, so the tree stayed frozen while the
// stages after it were still starting, competing for the CPUs with the
// ones doing its dump. Now every stage writes its stream header before it
// reads anything, and waits for its reader to take it (AnnounceOutput):
// the last stage, writing into a file, takes its input's header once it
// has started; the stage before it sees its header taken, reads its own
// input's, and so on up to cr-freeze, which freezes only then, with every
// stage of the pipeline waiting for its records.

// readerWait bounds the wait for a reader: one that does not read (a
// program reading only later) delays the dump by that much, no more.
var readerWait = time.Second

// AnnounceOutput writes w's buffered stream header out, then, when out is
// a pipe, waits until its reader has taken it (awaitReader). A compressing
// writer keeps its header in its first lz4 block: no wait then.
func AnnounceOutput(w *image.Writer, out io.Writer, compress bool) error {
	if compress {
		return nil
	}
	if err := w.Flush(); err != nil {
		return err
	}
	awaitReader(out)
	return nil
}

// awaitReader waits, when out is a pipe, until its reader has read
// everything written into it (between linked stages: until the reader says
// it has the header), the reader has gone (the next write fails, and says
// so), or readerWait has passed. Anything else returns at once.
func awaitReader(out io.Writer) {
	if l := linkOf(out); l != nil {
		select {
		case <-l.read:
		case <-time.After(readerWait):
		}
		return
	}
	fd, ok := pipeFd(out)
	if !ok {
		return
	}
	// No event says a pipe is empty (POLLOUT only says there is room), so
	// look: ~50 looks in the ~50 ms a pipeline takes to start.
	deadline := time.Now().Add(readerWait)
	step := 50 * time.Microsecond
	for {
		unread, err := unix.IoctlGetInt(fd, unix.TIOCINQ) // FIONREAD
		if err != nil || unread == 0 {
			return
		}
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if _, err := unix.Poll(p, 0); err != nil || p[0].Revents&unix.POLLERR != 0 {
			return // no reader left
		}
		if !time.Now().Before(deadline) {
			return
		}
		time.Sleep(step)
		step = min(2*step, time.Millisecond)
	}
}

// Between two stages run in this process (cr-dump's, RunIn) the reader
// also says through a channel that it has taken the header: awaitReader's
// looks at the pipe come up to a millisecond apart once it has waited a
// while, and a dump's announce chain has five links, each of which waited
// so (doc/performance.md, 76). The writer says so when it has written its
// first frames: the runtime's poller, where pipeWaiter otherwise waits, is
// looked at only by a P with nothing to run, and while the tree is worked
// on none may be idle for milliseconds (doc/performance.md, 78).
var links sync.Map // either end of a pipe between stages run here -> *link

type link struct {
	readOnce, writtenOnce sync.Once
	read                  chan struct{} // closed once the reader has the header, or ends
	written               chan struct{} // closed once frames follow the header, or the writer ends
}

// LinkPipe says that r and w are the ends of a pipe between two stages run
// in this process: the writer's stage waits for its reader's word
// (headerRead) instead of looking at the pipe, and the reader for the
// writer's (framesWritten) as well as the pipe. The link goes when the
// stages end (RunIn).
func LinkPipe(r, w *os.File) {
	l := &link{read: make(chan struct{}), written: make(chan struct{})}
	links.Store(r, l)
	links.Store(w, l)
}

func linkOf(stream any) *link {
	if f, ok := stream.(*os.File); ok {
		if l, ok := links.Load(f); ok {
			return l.(*link)
		}
	}
	return nil
}

// headerRead: the stage reading in has taken its header, or is ending.
func headerRead(in io.Reader) {
	if l := linkOf(in); l != nil {
		l.readOnce.Do(func() { close(l.read) })
	}
}

// DropLink says that the stage that was to use end (either end of a
// linked pipe) will not run, cr-dump having failed to start it: the stage
// at the other end waits for no word from it.
func DropLink(end *os.File) {
	headerRead(end)
	framesWritten(end)
	links.Delete(end)
}

// framesWritten: the stage writing out has written frames after the
// header (or is ending). Its reader, when it waits for them, runs next on
// this P: this goroutine yields it.
func framesWritten(out io.Writer) {
	if l := linkOf(out); l != nil {
		first := false
		l.writtenOnce.Do(func() { close(l.written); first = true })
		if first {
			runtime.Gosched()
		}
	}
}

// A pipeWaiter parks the calling goroutine until a pipe has something to
// read (or no writer), on the runtime's poller, through a second open file
// description of the pipe (opened non-blocking: the pipe itself stays
// blocking, as the stages' splices need). cr-dump's stages share two Ps of
// the Go runtime, and a goroutine blocked in a system call keeps its P,
// with the P's timers and run queue, until the runtime's monitor takes it
// back, up to ~20 ms later: with two stages blocked in read(2) on their
// inputs, the others' sleeps in awaitReader overslept by 10-16 ms
// (doc/performance.md 75), and cr-seize's tracers, started once its input
// ended, waited 10-21 ms for a P in 7 dumps of the counter in 44 (80).
type pipeWaiter struct {
	f  *os.File
	rc syscall.RawConn
}

// newPipeWaiter returns a waiter for in, or nil when in is not a pipe (or
// the second description cannot be had: reads then block as before).
func newPipeWaiter(in io.Reader) *pipeWaiter {
	fd, ok := pipeFd(in)
	if !ok {
		return nil
	}
	pfd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	f := os.NewFile(uintptr(pfd), "input")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil
	}
	return &pipeWaiter{f: f, rc: rc}
}

// wait returns once the pipe has something to read or no writer, or the
// description's read deadline has passed.
func (pw *pipeWaiter) wait() {
	pw.rc.Read(func(fd uintptr) bool {
		ready := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(ready, 0)
		return n != 0 || (err != nil && err != unix.EINTR)
	})
}

func (pw *pipeWaiter) close() { pw.f.Close() }

// awaitFirst is wait for a stage's first frame, until the tree is frozen
// and the stages before it have worked on it. Between linked stages the
// writer's word ends it at once (links above); the pipe still ends it too,
// should the writer fill the pipe before a word.
func (pw *pipeWaiter) awaitFirst(in io.Reader) {
	l := linkOf(in)
	if l == nil {
		pw.wait()
		return
	}
	waiting, cut := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(cut)
		select {
		case <-l.written:
			pw.f.SetReadDeadline(time.Now())
		case <-waiting:
		}
	}()
	pw.wait()
	close(waiting)
	<-cut
	pw.f.SetReadDeadline(time.Time{}) // the later waits wait again
}

// pipeFd is the fd of stream, when it is a pipe.
func pipeFd(stream any) (int, bool) {
	f, ok := stream.(*os.File)
	if !ok {
		return -1, false
	}
	fd := int(f.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		return -1, false
	}
	return fd, true
}
