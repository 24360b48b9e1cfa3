package image

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"crpipe/lib/internal/crc32c"
	"crpipe/lib/sys"
)

// Page contents left in the image file (issue 10, speed). A restore that
// reads a frame into a buffer and then writes the buffer into the task
// copies every byte twice with the whole frame between: by the time the
// write comes, the first pieces have left the CPU's caches. When the input
// is a regular file, the reader can instead return a pages frame with only
// its header and preamble read; the caller then reads the contents itself
// in pieces of crcPiece bytes, each checksummed and used while still in
// cache, on several threads at once (Frame.ReadPieces), and the frame's
// checksum is checked once its last piece is in. In C on this machine,
// reading 1 GiB of a tmpfs file in 256 KiB pieces and writing each into
// fresh huge pages took 0.27 s on two threads, where cr-restore's frame
// at a time took 0.57 s (doc/performance.md, 31). From a pipe the same is
// done in order: a Deferred frame's pieces are read one after the other
// and used by other goroutines as they come (readDeferred).

// fileContents are the page contents of a frame, left in the input file.
type fileContents struct {
	f        *os.File
	inMemory bool   // f is read with raw calls (fileInput)
	at       int64  // file offset of the first content byte
	n        int64  // content bytes
	head     uint32 // CRC-32C of the header's first 12 bytes and the preamble
	sum      uint32 // the checksum the header gives
}

// PagesInFile asks that pages frames with at least parallelMin content
// bytes be returned with their contents left in the input (Frame.InFile);
// call it before the first Next. It reports whether it took effect: only
// for an uncompressed regular file, read with prefetching.
func (rd *Reader) PagesInFile() bool {
	if rd.begun || rd.d.file == nil || rd.pf == nil || rd.d.move != nil {
		return false
	}
	rd.d.inFile = true
	return true
}

// ContentBytes is the length of a pages frame's page contents, wherever
// they are.
func (f *Frame) ContentBytes() int {
	switch {
	case f.file != nil:
		return int(f.file.n)
	case f.deferred > 0:
		return int(f.deferred)
	}
	return max(0, len(f.Payload)-PagesPreamble)
}

// InFile reports whether the frame's page contents were left in the input
// file (Reader.PagesInFile): Payload then holds only the preamble, and the
// contents are read with ReadPieces before the next Next.
func (f *Frame) InFile() bool { return f.file != nil }

// leavePages returns the pages frame whose header h was just read, with its
// preamble read and its contents skipped.
func (rd *decoder) leavePages(f *Frame, h []byte, length uint32) (*Frame, error) {
	if cap(rd.buf) < PagesPreamble {
		rd.buf = make([]byte, 0, 64<<10)
	}
	pre := rd.buf[:PagesPreamble]
	what := fmt.Sprintf("frame %d (%s) at offset %d: payload", f.Index, f.Type, f.Offset)
	if n, err := rd.readFull(pre); err != nil {
		return nil, rd.readErr(err, n, what, length)
	}
	n := int64(length - PagesPreamble)
	at := rd.file.base + rd.off + FrameHeaderSize + PagesPreamble
	st, err := rd.file.f.Stat()
	if err != nil {
		return nil, rd.readErr(err, PagesPreamble, what, length)
	}
	if have := st.Size() - at; have < n {
		return nil, rd.readErr(io.ErrUnexpectedEOF, PagesPreamble+int(max(have, 0)), what, length)
	}
	if err := rd.skip(n); err != nil {
		return nil, rd.readErr(err, PagesPreamble, what, length)
	}
	f.Payload = pre
	f.file = &fileContents{f: rd.file.f, inMemory: rd.file.inMemory, at: at, n: n, head: frameCRC(h, pre), sum: binary.LittleEndian.Uint32(h[12:])}
	if n%PageSize != 0 {
		err = fmt.Errorf("frame %d at offset %d: pages payload of %d bytes is not a preamble plus whole pages: %w", f.Index, f.Offset, length, ErrCorrupt)
	} else {
		_, err = f.PagesHeader()
	}
	if err != nil {
		// A frame read whole has its checksum checked first: so here.
		if cerr := f.ReadPieces(2, func(int, []byte) error { return nil }); cerr != nil {
			return nil, cerr
		}
		return nil, err
	}
	rd.off += FrameHeaderSize + int64(length)
	rd.index++
	rd.counts.add(TypePages, int(length))
	return f, nil
}

