package image

import (
	"encoding/binary"
	"errors"
	"io"
	"math/bits"
	"sync"

	"github.com/pierrec/lz4/v4"
)

// lz4Writer writes one LZ4 frame of independent 1 MiB blocks without
// checksums (the stream has its own), compressing blocks on several
// goroutines and writing them in order. Unlike lz4.Writer it reads page
// contents straight into its block buffers (ReadFrom), so that they are
// copied once on their way from the input pipe to the compressor
// (doc/performance.md). Any LZ4 reader reads its frames.
type lz4Writer struct {
	out   io.Writer
	cur   []byte        // the block being filled; cap lz4Block
	order chan *lz4Job  // jobs in stream order, to the writing goroutine
	slots chan struct{} // bounds the blocks in flight (memory)
	pool  sync.Pool     // block buffers
	done  chan error    // the writing goroutine's end
	// The header and blocks handed to the writing goroutine and not yet
	// written: a stored block written by MoveFrom waits for them.
	unwritten sync.WaitGroup
	sampler   *lz4Sampler // MoveFrom's
	mu        sync.Mutex  // guards err
	err       error       // the first write error
}

// lz4Work is what a compressing goroutine needs, kept for the next block.
type lz4Work struct {
	c   lz4.Compressor
	dst []byte
}

var lz4Works = sync.Pool{New: func() any { return &lz4Work{dst: make([]byte, lz4Block)} }}

const lz4Block = 1 << 20

// lz4Header is the frame header: magic, FLG (version 1, independent
// blocks, no checksums, no content size), BD (1 MiB blocks) and the
// header checksum, the second byte of xxh32 of FLG and BD.
var lz4Header = func() []byte {
	h := []byte{0x04, 0x22, 0x4d, 0x18, 0x60, 0x60, 0}
	h[6] = byte(xxh32(h[4:6]) >> 8)
	return h
}()

type lz4Job struct {
	src   []byte
	work  *lz4Work // out is in work.dst
	out   []byte   // compressed, or nil: store src as it is
	ready chan struct{}
}

func newLz4Writer(out io.Writer, concurrency int) *lz4Writer {
	w := &lz4Writer{out: out, order: make(chan *lz4Job, concurrency+1), slots: make(chan struct{}, concurrency+1), done: make(chan error, 1)}
	w.pool.New = func() any { b := make([]byte, 0, lz4Block); return &b }
	w.unwritten.Add(1) // the frame header
	go w.writeBlocks()
	return w
}

func (w *lz4Writer) block() []byte { return (*w.pool.Get().(*[]byte))[:0] }

// Write buffers p into blocks.
func (w *lz4Writer) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if w.cur == nil {
			w.cur = w.block()
		}
		k := copy(w.cur[len(w.cur):cap(w.cur)], p)
		w.cur, p = w.cur[:len(w.cur)+k], p[k:]
		if len(w.cur) == cap(w.cur) {
			if err := w.submit(); err != nil {
				return n - len(p), err
			}
		}
	}
	return n, w.failed()
}

// ReadFrom reads r to its end straight into blocks (io.Copy uses it).
func (w *lz4Writer) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		if w.cur == nil {
			w.cur = w.block()
		}
		k, err := io.ReadFull(r, w.cur[len(w.cur):cap(w.cur)])
		w.cur = w.cur[:len(w.cur)+k]
		total += int64(k)
		if len(w.cur) == cap(w.cur) {
			if err := w.submit(); err != nil {
				return total, err
			}
		}
		switch {
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return total, w.failed()
		case err != nil:
			return total, err
		}
	}
}

// A RawSink is an output that can store page contents as they are
// without reading them into memory: lz4 when the contents do not
// compress. peek copies the next bytes of src into p without consuming
// them; move moves bytes from src to the sink's own output. lib/stage
// gives tee(2) and splice(2) for a pipe.
type RawSink interface {
	MoveFrom(src io.Reader, n int64, peek func(p []byte) (int, error), move Mover) (int64, error)
}

// lz4Sample is how much of each 1 MiB of contents is tried before the
// rest is read (1/32 of the block: compressing it costs little, reading
// the block into memory and writing it out again, a copy per byte, does).
const lz4Sample = 32 << 10

// lz4MinSample: a smaller sample is not judged (see MoveFrom).
const lz4MinSample = 4 << 10

// lz4Sampler is what MoveFrom needs to try a sample.
type lz4Sampler struct {
	c       lz4.Compressor
	in, out [lz4Sample]byte
}

