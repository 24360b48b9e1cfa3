package restore

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"

	"crpipe/lib/image"
	"crpipe/lib/sys"
)

// A task's memory is mapped and filled by a goroutine of its own (a fill),
// from its mm record to the next frame that is not one of its page frames.
// Its mappings are a few round trips to its restorer, which the
// coordinator used to wait for one task after the other; now they run
// while the task before it still takes its pages. Pages are still placed
// one task after the other, in stream order: a fill maps first, then waits
// for the fill before it to end. A frame whose contents lie in the image
// file is a reference to them (image.Reader.PagesInFile) and is queued, a
// small frame read whole is copied (up to fillCopyMax in all); any other
// is placed before the next frame is read.
//
// A task is forked from its parent once the parent's fill has ended (its
// memory is what the fork shares), and every other record waits for all
// fills to end.

// fillsInFlight: how many fills may be under way at once.
const fillsInFlight = 3

// fillQueue: how many frames may wait in a fill (up to 128 MiB of frames
// left in the image file). A channel is made per fill: 256 of them took
// 12 KB, a tenth of a small process's garbage.
const fillQueue = 32

// fill maps and fills one task.
type fill struct {
	t      *task
	prev   *fill // the fill started before it: pages wait for its end
	frames chan pageFrame
	done   chan struct{} // closed when the fill has ended
	err    error         // why it failed, once done
}

// pageFrame is one pages frame for a fill: its contents in the image file
// (f), or copied (data), or in the reader's buffer until the next frame is
// read, and then ack is closed once they are placed.
type pageFrame struct {
	addr uint64
	f    *image.Frame
	data []byte
	ack  chan struct{}
}

// fillCopyMax: how many bytes of small frames (read whole: less than 256
// KiB) may wait in fills, copied, before a frame waits for its placing.
const fillCopyMax = 2 << 20

// startFill starts t's fill, which maps its memory first when mapping is
// set (its mm record), or only places page frames (pages of t that come
// after another record: t's userfaultfd has ended, they are written).
func (rc *Ctx) startFill(t *task, mapping bool) error {
	rc.closeFill()
	// Bound what is under way: the oldest fills end first.
	for len(rc.fills) >= fillsInFlight {
		old := rc.fills[0]
		old.wait()
		if old.err != nil {
			return old.err
		}
		rc.fills = rc.fills[1:]
	}
	fl := &fill{t: t, frames: make(chan pageFrame, fillQueue), done: make(chan struct{})}
	if n := len(rc.fills); n > 0 {
		fl.prev = rc.fills[n-1]
	}
	rc.fills = append(rc.fills, fl)
	rc.open = fl
	go fl.run(rc, mapping)
	return nil
}

func (fl *fill) run(rc *Ctx, mapping bool) {
	defer close(fl.done)
	t := fl.t
	if mapping {
		fl.err = t.setupMm(rc)
	}
	if fl.prev != nil {
		fl.prev.wait()
		fl.prev = nil // not a chain of every fill of the restore
	}
	var ahead placing
	for pf := range fl.frames {
		if fl.err == nil && !rc.stopFills.Load() {
			if pf.data == nil && pf.f.InFile() {
				lo := pf.addr
				fl.err = ahead.start(lo, lo+uint64(pf.f.ContentBytes()), func() error { return t.place(pf) })
			} else if fl.err = ahead.wait(); fl.err == nil {
				fl.err = t.place(pf)
			}
		}
		if pf.ack != nil {
			close(pf.ack)
		}
		rc.fillCopied.Add(-int64(len(pf.data)))
		putCopy(pf.data)
	}
	fl.err = errors.Join(fl.err, ahead.wait(), t.endUffd())
}

// framesAhead: how many frames left in the image file a fill places at
// once. Each is read in pieces by a goroutine per CPU (placePages), which
// wait for one another at its end: with the next frame under way, the
// CPUs do not (doc/performance.md 89).
const framesAhead = 2

// placing are the frames left in the image file that a fill is placing.
type placing struct{ under []placed }

type placed struct {
	lo, hi uint64
	done   chan error
}

// start runs place, which writes the frame of pages at lo..hi, on a
// goroutine of its own, once fewer than framesAhead are under way and
// none of them writes where it does (a later frame's pages replace an
// earlier one's). It returns the error of one it waited for, if any.
func (a *placing) start(lo, hi uint64, place func() error) error {
	for len(a.under) > 0 && (len(a.under) >= framesAhead || a.overlaps(lo, hi)) {
		err := <-a.under[0].done
		a.under = a.under[1:]
		if err != nil {
			return err
		}
	}
	done := make(chan error, 1)
	go func() { done <- place() }()
	a.under = append(a.under, placed{lo, hi, done})
	return nil
}

func (a *placing) overlaps(lo, hi uint64) bool {
	for _, p := range a.under {
		if lo < p.hi && p.lo < hi {
			return true
		}
	}
	return false
}

