package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/pierrec/lz4/v4"

	"crpipe/lib/internal/crc32c"
	"crpipe/lib/pb"
)

// lz4FrameMagic starts an lz4 frame (little endian 0x184D2204).
var lz4FrameMagic = []byte{0x04, 0x22, 0x4d, 0x18}

// Buffering (doc/performance.md has the figures). Frame headers and small
// payloads come through a small read-ahead buffer; a payload of readAhead
// bytes or more is read straight into the payload buffer, in pieces of at
// most crcPiece bytes that are checksummed as soon as they arrive, while
// they are still in the CPU's cache (a 4 MiB frame checksummed after the
// whole read runs at DRAM speed, about half as fast).
const (
	readAhead = 64 << 10
	crcPiece  = 256 << 10
	// smallPayload: the payload buffer's middle size (readPayload).
	smallPayload = parallelMin + PagesPreamble
)

// Reader decodes a stream frame by frame.
type Reader struct {
	d *decoder
	// With an input that is a file (or pipe), a goroutine decodes the next
	// frame (reads it, decompresses it, verifies its checksum) while the
	// caller works on the current one: a restore fills memory on one core
	// while the next frame is read on the other.
	pf    *prefetcher
	cur   []byte // payload buffer of the frame the caller holds
	err   error
	end   *pb.End
	off   int64
	begun bool

	Major    uint16
	Minor    uint16
	HdrFlags uint32
	// Compressed is true when the input was an lz4 frame.
	Compressed bool
}

// decoder reads frames from the input, in the caller's goroutine or in the
// prefetcher's.
type decoder struct {
	src  io.Reader // the stream: the input, or lz4 decompressing it
	raw  io.Reader // the input when it is not compressed: deferred contents move from here
	rb   []byte    // read-ahead buffer holding rb[rpos:rend]
	rpos int
	rend int

	off    int64
	index  uint64
	buf    []byte
	end    *pb.End
	err    error // sticky: after a damaged frame the position is unknown
	counts Counts

	// Deferred pages (DeferPages): the frame whose contents are still in
	// the input, and how many of its bytes are.
	move    Mover
	pending *Frame
	left    int64

	compressed bool
	// The input as a regular file, while large pages frames are read in
	// parallel (parallel.go).
	file *fileInput
	// Large pages frames are returned with their contents left in file
	// (Reader.PagesInFile).
	inFile bool
}

// Counts are what an End frame attests.
type Counts struct {
	Frames     uint64
	PageFrames uint64
	PageBytes  uint64
}

func (c *Counts) add(t Type, payloadLen int) {
	c.Frames++
	if t == TypePages {
		c.PageFrames++
		c.PageBytes += uint64(payloadLen - PagesPreamble)
	}
}

// NewReader reads and checks the stream header. An lz4-compressed stream is
// detected and decompressed transparently.
func NewReader(in io.Reader) (*Reader, error) {
	d := &decoder{src: in, raw: in, rb: make([]byte, readAhead), file: regularFile(in)}
	// Look at the first 4 bytes without consuming them for lz4.
	for d.rend < 4 {
		n, err := in.Read(d.rb[d.rend:])
		d.rend += n
		if err != nil {
			break
		}
	}
	if d.rend < 4 {
		if d.rend == 0 {
			return nil, fmt.Errorf("header at offset 0: empty input: %w", ErrTruncated)
		}
		return nil, fmt.Errorf("header at offset 0: %w", ErrTruncated)
	}
	if bytes.Equal(d.rb[:4], lz4FrameMagic) {
		d.compressed, d.file = true, nil
		head := bytes.Clone(d.rb[:d.rend])
		d.src = lz4.NewReader(io.MultiReader(bytes.NewReader(head), in))
		d.raw = nil
		d.rpos, d.rend = 0, 0
	}
	var h [HeaderSize]byte
	if _, err := d.readFull(h[:]); err != nil {
		if isLz4Err(err) {
			return nil, fmt.Errorf("header at offset 0: lz4: %v: %w", err, ErrCorrupt)
		}
		return nil, fmt.Errorf("header at offset 0: %w", ErrTruncated)
	}
	if [8]byte(h[:8]) != Magic {
		return nil, fmt.Errorf("header at offset 0: %w", ErrMagic)
	}
	rd := &Reader{d: d, Compressed: d.compressed, off: HeaderSize}
	rd.Major = binary.LittleEndian.Uint16(h[8:])
	rd.Minor = binary.LittleEndian.Uint16(h[10:])
	rd.HdrFlags = binary.LittleEndian.Uint32(h[12:])
	if rd.Major != Major {
		return nil, fmt.Errorf("header at offset 0: stream version %d.%d, this reader knows major version %d: %w", rd.Major, rd.Minor, Major, ErrVersion)
	}
	d.off = HeaderSize
	if _, ok := in.(*os.File); ok || prefetchAlways {
		rd.pf = &prefetcher{}
	}
	return rd, nil
}