// MoveFrom writes n bytes of src into blocks, deciding 1 MiB at a time
// from a sample of its first 32 KiB: contents whose sample compresses are
// read into blocks and compressed as Write's; the others become a block
// stored as it is that move carries from src to the output, never read
// here (random memory then costs what it costs uncompressed: one copy,
// into the file). A block mixing both is judged by its start.
func (w *lz4Writer) MoveFrom(src io.Reader, n int64, peek func([]byte) (int, error), move Mover) (int64, error) {
	if w.sampler == nil {
		w.sampler = new(lz4Sampler)
	}
	s := w.sampler
	var moved int64
	for moved < n {
		chunk := min(n-moved, lz4Block)
		k, err := peek(s.in[:min(chunk, lz4Sample)])
		if err != nil {
			return moved, err
		}
		// A sample of less than a page (the pipe held only the end of one)
		// tells nothing: such a MiB is compressed, which is always right.
		judged := int64(k) >= min(chunk, lz4MinSample)
		if c, err := s.c.CompressBlock(s.in[:k], s.out[:k]); !judged || err == nil && c > 0 && c < k-k/16 {
			m, err := CopyMover(w, src, chunk) // ReadFrom: into blocks
			moved += m
			if err != nil {
				return moved, err
			}
			continue
		}
		m, err := w.storeRaw(src, chunk, move)
		moved += m
		if err != nil {
			return moved, err
		}
	}
	return moved, nil
}

// storeRaw ends the current block (a block may be shorter than the
// frame's 1 MiB), waits until the writing goroutine has written every
// block before, and writes n bytes of src out as a stored block itself,
// moved by move.
func (w *lz4Writer) storeRaw(src io.Reader, n int64, move Mover) (int64, error) {
	if len(w.cur) > 0 {
		if err := w.submit(); err != nil {
			return 0, err
		}
	}
	w.unwritten.Wait()
	if err := w.failed(); err != nil {
		return 0, err
	}
	var size [4]byte
	binary.LittleEndian.PutUint32(size[:], uint32(n)|1<<31)
	_, err := w.out.Write(size[:])
	var m int64
	if err == nil {
		m, err = move(w.out, src, n)
	}
	if err != nil {
		w.setErr(err)
	}
	return m, err
}

// submit hands the current block to a compressing goroutine.
func (w *lz4Writer) submit() error {
	if err := w.failed(); err != nil {
		return err
	}
	j := &lz4Job{src: w.cur, ready: make(chan struct{})}
	w.cur = nil
	w.unwritten.Add(1)
	w.slots <- struct{}{}
	w.order <- j
	go func() {
		j.work = lz4Works.Get().(*lz4Work)
		// No more room than the block itself: the compressor gives up on
		// incompressible data as soon as its output would not be smaller.
		if n, err := j.work.c.CompressBlock(j.src, j.work.dst[:len(j.src)]); err == nil && n > 0 && n < len(j.src) {
			j.out = j.work.dst[:n]
		}
		close(j.ready)
	}()
	return nil
}

// writeBlocks writes the blocks in order as they are compressed.
func (w *lz4Writer) writeBlocks() {
	var err error
	if _, err = w.out.Write(lz4Header); err != nil {
		w.setErr(err)
	}
	var size [4]byte
	w.unwritten.Done()
	for j := range w.order {
		<-j.ready
		if err == nil {
			data, n := j.out, uint32(len(j.out))
			if data == nil {
				data, n = j.src, uint32(len(j.src))|1<<31 // stored as it is
			}
			binary.LittleEndian.PutUint32(size[:], n)
			if _, err = w.out.Write(size[:]); err == nil {
				_, err = w.out.Write(data)
			}
			if err != nil {
				w.setErr(err)
			}
		}
		src := j.src[:0]
		w.pool.Put(&src)
		lz4Works.Put(j.work)
		<-w.slots
		w.unwritten.Done()
	}
	if err == nil {
		_, err = w.out.Write(make([]byte, 4)) // end mark
	}
	w.done <- err
}

func (w *lz4Writer) setErr(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

func (w *lz4Writer) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close writes the last block and the end mark. It does not close out.
func (w *lz4Writer) Close() error {
	var err error
	if len(w.cur) > 0 {
		err = w.submit()
	}
	close(w.order)
	if e := <-w.done; err == nil {
		err = e
	}
	return err
}

// xxh32 is XXH32 with seed 0 of a few bytes (fewer than 16): enough for
// the frame header's checksum.
func xxh32(b []byte) uint32 {
	const p1, p2, p3, p5 = 2654435761, 2246822519, 3266489917, 374761393
	h := uint32(p5) + uint32(len(b))
	for ; len(b) >= 4; b = b[4:] {
		h += binary.LittleEndian.Uint32(b) * p3
		h = bits.RotateLeft32(h, 17) * 668265263
	}
	for _, c := range b {
		h += uint32(c) * p5
		h = bits.RotateLeft32(h, 11) * p1
	}
	h ^= h >> 15
	h *= p2
	h ^= h >> 13
	h *= p3
	h ^= h >> 16
	return h
}
