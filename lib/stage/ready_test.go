package stage

import (
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/cli"
	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/sys"
)

// awaitFor runs awaitReader on out with readerWait set to wait and
// returns how long it took.
func awaitFor(t *testing.T, out *os.File, wait time.Duration) time.Duration {
	t.Helper()
	was := readerWait
	readerWait = wait
	t.Cleanup(func() { readerWait = was })
	start := time.Now()
	awaitReader(out)
	return time.Since(start)
}

func pipeWith(t *testing.T, data string) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	if _, err := w.WriteString(data); err != nil {
		t.Fatal(err)
	}
	return r, w
}

// The wait ends when the reader has taken everything, not before.
func TestAwaitReaderWaitsForTheReader(t *testing.T) {
	r, w := pipeWith(t, "header")
	const delay = 200 * time.Millisecond
	go func() {
		time.Sleep(delay)
		buf := make([]byte, 3)
		r.Read(buf) // half of it: the wait goes on
		time.Sleep(delay)
		r.Read(buf)
	}()
	if took := awaitFor(t, w, 20*time.Second); took < 2*delay || took > 10*time.Second {
		t.Fatalf("returned after %v; the reader took everything after %v", took, 2*delay)
	}
}

// A reader that does not read delays the writer by readerWait, no more.
func TestAwaitReaderGivesUp(t *testing.T) {
	_, w := pipeWith(t, "header")
	const wait = 300 * time.Millisecond
	if took := awaitFor(t, w, wait); took < wait || took > 10*time.Second {
		t.Fatalf("returned after %v, want the %v readerWait", took, wait)
	}
}