// skip moves the input n bytes on: through what the read-ahead buffer
// holds, then by seeking the file.
func (rd *decoder) skip(n int64) error {
	if k := int64(rd.rend - rd.rpos); n <= k {
		rd.rpos += int(n)
		return nil
	}
	n -= int64(rd.rend - rd.rpos)
	rd.rpos = rd.rend
	_, err := rd.file.f.Seek(n, io.SeekCurrent)
	return err
}

var pieceBufs = sync.Pool{New: func() any { b := make([]byte, crcPiece); return &b }}

// PieceSize is the size of the pieces ReadPieces reads.
const PieceSize = crcPiece

// givenPieces are buffers a caller gave ReadPieces (GivePieceBuffers),
// taken before the pool's; base..end is where they lie.
var givenPieces struct {
	sync.Mutex
	free      []*[]byte
	base, end uintptr // 0, 0: none given
}

// GivePieceBuffers gives ReadPieces mem, a multiple of PieceSize, to read
// pieces into before any buffer of its own: memory the caller has made
// cheap to write into (cr-restore's, faulted in ahead in huge pages).
// It is given once, for good.
func GivePieceBuffers(mem []byte) {
	if len(mem) < PieceSize {
		return
	}
	g := &givenPieces
	g.Lock()
	defer g.Unlock()
	if g.end != 0 {
		return
	}
	g.base = uintptr(unsafe.Pointer(&mem[0]))
	g.end = g.base + uintptr(len(mem)/PieceSize*PieceSize)
	for off := 0; off+PieceSize <= len(mem); off += PieceSize {
		b := mem[off : off+PieceSize : off+PieceSize]
		g.free = append(g.free, &b)
	}
}

// getPiece returns a buffer of PieceSize bytes: a given one if one is free.
func getPiece() *[]byte {
	g := &givenPieces
	g.Lock()
	if n := len(g.free); n > 0 {
		b := g.free[n-1]
		g.free = g.free[:n-1]
		g.Unlock()
		return b
	}
	g.Unlock()
	return pieceBufs.Get().(*[]byte)
}

// putPiece takes back a buffer from getPiece.
func putPiece(b *[]byte) {
	g := &givenPieces
	p := uintptr(unsafe.Pointer(&(*b)[:1][0]))
	g.Lock()
	given := p >= g.base && p < g.end
	if given {
		g.free = append(g.free, b)
	}
	g.Unlock()
	if !given {
		pieceBufs.Put(b)
	}
}

