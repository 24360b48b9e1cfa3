package image

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// Reading the page contents of an image file on several cores (issue 10,
// speed). A restore reads and checks 1 GiB of image in 0.3-0.4 s on one
// core (the copy out of the page cache, then the CRC) while the task's
// memory fills in 0.25-0.35 s on the other: the reading was what a restore
// waited for. When the input is a regular file (not compressed), the
// prefetcher reads only the frame headers in order; the contents of each
// large pages frame are read with pread(2) and checked by a goroutine of
// their own, up to parallelReads frames at once, and the caller still
// gets the frames in order, each once its contents are in and checked,
// with the same errors a reading in order gives (doc/performance.md, 19).
const (
	parallelMin   = 256 << 10 // smaller payloads are read in order
	parallelReads = 2         // pages frames being read at once
)

// fileInput is the regular file the stream is read from, and the file
// offset where the stream starts, when its contents can be read at any
// offset.
type fileInput struct {
	f    *os.File
	base int64
}

// regularFile returns in as a fileInput when it is a regular file.
func regularFile(in io.Reader) *fileInput {
	f, ok := in.(*os.File)
	if !ok {
		return nil
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil
	}
	base, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil
	}
	return &fileInput{f: f, base: base}
}

// payloadRead is the reading of one frame's contents, in progress.
type payloadRead struct {
	in   *fileInput
	off  int64 // of the payload, in the stream
	n    int   // its length
	hdr  [12]byte
	sum  uint32
	done chan struct{}
	err  error
}

// skimPages passes over the payload of pages frame f (its header h just
// read) and returns f with its payload to be read by run.
func (rd *decoder) skimPages(f *Frame, h []byte, length, sum uint32) (*Frame, error) {
	p := &payloadRead{in: rd.file, off: rd.off + FrameHeaderSize, n: int(length), sum: sum, done: make(chan struct{})}
	copy(p.hdr[:], h[:12])
	k := min(rd.rend-rd.rpos, int(length))
	rd.rpos += k
	if rest := int64(length) - int64(k); rest > 0 {
		// Everything buffered was consumed: the file offset is where the
		// buffered bytes end.
		if _, err := rd.file.f.Seek(rest, io.SeekCurrent); err != nil {
			return nil, fmt.Errorf("frame %d at offset %d: %w", f.Index, f.Offset, err)
		}
	}
	f.read = p
	rd.off += FrameHeaderSize + int64(length)
	rd.index++
	rd.counts.add(f.Type, int(length))
	return f, nil
}

// run reads the contents into buf (of MaxPagesPayload bytes) and checks
// them, in pieces checksummed while they are in the CPU's cache.
func (p *payloadRead) run(f *Frame, buf []byte) {
	defer close(p.done)
	b := buf[:p.n]
	crc := crc32.Update(0, castagnoli, p.hdr[:])
	for n := 0; n < len(b); {
		m, err := p.in.f.ReadAt(b[n:min(len(b), n+crcPiece)], p.in.base+p.off+int64(n))
		crc = crc32.Update(crc, castagnoli, b[n:n+m])
		n += m
		if errors.Is(err, io.EOF) && n < len(b) {
			p.err = fmt.Errorf("frame %d (%s) at offset %d: payload: %d of %d bytes: %w", f.Index, f.Type, f.Offset, n, len(b), ErrTruncated)
			return
		}
		if err != nil && !errors.Is(err, io.EOF) {
			p.err = fmt.Errorf("frame %d at offset %d: %w", f.Index, f.Offset, err)
			return
		}
	}
	if crc != p.sum {
		p.err = fmt.Errorf("frame %d (%s) at offset %d: crc32c %08x, header says %08x: %w", f.Index, f.Type, f.Offset, crc, p.sum, ErrChecksum)
		return
	}
	f.Payload = b
	f.setSum(p.sum)
	if _, _, err := f.Pages(); err != nil {
		p.err = err
	}
}