// isLz4Err: lz4's error type is internal, but all its messages say "lz4:".
func isLz4Err(err error) bool { return strings.HasPrefix(err.Error(), "lz4:") }

// fill reads once from the stream into the empty read-ahead buffer.
func (rd *decoder) fill() error {
	rd.rpos, rd.rend = 0, 0
	for {
		n, err := rd.src.Read(rd.rb)
		rd.rend = n
		if n > 0 {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// readFull is io.ReadFull through the read-ahead buffer: io.EOF when
// nothing was read, io.ErrUnexpectedEOF when part of p was.
func (rd *decoder) readFull(p []byte) (int, error) {
	n := copy(p, rd.rb[rd.rpos:rd.rend])
	rd.rpos += n
	for n < len(p) {
		if len(p)-n >= len(rd.rb) {
			m, err := io.ReadFull(rd.src, p[n:])
			n += m
			if err == io.EOF && n > 0 {
				err = io.ErrUnexpectedEOF
			}
			return n, err
		}
		if err := rd.fill(); err != nil {
			if err == io.EOF && n > 0 {
				err = io.ErrUnexpectedEOF
			}
			return n, err
		}
		m := copy(p[n:], rd.rb[:rd.rend])
		rd.rpos = m
		n += m
	}
	return n, nil
}

// readByte reads one byte (to see whether anything follows the End frame).
func (rd *decoder) readByte() (byte, error) {
	if rd.rpos == rd.rend {
		if err := rd.fill(); err != nil {
			return 0, err
		}
	}
	rd.rpos++
	return rd.rb[rd.rpos-1], nil
}

// Next returns the next frame. After the End frame has been read and its
// counts checked, Next returns io.EOF; a stream that stops before its End
// frame is ErrTruncated. After any other error Next keeps returning it: the
// position in a damaged stream means nothing. The returned frame's Payload
// is reused by the next call.
func (rd *Reader) Next() (*Frame, error) {
	if !rd.begun {
		rd.begun = true
		if rd.pf != nil && rd.d.move == nil {
			rd.pf.start(rd, rd.d)
		} else {
			rd.pf, rd.d.file = nil, nil
		}
	}
	if rd.pf != nil {
		return rd.nextPrefetched()
	}
	return rd.d.Next()
}

// Next is Reader.Next without prefetching.
func (rd *decoder) Next() (*Frame, error) {
	if rd.err != nil {
		return nil, rd.err
	}
	if rd.end != nil {
		return nil, io.EOF
	}
	if rd.pending != nil {
		// The caller did not pass the deferred frame on: skip its contents.
		if err := rd.finishPending(io.Discard); err != nil {
			return nil, err
		}
	}
	f, err := rd.next()
	if err != nil {
		rd.err = err
	}
	return f, err
}

func (rd *decoder) next() (*Frame, error) {
	var h [FrameHeaderSize]byte
	n, err := rd.readFull(h[:])
	if err != nil {
		if n > 0 && errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("frame %d at offset %d: frame header: %d of %d bytes: %w", rd.index, rd.off, n, FrameHeaderSize, ErrTruncated)
		}
		return nil, rd.readErr(err, n, "frame header", 0)
	}
	f := &Frame{
		Type:   Type(binary.LittleEndian.Uint32(h[0:])),
		Flags:  binary.LittleEndian.Uint32(h[4:]),
		Index:  rd.index,
		Offset: rd.off,
	}
	length := binary.LittleEndian.Uint32(h[8:])
	sum := binary.LittleEndian.Uint32(h[12:])
	limit := uint32(MaxPayload)
	if f.Type == TypePages {
		limit = MaxPagesPayload
	}
	if length > limit {
		return nil, fmt.Errorf("frame %d at offset %d: %s length %d > %d: %w", f.Index, f.Offset, f.Type, length, limit, ErrTooLarge)
	}
	if rd.inFile && rd.file != nil && f.Type == TypePages && length >= PagesPreamble+parallelMin {
		return rd.leavePages(f, h[:], length) // infile.go
	}
	if rd.move != nil && f.Type == TypePages && length >= PagesPreamble+deferMin {
		return rd.deferPages(f, h[:], length)
	}
	var got uint32
	f.Payload, got, n, err = rd.readPayload(int(length), f.Type == TypePages, crc32c.Update(0, h[:12]))
	if err != nil {
		return nil, rd.readErr(err, n, fmt.Sprintf("frame %d (%s) at offset %d: payload", f.Index, f.Type, f.Offset), length)
	}
	if got != sum {
		return nil, fmt.Errorf("frame %d (%s) at offset %d: crc32c %08x, header says %08x: %w", f.Index, f.Type, f.Offset, got, sum, ErrChecksum)
	}
	f.setSum(sum)
	if f.Type == TypePages {
		// A pages frame that is not a preamble plus whole aligned pages is
		// damage, and its page bytes could not be counted.
		if _, _, err := f.Pages(); err != nil {
			return nil, err
		}
	}
	rd.off += FrameHeaderSize + int64(length)
	rd.index++
	if f.Type == TypeEnd {
		if err := rd.checkEnd(f); err != nil {
			return nil, err
		}
		return f, nil
	}
	rd.counts.add(f.Type, len(f.Payload))
	return f, nil
}

// readPayload reads length bytes into the reused buffer and returns the
// checksum crc continued over them. A buffer too small grows with the bytes
// that actually arrive, so a hostile length on a short input costs what the
// input holds, not the cap.
func (rd *decoder) readPayload(length int, pages bool, crc uint32) ([]byte, uint32, int, error) {
	if cap(rd.buf) < length && length <= MaxPagesPayload {
		// Up to a full pages frame the buffer is made at once, in one of
		// three sizes: growing by small steps would leave garbage behind,
		// which is peak RSS, and a hostile length costs at most 4 MiB.
		// The middle size holds every pages frame a file's reader takes
		// in (larger ones stay in the file: PagesInFile), so that a small
		// restore does not make 4 MiB for a frame of 64 KiB and collect
		// garbage for it.
		c := MaxPagesPayload
		switch {
		case length <= readAhead:
			c = readAhead
		case length <= smallPayload:
			c = smallPayload
		}
		rd.buf = make([]byte, 0, c)
	}
	if cap(rd.buf) < length {
		// Grow in steps as bytes arrive: at most doubling what is there.
		b := rd.buf[:0]
		for len(b) < length {
			step := min(length-len(b), max(len(b), 1<<20))
			nb := make([]byte, len(b), len(b)+step)
			copy(nb, b)
			var n int
			var err error
			nb, crc, n, err = rd.readInto(nb[:len(b)+step], len(b), crc)
			b = nb[:len(b)+n]
			if err != nil {
				return b, crc, len(b), err
			}
		}
		rd.buf = b
		return b, crc, length, nil
	}
	b := rd.buf[:length]
	if pages && rd.file != nil && length >= parallelMin {
		return rd.readSplit(b, rd.off+FrameHeaderSize, crc) // parallel.go
	}
	b, crc, n, err := rd.readInto(b, 0, crc)
	return b, crc, n, err
}

// readInto fills b[from:], checksumming each piece as it arrives. It
// returns how many bytes it read.
func (rd *decoder) readInto(b []byte, from int, crc uint32) ([]byte, uint32, int, error) {
	n := copy(b[from:], rd.rb[rd.rpos:rd.rend])
	rd.rpos += n
	crc = crc32c.Update(crc, b[from:from+n])
	for from+n < len(b) {
		at := from + n
		if len(b)-at < len(rd.rb) {
			m, err := rd.readFull(b[at:])
			crc = crc32c.Update(crc, b[at:at+m])
			n += m
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return b, crc, n, err
		}
		m, err := rd.src.Read(b[at:min(len(b), at+crcPiece)])
		crc = crc32c.Update(crc, b[at:at+m])
		n += m
		if err == io.EOF {
			if m > 0 {
				continue
			}
			return b, crc, n, io.ErrUnexpectedEOF
		}
		if err != nil {
			return b, crc, n, err
		}
	}
	return b, crc, n, nil
}

func (rd *decoder) readErr(err error, n int, what string, want uint32) error {
	// (lz4 wraps io.ErrUnexpectedEOF when its input stops inside a block.)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		if want > 0 {
			return fmt.Errorf("%s: %d of %d bytes: %w", what, n, want, ErrTruncated)
		}
		return fmt.Errorf("frame %d at offset %d: stream ends without an end frame: %w", rd.index, rd.off, ErrTruncated)
	}
	if isLz4Err(err) {
		return fmt.Errorf("frame %d at offset %d: lz4: %v: %w", rd.index, rd.off, err, ErrCorrupt)
	}
	return fmt.Errorf("frame %d at offset %d: %w", rd.index, rd.off, err)
}