// Gone readers, empty pipes and anything not a pipe: no wait.
func TestAwaitReaderReturnsAtOnce(t *testing.T) {
	r, gone := pipeWith(t, "header")
	r.Close()
	_, empty := pipeWith(t, "")
	file, err := os.Create(filepath.Join(t.TempDir(), "image"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	file.WriteString("header")
	for name, out := range map[string]*os.File{"reader gone": gone, "empty pipe": empty, "file": file} {
		if took := awaitFor(t, out, 20*time.Second); took > 10*time.Second {
			t.Errorf("%s: waited %v", name, took)
		}
	}
}

// awaitInput parks its goroutine on the runtime's poller ("IO wait"), not
// in a read(2) ("syscall", which keeps a P of the runtime), until the pipe
// has something to read, leaves that unread and the pipe blocking, and
// returns when the writer goes; anything not a pipe returns at once.
func TestAwaitInput(t *testing.T) {
	r, w, err := sys.Pipe("input")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		awaitInput(r)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !parkedIn("IO wait", "crpipe/lib/stage.awaitInput(") {
		if time.Now().After(deadline) {
			t.Fatalf("awaitInput is not parked on the poller:\n%s", goroutines())
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case <-done:
		t.Fatal("awaitInput returned before there was input")
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := w.WriteString("frame"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("awaitInput did not return once there was input")
	}
	if fl, err := unix.FcntlInt(r.Fd(), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK != 0 {
		t.Errorf("the input's flags %#x, %v: it must stay blocking", fl, err)
	}
	if n, err := unix.IoctlGetInt(int(r.Fd()), unix.TIOCINQ); err != nil || n != len("frame") {
		t.Errorf("%d bytes left to read, %v; want the 5 written", n, err)
	}

	r2, w2, err := sys.Pipe("input")
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	time.AfterFunc(100*time.Millisecond, func() { w2.Close() })
	awaitInput(r2) // returns once the writer is gone
	w.Close()

	file, err := os.Create(filepath.Join(t.TempDir(), "image"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	awaitInput(file)
}

// awaitInput is what RunFilter does before its first frame: awaitFirst on
// a waiter of its own.
func awaitInput(in io.Reader) {
	if pw := newPipeWaiter(in); pw != nil {
		defer pw.close()
		pw.awaitFirst(in)
	}
}

// goroutines is the stacks of every goroutine.
func goroutines() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// parkedIn: a goroutine in state waits with fn on its stack.
func parkedIn(state, fn string) bool {
	for _, g := range strings.Split(goroutines(), "\n\n") {
		if strings.Contains(g, "["+state) && strings.Contains(g, fn) {
			return true
		}
	}
	return false
}

// Between stages linked as cr-dump links them (LinkPipe), the writer's
// wait ends on the reader's word, not on what is left in the pipe: at
// once when the reader says so (the header here still unread, so a look
// at the pipe would have waited on), when the reader's stage fails
// before reading, and never before; the links go with the stages.
func TestAwaitLinkedReader(t *testing.T) {
	r, w := pipeWith(t, "header")
	LinkPipe(r, w)
	t.Cleanup(func() { links.Delete(r); links.Delete(w) })
	const delay = 200 * time.Millisecond
	go func() {
		time.Sleep(delay)
		headerRead(r)
	}()
	if took := awaitFor(t, w, 20*time.Second); took < delay || took > 10*time.Second {
		t.Fatalf("returned after %v; the reader said it had the header after %v", took, delay)
	}

	r2, w2 := pipeWith(t, "header")
	LinkPipe(r2, w2)
	stage := FilterCommand("cr-test", "", nil, func(*cli.Context) (Filter, error) { return Filter{}, nil })
	go RunIn(stage, []string{"--nope"}, r2, nil) // a usage error: no header read
	if took := awaitFor(t, w2, 20*time.Second); took > 10*time.Second {
		t.Fatalf("the reader's stage failed, and the writer waited %v", took)
	}
	r3, w3 := pipeWith(t, "header")
	LinkPipe(r3, w3)
	t.Cleanup(func() { links.Delete(w3) })
	DropLink(r3) // its stage never started
	if took := awaitFor(t, w3, 20*time.Second); took > 10*time.Second {
		t.Fatalf("the reader's stage never started, and the writer waited %v", took)
	}
	deadline := time.Now().Add(10 * time.Second)
	for linkOf(r2) != nil && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if linkOf(r2) != nil {
		t.Error("the reader's link is left after its stage ended")
	}
}

// Between linked stages the reader's wait for its first frames ends on
// the writer's word (framesWritten after a flush), not before it, and
// when the writer's stage ends without a word; and on frames in the pipe
// without a word (a writer that fills the pipe before it says anything
// must not wait on its reader for ever).
func TestAwaitLinkedInput(t *testing.T) {
	r, w := pipeWith(t, "")
	LinkPipe(r, w)
	t.Cleanup(func() { links.Delete(r); links.Delete(w) })
	done := awaitingInput(r)
	select {
	case <-done:
		t.Fatal("awaitInput returned before the writer said anything")
	case <-time.After(200 * time.Millisecond):
	}
	framesWritten(w)
	ends(t, done, "awaitInput did not return once the writer said it wrote")

	r2, w2 := pipeWith(t, "")
	LinkPipe(r2, w2)
	done = awaitingInput(r2)
	stage := FilterCommand("cr-test", "", nil, func(*cli.Context) (Filter, error) { return Filter{}, nil })
	go RunIn(stage, []string{"--nope"}, nil, w2) // a usage error: nothing written
	ends(t, done, "the writer's stage ended, and its reader still waits")

	r3, w3 := pipeWith(t, "")
	LinkPipe(r3, w3)
	t.Cleanup(func() { links.Delete(r3); links.Delete(w3) })
	done = awaitingInput(r3)
	time.Sleep(100 * time.Millisecond)
	if _, err := w3.WriteString("frames"); err != nil {
		t.Fatal(err)
	}
	ends(t, done, "frames in the pipe without a word, and the reader still waits")
}

// awaitingInput runs awaitInput(r) on a goroutine of its own; the channel
// is closed when it returns.
func awaitingInput(r *os.File) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		awaitInput(r)
	}()
	return done
}

// ends fails t with why unless done is closed within 10 s.
func ends(t *testing.T, done <-chan struct{}, why string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal(why)
	}
}

// After its first frames, a filter waits for more on the runtime's poller
// ("IO wait"), not in read(2) ("syscall", keeping a P): two of cr-dump's
// stages blocked so held both Ps, and a third's new goroutines waited
// 10-20 ms for one (doc/performance.md 80). Between linked stages too: the
// first frames' word, which cuts the first wait short, must not cut the
// later ones.
func TestRunFilterWaitsOnThePoller(t *testing.T) {
	for _, linked := range []bool{false, true} {
		t.Run(map[bool]string{false: "pipe", true: "linked"}[linked], func(t *testing.T) {
			inR, inW, err := sys.Pipe("input")
			if err != nil {
				t.Fatal(err)
			}
			defer inW.Close()
			outR, outW, err := os.Pipe() // outR on the poller: read with a deadline
			if err != nil {
				t.Fatal(err)
			}
			defer outR.Close()
			if linked {
				LinkPipe(inR, inW)
				defer DropLink(inR)
			}
			done := make(chan error, 1)
			go func() {
				done <- RunFilter(inR, outW, false, Filter{})
				inR.Close()
				outW.Close()
			}()
			if err := outR.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
				t.Fatal(err)
			}
			r, err := image.NewReader(outR) // its header taken: AnnounceOutput waits for no one
			if err != nil {
				t.Fatal(err)
			}
			w, err := image.NewWriter(inW, image.WriterOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if err := w.Flush(); err != nil { // the header alone: the filter waits for its first frame
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for !parkedIn("IO wait", "crpipe/lib/stage.(*pipeWaiter).awaitFirst(") {
				if time.Now().After(deadline) {
					t.Fatalf("the filter does not wait for its first frame on the poller:\n%s", goroutines())
				}
				time.Sleep(time.Millisecond)
			}
			if err := w.WriteMessage(image.TypeProcess, &pb.Process{Pid: 5, Comm: "t"}); err != nil {
				t.Fatal(err)
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			framesWritten(inW)
			if f, err := r.Next(); err != nil || f.Type != image.TypeProcess {
				t.Fatalf("the Process frame did not come through: %v", err)
			}
			deadline = time.Now().Add(10 * time.Second)
			for !parkedIn("IO wait", "crpipe/lib/image.waitingReader.Read(") {
				if time.Now().After(deadline) {
					t.Fatalf("the filter does not wait for its input on the poller:\n%s", goroutines())
				}
				time.Sleep(time.Millisecond)
			}
			if err := w.Close(); err != nil { // the End
				t.Fatal(err)
			}
			inW.Close()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if f, err := r.Next(); err != nil || f.Type != image.TypeEnd {
				t.Fatalf("after the Process frame %v, %v; want the End", f, err)
			}
		})
	}
}