// wait waits for the frames under way and returns the first error.
func (a *placing) wait() error {
	var err error
	for _, p := range a.under {
		if e := <-p.done; err == nil {
			err = e
		}
	}
	a.under = a.under[:0]
	return err
}

// wait waits for the fill to end (its frames must be closed).
func (fl *fill) wait() { <-fl.done }

// place writes one frame's pages into t.
func (t *task) place(pf pageFrame) error {
	f, data := pf.f, pf.data
	if data == nil {
		if f.InFile() || f.Deferred() {
			return t.placePages(pf.addr, f)
		}
		var err error
		if _, data, err = f.Pages(); err != nil {
			return err
		}
	}
	if err := t.writePages(pf.addr, data); err != nil {
		return fmt.Errorf("frame %d at offset %d: pid %d: %w", f.Index, f.Offset, t.proc.Pid, err)
	}
	return nil
}

// fillPages passes a pages frame of t to its fill (starting one where the
// open fill is another task's), and waits for it to be placed where its
// contents are in the reader's hands until the next frame.
func (rc *Ctx) fillPages(t *task, addr uint64, f *image.Frame) error {
	if rc.open == nil || rc.open.t != t {
		if err := rc.startFill(t, false); err != nil {
			return err
		}
	}
	// Contents read whole are in the reader's buffer until the next frame:
	// a small frame's are copied, up to fillCopyMax waiting in all.
	pf := pageFrame{addr: addr, f: f}
	if !f.InFile() && !f.Deferred() && rc.fillCopied.Load()+int64(len(f.Payload)) <= fillCopyMax {
		_, data, err := f.Pages()
		if err != nil {
			return err
		}
		pf.data = getCopy(len(data))
		copy(pf.data, data)
		rc.fillCopied.Add(int64(len(pf.data)))
	} else if !f.InFile() {
		pf.ack = make(chan struct{})
	}
	fl := rc.open
	fl.frames <- pf
	if pf.ack != nil {
		// Placed: the fill wrote err before it said so, and writes it
		// again only once its frames are closed.
		<-pf.ack
		return fl.err
	}
	return nil
}

// warmPieces gives the image reader a huge page, faulted in ahead, to
// read page frames into (image.GivePieceBuffers), once per process: the
// buffers it allocates otherwise are fresh heap, ~22 µs a 4 KiB page at
// its first write on the PVM guest (doc/performance.md 86). Run starts it
// first, to run while the helper starts and the tree is planned.
var warmPieces = sync.OnceFunc(func() {
	mem, _, err := sys.MapHugeAligned(sys.HugePage) // kept for good
	if err != nil {
		return // pieces come from the heap, as before
	}
	sys.WarmHuge(mem)
	image.GivePieceBuffers(mem)
})

// copyBufs keep the buffers of small frames' copies for the next frames,
// by size, a power of two pages: a copy allocated per frame was a quarter
// of the garbage of a restore of small processes (~45 KB a process, each
// a few frames of a page or two), and the collector ran for it.
var copyBufs [7]sync.Pool // 1 to 64 pages: a frame read whole is smaller

func copyClass(n int) int { return bits.Len(uint(max(n-1, 0) / pageSize)) }

// getCopy returns a buffer of n bytes for a copy.
func getCopy(n int) []byte {
	c := copyClass(n)
	if c >= len(copyBufs) {
		return make([]byte, n)
	}
	if b, ok := copyBufs[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, pageSize<<c)
}

// putCopy keeps b, from getCopy, for another copy.
func putCopy(b []byte) {
	if c := copyClass(cap(b)); c < len(copyBufs) && cap(b) == pageSize<<c {
		copyBufs[c].Put(&b)
	}
}

// failed is the fill's error if it has ended, or failed already.
func (fl *fill) failed() error {
	select {
	case <-fl.done:
		return fl.err
	default:
	}
	return nil
}

// closeFill tells the open fill that no more frames come.
func (rc *Ctx) closeFill() {
	if rc.open != nil {
		close(rc.open.frames)
		rc.open = nil
	}
}

// fillFailed returns the error of the first fill that failed, if any has.
func (rc *Ctx) fillFailed() error {
	for _, fl := range rc.fills {
		if err := fl.failed(); err != nil {
			return err
		}
	}
	return nil
}

// abortFills ends every fill, placing no more pages: the restore failed.
func (rc *Ctx) abortFills() {
	rc.stopFills.Store(true)
	rc.waitFills()
}

// waitFills ends every fill and returns the first error, in stream order.
func (rc *Ctx) waitFills() error {
	rc.closeFill()
	var first error
	for _, fl := range rc.fills {
		fl.wait()
		if first == nil {
			first = fl.err
		}
	}
	rc.fills = nil
	return first
}

// waitFillOf waits for t's fills to end, before t is forked from or its
// restorer used by anyone else.
func (rc *Ctx) waitFillOf(t *task) error {
	if rc.open != nil && rc.open.t == t {
		rc.closeFill()
	}
	for _, fl := range rc.fills {
		if fl.t == t {
			fl.wait()
			if fl.err != nil {
				return fl.err
			}
		}
	}
	return nil
}