func (rd *decoder) checkEnd(f *Frame) error {
	var end pb.End
	if err := pb.Unmarshal(f.Payload, &end); err != nil {
		return fmt.Errorf("frame %d (end) at offset %d: %v: %w", f.Index, f.Offset, err, ErrCorrupt)
	}
	c := rd.counts
	if end.Frames != c.Frames || end.PageFrames != c.PageFrames || end.PageBytes != c.PageBytes {
		return fmt.Errorf("frame %d (end) at offset %d: end says %d frames, %d page frames, %d page bytes; read %d, %d, %d: %w",
			f.Index, f.Offset, end.Frames, end.PageFrames, end.PageBytes, c.Frames, c.PageFrames, c.PageBytes, ErrCorrupt)
	}
	if !end.Complete {
		return fmt.Errorf("frame %d (end) at offset %d: the stream is marked incomplete (a stage failed): %w", f.Index, f.Offset, ErrCorrupt)
	}
	rd.end = &end
	// Nothing may follow the end frame, and an lz4 container must end cleanly.
	switch _, err := rd.readByte(); {
	case err == nil:
		return fmt.Errorf("frame %d at offset %d: %w", rd.index, rd.off, ErrTrailing)
	case err == io.EOF:
		return nil
	case rd.compressed:
		return fmt.Errorf("frame %d at offset %d: after the end frame: lz4: %v: %w", rd.index, rd.off, err, ErrCorrupt)
	default:
		return fmt.Errorf("frame %d at offset %d: after the end frame: %w", rd.index, rd.off, err)
	}
}