// ReadPieces reads the page contents of an InFile or Deferred frame in
// pieces of up to 256 KiB, checksums each, and calls use(off, piece) for
// it, off being the piece's offset in the contents; use is called from up
// to workers goroutines at once, and piece is valid during the call only.
// An InFile frame's pieces are read by those goroutines, in parallel; a
// Deferred frame's are read in order from the input, by the caller, and
// the frame is then complete, as if passed. The frame's checksum is
// checked when every piece is in: pieces of a damaged frame have been
// given to use by then, so the caller must not act on them before
// ReadPieces returns nil. It must be called before the next Next.
func (f *Frame) ReadPieces(workers int, use func(off int, piece []byte) error) error {
	if f.deferred > 0 {
		return f.readDeferred(workers, use)
	}
	c := f.file
	if c == nil {
		return fmt.Errorf("frame %d at offset %d: its contents were read already", f.Index, f.Offset)
	}
	pieces := int((c.n + crcPiece - 1) / crcPiece)
	sums := make([]uint32, pieces)
	var next atomic.Int64
	var failed atomic.Bool
	readAt := c.f.ReadAt
	if c.inMemory {
		readAt = func(b []byte, off int64) (int, error) { return sys.PreadInMemory(c.f, b, off) }
	}
	work := func() error {
		bp := getPiece()
		defer putPiece(bp)
		for !failed.Load() {
			i := int(next.Add(1) - 1)
			if i >= pieces {
				return nil
			}
			lo := int64(i) * crcPiece
			b := (*bp)[:min(c.n-lo, crcPiece)]
			if m, err := readAt(b, c.at+lo); err != nil {
				failed.Store(true)
				what := fmt.Sprintf("frame %d (%s) at offset %d: payload", f.Index, f.Type, f.Offset)
				length := uint32(PagesPreamble + c.n)
				if errors.Is(err, io.EOF) {
					return fmt.Errorf("%s: %d of %d bytes: %w", what, PagesPreamble+lo+int64(m), length, ErrTruncated)
				}
				return fmt.Errorf("%s: %w", what, err)
			}
			sums[i] = crc32c.Update(0, b)
			if err := use(int(lo), b); err != nil {
				failed.Store(true)
				return err
			}
		}
		return nil
	}
	workers = max(1, min(workers, pieces))
	errs := make(chan error, workers)
	for range workers - 1 {
		go func() { errs <- work() }()
	}
	err := work()
	for range workers - 1 {
		if e := <-errs; err == nil {
			err = e
		}
	}
	if err != nil {
		return err
	}
	crc := c.head
	for i, s := range sums {
		crc = crc32c.Combine(crc, s, min(c.n-int64(i)*crcPiece, crcPiece))
	}
	if crc != c.sum {
		return fmt.Errorf("frame %d (%s) at offset %d: crc32c %08x, header says %08x: %w", f.Index, f.Type, f.Offset, crc, c.sum, ErrChecksum)
	}
	return nil
}

// readDeferred is ReadPieces for a Deferred frame: the contents are read
// from the input in order, here, while up to workers goroutines use the
// pieces read before (a restore from a pipe: each piece is written into
// the task while it is still in the CPU's cache).
func (f *Frame) readDeferred(workers int, use func(off int, piece []byte) error) error {
	rd := f.rd
	if rd.pending != f {
		return fmt.Errorf("frame %d (pages) at offset %d: its contents are gone: they must be read before the next Next", f.Index, f.Offset)
	}
	type piece struct {
		off int
		b   *[]byte
		n   int
	}
	workers = max(1, workers)
	pieces := make(chan piece, workers)
	var useErr error
	var failed atomic.Bool
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range pieces {
				if !failed.Load() {
					if err := use(p.off, (*p.b)[:p.n]); err != nil && !failed.Swap(true) {
						mu.Lock()
						useErr = err
						mu.Unlock()
					}
				}
				putPiece(p.b)
			}
		}()
	}
	crc := f.head
	off := 0
	var readErr error
	for rd.left > 0 && !failed.Load() {
		bp := getPiece()
		b := (*bp)[:min(rd.left, crcPiece)]
		n, err := rd.readFull(b)
		rd.left -= int64(n)
		crc = crc32c.Update(crc, b[:n])
		if err != nil {
			putPiece(bp)
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			readErr = err
			break
		}
		pieces <- piece{off, bp, n}
		off += n
	}
	close(pieces)
	wg.Wait()
	switch {
	case readErr != nil:
		return rd.failPending(f, readErr)
	case useErr != nil:
		rd.failPending(f, useErr)
		return useErr
	}
	rd.finishPending(io.Discard) // the contents are read: this only completes the frame
	if crc != f.sum {
		rd.err = fmt.Errorf("frame %d (%s) at offset %d: crc32c %08x, header says %08x: %w", f.Index, f.Type, f.Offset, crc, f.sum, ErrChecksum)
		return rd.err
	}
	return nil
}
