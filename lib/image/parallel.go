package image

import (
	"errors"
	"io"
	"os"

	"crpipe/lib/internal/crc32c"
	"crpipe/lib/sys"
)

// Reading the page contents of an image file on two cores (issue 10,
// speed). A restore reads and checks 1 GiB of image in 0.3-0.4 s on one
// core (the copy out of the page cache, then the CRC) while the task's
// memory fills in 0.25-0.35 s on the other: the reading was what a THP
// restore waited for. When the input is a regular file (not compressed),
// the second half of each large pages frame is read with pread(2) and
// checksummed by a goroutine of its own while the first half is read as
// before, and the two checksums are combined (crcCombine, writer.go).
// The frame is checked as a whole, with the errors of a reading in one
// piece, and the Reader keeps its two payload buffers: more would hold
// the Go heap near the stages' soft limit and keep the collector running
// (doc/performance.md, 19).
const parallelMin = 256 << 10 // smaller payloads are read in one piece

// fileInput is the regular file the stream is read from, and the file
// offset where the stream starts.
type fileInput struct {
	f    *os.File
	base int64
	// inMemory: f is on tmpfs (or ramfs), read with raw calls
	// (sys.PreadInMemory).
	inMemory bool
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
	return &fileInput{f: f, base: base, inMemory: sys.InMemoryFile(f)}
}

// readSplit fills b, the payload that starts at stream offset off, and
// returns the checksum crc continued over it and how many bytes arrived:
// its first half through the read-ahead buffer, its second half from the
// file at once, by another goroutine.
func (rd *decoder) readSplit(b []byte, off int64, crc uint32) ([]byte, uint32, int, error) {
	half := (len(b) / 2) &^ (PageSize - 1)
	second := b[half:]
	type result struct {
		crc uint32
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		for r.n < len(second) && r.err == nil {
			var m int
			m, r.err = rd.file.f.ReadAt(second[r.n:min(len(second), r.n+crcPiece)], rd.file.base+off+int64(half+r.n))
			r.crc = crc32c.Update(r.crc, second[r.n:r.n+m])
			r.n += m
		}
		if r.n == len(second) {
			r.err = nil
		}
		done <- r
	}()
	_, crc, n, err := rd.readInto(b[:half], 0, crc)
	r := <-done
	if err != nil {
		return b, crc, n, err
	}
	// Go on after the payload: what the read-ahead buffer holds beyond the
	// first half is the second half, read already.
	rd.rpos = rd.rend
	if _, serr := rd.file.f.Seek(rd.file.base+off+int64(len(b)), io.SeekStart); serr != nil && r.err == nil {
		r.err = serr
	}
	if errors.Is(r.err, io.EOF) {
		r.err = io.ErrUnexpectedEOF
	}
	return b, crc32c.Combine(crc, r.crc, int64(len(second))), half + r.n, r.err
}
