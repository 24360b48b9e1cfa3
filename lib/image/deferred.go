package image

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// deferMin: pages frames with fewer content bytes are read and verified
// like any frame; moving them separately would cost more than copying.
const deferMin = 64 << 10

// Mover moves exactly n bytes from src to dst without looking at them, and
// returns how many it moved. When src ends early it returns the count and
// io.ErrUnexpectedEOF. lib/stage's mover uses splice(2); this package knows
// no kernel.
type Mover func(dst io.Writer, src io.Reader, n int64) (int64, error)

// CopyMover is the Mover that copies through memory, in pieces of up to
// 1 MiB (few system calls; lz4 takes 1 MiB blocks).
func CopyMover(dst io.Writer, src io.Reader, n int64) (int64, error) {
	var m int64
	var err error
	if lz, ok := dst.(*lz4Writer); ok {
		m, err = lz.ReadFrom(io.LimitReader(src, n)) // into its blocks: no buffer
	} else {
		bp := copyBufs.Get().(*[]byte)
		m, err = io.CopyBuffer(dst, io.LimitReader(src, n), *bp)
		copyBufs.Put(bp)
	}
	if err == nil && m < n {
		err = io.ErrUnexpectedEOF
	}
	return m, err
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// DeferPages is for stages that pass frames through without using page
// contents; call it before the first Next. Next then returns a pages frame
// of 64 KiB or more with only its header and preamble read: Payload is the
// 16-byte preamble, Deferred is true, and the contents stay in the input
// until Writer.Pass moves them to its output with move (nil: CopyMover), or
// the next Next skips them. (Such a Reader does not prefetch.)
//
// The contents of a deferred frame are not verified: its CRC-32C is
// written on as it came, and the bytes it covers are passed unchanged, so
// the consumer that reads them (cr-restore, crit check) still verifies the
// checksum end to end (doc/stream-v1.md, section 7). The reader still
// checks the length and preamble (whole pages, aligned address) and counts
// the frame against the End frame.
func (rd *Reader) DeferPages(move Mover) {
	if move == nil {
		move = CopyMover
	}
	if !rd.begun {
		rd.d.move = move
	}
}

// WaitBeforeRead makes the Reader call wait before each read of its input
// (not of a compressed one: lz4 reads it); before the first Next. A stage
// parks so on the runtime's poller until its input pipe has something,
// rather than block in read(2) holding one of the runtime's Ps (lib/stage,
// pipeWaiter). Deferred page contents still move from the input itself.
func (rd *Reader) WaitBeforeRead(wait func()) {
	if !rd.begun && !rd.d.compressed {
		rd.d.src = waitingReader{rd.d.src, wait}
	}
}

type waitingReader struct {
	io.Reader
	wait func()
}

func (w waitingReader) Read(p []byte) (int, error) {
	w.wait()
	return w.Reader.Read(p)
}

func (rd *decoder) deferPages(f *Frame, h []byte, length uint32) (*Frame, error) {
	if cap(rd.buf) < PagesPreamble {
		rd.buf = make([]byte, 0, PagesPreamble)
	}
	pre := rd.buf[:PagesPreamble]
	if n, err := rd.readFull(pre); err != nil {
		return nil, rd.readErr(err, n, fmt.Sprintf("frame %d (%s) at offset %d: payload", f.Index, f.Type, f.Offset), length)
	}
	if (length-PagesPreamble)%PageSize != 0 {
		return nil, fmt.Errorf("frame %d at offset %d: pages payload of %d bytes is not a preamble plus whole pages: %w", f.Index, f.Offset, length, ErrCorrupt)
	}
	f.Payload = pre
	if _, _, err := f.Pages(); err != nil {
		return nil, err
	}
	f.sum = binary.LittleEndian.Uint32(h[12:])
	f.head = frameCRC(h, pre)
	f.rd, f.deferred = rd, int64(length-PagesPreamble)
	rd.pending, rd.left = f, f.deferred
	return f, nil
}

// buffered hands out the pending contents already in the read-ahead buffer.
func (rd *decoder) buffered() []byte {
	k := int(min(int64(rd.rend-rd.rpos), rd.left))
	b := rd.rb[rd.rpos : rd.rpos+k]
	rd.rpos += k
	rd.left -= int64(k)
	return b
}

// finishPending moves the rest of the pending frame's contents to dst and
// completes the frame. Errors are sticky.
func (rd *decoder) finishPending(dst io.Writer) error {
	f := rd.pending
	if b := rd.buffered(); len(b) > 0 {
		if _, err := dst.Write(b); err != nil {
			return rd.failPending(f, err)
		}
	}
	if rd.left > 0 {
		move := rd.move
		src := rd.raw
		if rd.compressed || dst == io.Discard {
			move, src = CopyMover, rd.src
		}
		m, err := move(dst, src, rd.left)
		rd.left -= m
		if err == nil && rd.left != 0 {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return rd.failPending(f, err)
		}
	}
	length := PagesPreamble + f.deferred
	rd.pending = nil
	rd.off += FrameHeaderSize + length
	rd.index++
	rd.counts.add(TypePages, int(length))
	return nil
}

func (rd *decoder) failPending(f *Frame, err error) error {
	length := PagesPreamble + f.deferred
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		err = fmt.Errorf("frame %d (%s) at offset %d: payload: %d of %d bytes: %w", f.Index, f.Type, f.Offset, length-rd.left, length, ErrTruncated)
	case isLz4Err(err):
		err = fmt.Errorf("frame %d at offset %d: lz4: %v: %w", f.Index, f.Offset, err, ErrCorrupt)
	default:
		err = fmt.Errorf("frame %d (%s) at offset %d: passing its contents: %w", f.Index, f.Type, f.Offset, err)
	}
	rd.pending = nil
	rd.err = err
	return err
}