// End returns the End record once Next has returned it.
func (rd *Reader) End() *pb.End {
	if rd.pf != nil {
		return rd.end
	}
	return rd.d.end
}

// Drained says whether nothing read from the input is left undecoded:
// the next Next waits for the input (or finds its end). A filter flushes
// what it passed on then, so that the stages after it see every frame as
// soon as this one has (lz4 may still hold decompressed bytes: then a
// flush is only early). Before the first Next, what was read with the
// header is the decoder's.
func (rd *Reader) Drained() bool {
	if rd.pf != nil && rd.begun {
		return len(rd.pf.out) == 0
	}
	return rd.d.rpos == rd.d.rend
}

// Offset is the stream offset of the next frame.
func (rd *Reader) Offset() int64 {
	if rd.pf != nil {
		return rd.off
	}
	return rd.d.off
}

// Unmarshal decodes a metadata frame into m, naming the frame on failure.
func Unmarshal(f *Frame, m pb.Message) error {
	if err := pb.Unmarshal(f.Payload, m); err != nil {
		return CorruptFrame(f, err)
	}
	return nil
}

// CorruptFrame is the error for frame f, whose record err could not decode.
func CorruptFrame(f *Frame, err error) error {
	return fmt.Errorf("frame %d (%s) at offset %d: %v: %w", f.Index, f.Type, f.Offset, err, ErrCorrupt)
}
