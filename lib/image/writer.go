package image

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"runtime"

	"crpipe/lib/internal/crc32c"
	"crpipe/lib/pb"
)

// Writer encodes a stream. Close writes the End frame; a Writer that is not
// closed leaves a stream that readers reject as truncated, which is the point:
// a failed stage must never leave a stream that looks whole.
type Writer struct {
	out    io.Writer
	dst    io.Writer // out, or lz4 compressing into out
	bw     *bufio.Writer
	lz     *lz4Writer
	counts Counts
	closed bool
	donate Donor
}

// WriterOptions tune a Writer.
type WriterOptions struct {
	// Compress writes one lz4 frame of independent blocks compressed in parallel.
	Compress bool
	// Header, when set, is written instead of this version's header, so that
	// crit encode can reproduce a stream byte for byte. Its Major must be Major.
	Header *Header
	// Donate, when set, lets WritePagesSummed give page contents to the
	// output instead of copying them (lib/stage: vmsplice(2)).
	Donate Donor
}

// A Donor gives p, whole pages of the caller's own anonymous memory, to dst
// by reference, without copying them (see WritePagesSummed for what the
// caller must do then). It returns false, having done nothing, when it
// cannot (dst is not a pipe); then the bytes are written as usual.
type Donor func(dst io.Writer, p []byte) (bool, error)

// writeBuffer gathers frame headers and small frames; large payloads are
// written directly (directWrite).
const writeBuffer = 64 << 10

// NewWriter writes the stream header to out.
func NewWriter(out io.Writer, opt WriterOptions) (*Writer, error) {
	hdr := Header{Major: Major, Minor: Minor}
	if opt.Header != nil {
		hdr = *opt.Header
		if hdr.Major != Major {
			return nil, fmt.Errorf("image: cannot write stream version %d.%d, only major version %d: %w", hdr.Major, hdr.Minor, Major, ErrVersion)
		}
	}
	w := &Writer{out: out, donate: opt.Donate}
	dst := out
	if opt.Compress {
		// Every block in flight holds its input and output buffers: 1 MiB
		// blocks and at most 9 of them keep a compressing stage's memory
		// bounded whatever the core count (4 MiB blocks on 8 cores took
		// 120 MiB). lz4's window is 64 KiB, so larger blocks gain nothing.
		w.lz = newLz4Writer(out, min(runtime.GOMAXPROCS(0), 8))
		dst = w.lz
	}
	w.dst = dst
	w.bw = bufio.NewWriterSize(dst, writeBuffer)
	var h [HeaderSize]byte
	copy(h[:], Magic[:])
	binary.LittleEndian.PutUint16(h[8:], hdr.Major)
	binary.LittleEndian.PutUint16(h[10:], hdr.Minor)
	binary.LittleEndian.PutUint32(h[12:], hdr.Flags)
	if _, err := w.bw.Write(h[:]); err != nil {
		return nil, err
	}
	return w, nil
}

// directWrite: payload pieces this large skip the buffer and go straight
// to the output (or to lz4), after the buffered bytes before them.
const directWrite = 64 << 10

func (w *Writer) frame(t Type, flags uint32, payloads ...[]byte) error {
	return w.frameSum(t, flags, nil, payloads...)
}

// frameSum writes a frame whose checksum is *sum when sum is not nil (a
// frame passed through with the checksum it was verified against).
func (w *Writer) frameSum(t Type, flags uint32, sum *uint32, payloads ...[]byte) error {
	if w.closed {
		return fmt.Errorf("image: write after close")
	}
	n := 0
	for _, p := range payloads {
		n += len(p)
	}
	limit := MaxPayload
	if t == TypePages {
		limit = MaxPagesPayload
	}
	if n > limit {
		return fmt.Errorf("image: %s payload of %d bytes exceeds %d: %w", t, n, limit, ErrTooLarge)
	}
	var h [FrameHeaderSize]byte
	binary.LittleEndian.PutUint32(h[0:], uint32(t))
	binary.LittleEndian.PutUint32(h[4:], flags)
	binary.LittleEndian.PutUint32(h[8:], uint32(n))
	if sum != nil {
		binary.LittleEndian.PutUint32(h[12:], *sum)
	} else {
		binary.LittleEndian.PutUint32(h[12:], frameCRC(h[:], payloads...))
	}
	if _, err := w.bw.Write(h[:]); err != nil {
		return err
	}
	for _, p := range payloads {
		if err := w.write(p); err != nil {
			return err
		}
	}
	if t != TypeEnd {
		w.counts.add(t, n)
	}
	return nil
}

// write writes p after what is buffered; a large p is not copied into the
// buffer.
func (w *Writer) write(p []byte) error {
	if len(p) < directWrite {
		_, err := w.bw.Write(p)
		return err
	}
	if err := w.bw.Flush(); err != nil {
		return err
	}
	_, err := w.dst.Write(p)
	return err
}

