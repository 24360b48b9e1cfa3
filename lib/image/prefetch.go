package image

import (
	"fmt"
	"io"
	"runtime"

	"crpipe/lib/pb"
)

// prefetchAlways makes every Reader prefetch (tests); normally only readers
// of an *os.File do, where reading costs system calls worth overlapping.
var prefetchAlways = false

// prefetcher runs a decoder one frame ahead of the caller, in a goroutine
// of its own. Two payload buffers take turns: the caller holds one frame,
// the goroutine fills the other, so a frame's Payload stays valid until the
// caller's next Next, as the API promises, and memory is bounded by two
// frames.
type prefetcher struct {
	out  chan fetched
	free chan []byte
	stop chan struct{}
}

type fetched struct {
	f   *Frame
	err error
	buf []byte  // the payload buffer, to give back
	end *pb.End // with the End frame
}

func (pf *prefetcher) start(rd *Reader, d *decoder) {
	pf.out = make(chan fetched, 1)
	pf.free = make(chan []byte, 2)
	pf.stop = make(chan struct{})
	pf.free <- nil
	pf.free <- nil
	go pf.run(d)
	// A Reader dropped before its End stops the goroutine (the goroutine
	// holds the decoder, not the Reader).
	runtime.AddCleanup(rd, func(stop chan struct{}) { close(stop) }, pf.stop)
}

func (pf *prefetcher) run(d *decoder) {
	for {
		var buf []byte
		select {
		case buf = <-pf.free:
		case <-pf.stop:
			return
		}
		d.buf = buf
		f, err := d.Next()
		r := fetched{f: f, err: err, buf: d.buf}
		last := err != nil || f.Type == TypeEnd
		if err == nil && f.Type == TypeEnd {
			r.end = d.end
		}
		select {
		case pf.out <- r:
		case <-pf.stop:
			return
		}
		if last {
			return
		}
	}
}

func (rd *Reader) nextPrefetched() (*Frame, error) {
	if rd.err != nil {
		return nil, rd.err
	}
	if rd.end != nil {
		return nil, io.EOF
	}
	if rd.cur != nil {
		rd.pf.free <- rd.cur[:0]
		rd.cur = nil
	}
	r, ok := <-rd.pf.out
	if !ok {
		rd.err = fmt.Errorf("frame at offset %d: the reader stopped", rd.off)
		return nil, rd.err
	}
	if r.err != nil {
		rd.err = r.err
		return nil, r.err
	}
	rd.cur = r.buf
	rd.off = r.f.Offset + FrameHeaderSize + int64(len(r.f.Payload))
	if r.end != nil {
		rd.end = r.end
	}
	return r.f, nil
}
