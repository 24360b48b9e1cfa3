package image

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"strings"

	"github.com/pierrec/lz4/v4"
	"google.golang.org/protobuf/proto"

	"crpipe/lib/pb"
)

// lz4FrameMagic starts an lz4 frame (little endian 0x184D2204).
var lz4FrameMagic = []byte{0x04, 0x22, 0x4d, 0x18}

// Reader decodes a stream frame by frame.
type Reader struct {
	r        *bufio.Reader
	off      int64
	index    uint64
	buf      []byte
	end      *pb.End
	err      error // sticky: after a damaged frame the position is unknown
	counts   Counts
	Major    uint16
	Minor    uint16
	HdrFlags uint32
	// Compressed is true when the input was an lz4 frame.
	Compressed bool
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
	br := bufio.NewReaderSize(in, 1<<20)
	peek, err := br.Peek(4)
	if err != nil && len(peek) < 4 {
		if len(peek) == 0 && err == io.EOF {
			return nil, fmt.Errorf("header at offset 0: empty input: %w", ErrTruncated)
		}
		return nil, fmt.Errorf("header at offset 0: %w", ErrTruncated)
	}
	rd := &Reader{r: br}
	if string(peek) == string(lz4FrameMagic) {
		rd.Compressed = true
		rd.r = bufio.NewReaderSize(lz4.NewReader(br), 1<<20)
	}
	var h [HeaderSize]byte
	if _, err := io.ReadFull(rd.r, h[:]); err != nil {
		if isLz4Err(err) {
			return nil, fmt.Errorf("header at offset 0: lz4: %v: %w", err, ErrCorrupt)
		}
		return nil, fmt.Errorf("header at offset 0: %w", ErrTruncated)
	}
	if [8]byte(h[:8]) != Magic {
		return nil, fmt.Errorf("header at offset 0: %w", ErrMagic)
	}
	rd.Major = binary.LittleEndian.Uint16(h[8:])
	rd.Minor = binary.LittleEndian.Uint16(h[10:])
	rd.HdrFlags = binary.LittleEndian.Uint32(h[12:])
	if rd.Major != Major {
		return nil, fmt.Errorf("header at offset 0: stream version %d.%d, this reader knows major version %d: %w", rd.Major, rd.Minor, Major, ErrVersion)
	}
	rd.off = HeaderSize
	return rd, nil
}

// isLz4Err: lz4's error type is internal, but all its messages say "lz4:".
func isLz4Err(err error) bool { return strings.HasPrefix(err.Error(), "lz4:") }

// Next returns the next frame. After the End frame has been read and its
// counts checked, Next returns io.EOF; a stream that stops before its End
// frame is ErrTruncated. After any other error Next keeps returning it: the
// position in a damaged stream means nothing. The returned frame's Payload
// is reused by the next call.
func (rd *Reader) Next() (*Frame, error) {
	if rd.err != nil {
		return nil, rd.err
	}
	if rd.end != nil {
		return nil, io.EOF
	}
	f, err := rd.next()
	if err != nil {
		rd.err = err
	}
	return f, err
}

func (rd *Reader) next() (*Frame, error) {
	var h [FrameHeaderSize]byte
	n, err := io.ReadFull(rd.r, h[:])
	if err != nil {
		if n > 0 && err == io.ErrUnexpectedEOF {
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
	f.Payload, n, err = rd.readPayload(int(length))
	if err != nil {
		return nil, rd.readErr(err, n, fmt.Sprintf("frame %d (%s) at offset %d: payload", f.Index, f.Type, f.Offset), length)
	}
	if got := frameCRC(h[:], f.Payload); got != sum {
		return nil, fmt.Errorf("frame %d (%s) at offset %d: crc32c %08x, header says %08x: %w", f.Index, f.Type, f.Offset, got, sum, ErrChecksum)
	}
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

// readPayload reads length bytes into the reused buffer. A buffer too small
// grows with the bytes that actually arrive, so a hostile length on a short
// input costs what the input holds, not the cap.
func (rd *Reader) readPayload(length int) ([]byte, int, error) {
	if cap(rd.buf) >= length {
		b := rd.buf[:length]
		n, err := io.ReadFull(rd.r, b)
		return b, n, err
	}
	b := rd.buf[:0]
	for len(b) < length {
		step := min(length-len(b), max(len(b), 1<<20))
		nb := make([]byte, len(b), len(b)+step)
		copy(nb, b)
		n, err := io.ReadFull(rd.r, nb[len(b):len(b)+step])
		b = nb[:len(b)+n]
		if err != nil {
			return b, len(b), err
		}
	}
	rd.buf = b
	return b, length, nil
}

func (rd *Reader) readErr(err error, n int, what string, want uint32) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
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

func (rd *Reader) checkEnd(f *Frame) error {
	var end pb.End
	if err := proto.Unmarshal(f.Payload, &end); err != nil {
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
	switch _, err := rd.r.ReadByte(); {
	case err == nil:
		return fmt.Errorf("frame %d at offset %d: %w", rd.index, rd.off, ErrTrailing)
	case err == io.EOF:
		return nil
	case rd.Compressed:
		return fmt.Errorf("frame %d at offset %d: after the end frame: lz4: %v: %w", rd.index, rd.off, err, ErrCorrupt)
	default:
		return fmt.Errorf("frame %d at offset %d: after the end frame: %w", rd.index, rd.off, err)
	}
}

// End returns the End record once Next has returned it.
func (rd *Reader) End() *pb.End { return rd.end }

// Offset is the stream offset of the next frame.
func (rd *Reader) Offset() int64 { return rd.off }

// Unmarshal decodes a metadata frame into m, naming the frame on failure.
func Unmarshal(f *Frame, m proto.Message) error {
	if err := proto.Unmarshal(f.Payload, m); err != nil {
		return fmt.Errorf("frame %d (%s) at offset %d: %v: %w", f.Index, f.Type, f.Offset, err, ErrCorrupt)
	}
	return nil
}