// WriteFrame writes a frame with an already encoded payload.
func (w *Writer) WriteFrame(t Type, flags uint32, payload []byte) error {
	if t == TypeEnd {
		return fmt.Errorf("image: the end frame is written by Close")
	}
	if t == TypePages {
		// Readers refuse a pages frame that is not whole aligned pages; never write one.
		n := len(payload)
		if n < PagesPreamble || (n-PagesPreamble)%PageSize != 0 || binary.LittleEndian.Uint64(payload[8:])%PageSize != 0 {
			return fmt.Errorf("image: pages payload of %d bytes is not a preamble plus whole aligned pages: %w", n, ErrCorrupt)
		}
	}
	return w.frame(t, flags, payload)
}

// Pass writes a frame read from another stream unchanged. It writes the
// checksum the reader verified rather than computing it again, so a frame
// whose Payload bytes were changed in place must be written with WriteFrame
// (a changed Type, Flags or Payload slice is noticed). A deferred pages
// frame (Reader.DeferPages) has its contents moved from the reader's input
// to this writer's output; it must be passed before the reader's next Next.
func (w *Writer) Pass(f *Frame) error {
	if f.deferred > 0 && f.rd != nil {
		return w.passDeferred(f)
	}
	sum, ok := f.knownSum()
	if !ok || f.Type == TypeEnd {
		return w.WriteFrame(f.Type, f.Flags, f.Payload)
	}
	// The reader checked pages frames and the checksum: write it as it came.
	return w.frameSum(f.Type, f.Flags, &sum, f.Payload)
}

func (w *Writer) passDeferred(f *Frame) error {
	rd := f.rd
	if rd.pending != f {
		return fmt.Errorf("image: frame %d (pages) at offset %d: its contents are gone: a deferred frame must be passed before the next Next", f.Index, f.Offset)
	}
	if w.closed {
		return fmt.Errorf("image: write after close")
	}
	n := PagesPreamble + f.deferred
	var h [FrameHeaderSize]byte
	binary.LittleEndian.PutUint32(h[0:], uint32(f.Type))
	binary.LittleEndian.PutUint32(h[4:], f.Flags)
	binary.LittleEndian.PutUint32(h[8:], uint32(n))
	binary.LittleEndian.PutUint32(h[12:], f.sum)
	if _, err := w.bw.Write(h[:]); err != nil {
		return err
	}
	if _, err := w.bw.Write(f.Payload); err != nil {
		return err
	}
	if _, err := w.bw.Write(rd.buffered()); err != nil {
		return err
	}
	// Whatever is buffered goes first; the contents then move from the
	// input to the output directly (splice), or to lz4 in large pieces.
	if err := w.bw.Flush(); err != nil {
		return err
	}
	dst := w.out
	if w.lz != nil {
		dst = w.lz // which reads the contents straight into its blocks
	}
	if err := rd.finishPending(dst); err != nil {
		return err
	}
	w.counts.add(TypePages, int(n))
	return nil
}

// WriteMessage writes a metadata frame. Marshalling is deterministic so
// that the same state gives the same bytes.
func (w *Writer) WriteMessage(t Type, m pb.Message) error {
	b, err := pb.Marshal(m)
	if err != nil {
		return fmt.Errorf("image: encode %s: %w", t, err)
	}
	return w.WriteFrame(t, 0, b)
}

// WritePages writes page contents starting at addr without copying them.
// len(data) must be a multiple of PageSize and at most MaxPagesPayload-PagesPreamble.
func (w *Writer) WritePages(h PagesHeader, data []byte) error {
	if len(data)%PageSize != 0 || h.Addr%PageSize != 0 {
		return fmt.Errorf("image: pages at %#x: %d bytes is not whole aligned pages", h.Addr, len(data))
	}
	var pre [PagesPreamble]byte
	putPagesPreamble(pre[:], h)
	return w.frame(TypePages, 0, pre[:], data)
}

// PagesSum is the checksum of the pages frame for h and data. A producer
// computes it where data was just made, while it is in the CPU's cache, and
// gives it to WritePagesSummed; otherwise the writer reads data again.
func PagesSum(h PagesHeader, data []byte) uint32 {
	var pre [PagesPreamble]byte
	putPagesPreamble(pre[:], h)
	hdr := pagesHeader(len(data), 0)
	return frameCRC(hdr[:], pre[:], data)
}

// PagesSummer computes PagesSum piece by piece, in order, for contents
// whose length is known only at the end (a producer checksums each part
// just after making it, and may end a frame early: cr-pages leaves out
// pages of zeros). The zero value is ready to use.
type PagesSummer struct {
	crc uint32 // of the contents added so far
	n   int64
}

// Add continues the checksum over the next part of the contents.
func (s *PagesSummer) Add(p []byte) {
	s.crc = crc32c.Update(s.crc, p)
	s.n += int64(len(p))
}

// AddSum continues the checksum over the next n bytes of the contents,
// given their own CRC-32C (computed elsewhere: cr-pages' page lender).
func (s *PagesSummer) AddSum(crc uint32, n int64) {
	s.crc = crc32c.Combine(s.crc, crc, n)
	s.n += n
}

// Sum is the checksum of the pages frame for h and the contents added.
func (s *PagesSummer) Sum(h PagesHeader) uint32 {
	var pre [PagesPreamble]byte
	putPagesPreamble(pre[:], h)
	hdr := pagesHeader(int(s.n), 0)
	return crc32c.Combine(frameCRC(hdr[:], pre[:]), s.crc, s.n)
}

// WritePagesSummed is WritePages with the frame's checksum computed ahead
// (PagesSum, PagesSummer). With donate, data must be the caller's own
// private anonymous memory (from mmap, never Go heap memory): its pages may
// be handed to the output by reference (WriterOptions.Donate) instead of
// being copied. donated then says so, and the output still refers to those
// pages: the caller must drop them from its mapping (MADV_DONTNEED) before
// it writes into data again, or it changes what the output holds. (Drop a
// whole buffer of frames at once: dropping part of a transparent huge page
// splits it, and the buffer is then made of small pages for good.)
func (w *Writer) WritePagesSummed(h PagesHeader, data []byte, sum uint32, donate bool) (donated bool, err error) {
	return w.writePages(h, data, &sum, donate)
}

// WritePagesFrom writes a pages frame whose n bytes of contents are read
// from src, moved to the output by move (a splice from a pipe passes page
// references, the bytes never copied), with its checksum computed ahead.
func (w *Writer) WritePagesFrom(h PagesHeader, n int, sum uint32, src io.Reader, move Mover) error {
	if n%PageSize != 0 || h.Addr%PageSize != 0 {
		return fmt.Errorf("image: pages at %#x: %d bytes is not whole aligned pages", h.Addr, n)
	}
	if PagesPreamble+n > MaxPagesPayload {
		return fmt.Errorf("image: %s payload of %d bytes exceeds %d: %w", TypePages, PagesPreamble+n, MaxPagesPayload, ErrTooLarge)
	}
	if w.closed {
		return fmt.Errorf("image: write after close")
	}
	var pre [PagesPreamble]byte
	putPagesPreamble(pre[:], h)
	hdr := pagesHeader(n, sum)
	w.bw.Write(hdr[:])
	w.bw.Write(pre[:])
	if err := w.bw.Flush(); err != nil {
		return err
	}
	dst := w.out
	if w.lz != nil {
		dst = w.lz
	}
	if _, err := move(dst, src, int64(n)); err != nil {
		return err
	}
	w.counts.add(TypePages, PagesPreamble+n)
	return nil
}

func pagesHeader(n int, sum uint32) [FrameHeaderSize]byte {
	var hdr [FrameHeaderSize]byte
	binary.LittleEndian.PutUint32(hdr[0:], uint32(TypePages))
	binary.LittleEndian.PutUint32(hdr[8:], uint32(PagesPreamble+n))
	binary.LittleEndian.PutUint32(hdr[12:], sum)
	return hdr
}

func (w *Writer) writePages(h PagesHeader, data []byte, sum *uint32, donate bool) (bool, error) {
	if len(data)%PageSize != 0 || h.Addr%PageSize != 0 {
		return false, fmt.Errorf("image: pages at %#x: %d bytes is not whole aligned pages", h.Addr, len(data))
	}
	var pre [PagesPreamble]byte
	putPagesPreamble(pre[:], h)
	if !donate || w.donate == nil || w.lz != nil || len(data) < directWrite {
		return false, w.frameSum(TypePages, 0, sum, pre[:], data)
	}
	if w.closed {
		return false, fmt.Errorf("image: write after close")
	}
	n := PagesPreamble + len(data)
	if n > MaxPagesPayload {
		return false, fmt.Errorf("image: %s payload of %d bytes exceeds %d: %w", TypePages, n, MaxPagesPayload, ErrTooLarge)
	}
	hdr := pagesHeader(len(data), 0)
	if sum != nil {
		hdr = pagesHeader(len(data), *sum)
	} else {
		binary.LittleEndian.PutUint32(hdr[12:], frameCRC(hdr[:], pre[:], data))
	}
	w.bw.Write(hdr[:])
	w.bw.Write(pre[:])
	if err := w.bw.Flush(); err != nil {
		return false, err
	}
	given, err := w.donate(w.out, data)
	if err != nil {
		return given, err
	}
	if !given {
		if _, err := w.out.Write(data); err != nil {
			return false, err
		}
	}
	w.counts.add(TypePages, n)
	return given, nil
}

// Counts returns what has been written so far.
func (w *Writer) Counts() Counts { return w.counts }

// Close writes the End frame and flushes. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	end := &pb.End{Frames: w.counts.Frames, PageFrames: w.counts.PageFrames, PageBytes: w.counts.PageBytes, Complete: true}
	b, err := pb.Marshal(end)
	if err != nil {
		return err
	}
	if err := w.frame(TypeEnd, 0, b); err != nil {
		return err
	}
	w.closed = true
	if err := w.bw.Flush(); err != nil {
		return err
	}
	if w.lz != nil {
		return w.lz.Close()
	}
	return nil
}

// Flush pushes buffered frames to the underlying writer (not through lz4's
// block buffer). Stages call it so the next stage can start early.
func (w *Writer) Flush() error { return w.bw.Flush() }
