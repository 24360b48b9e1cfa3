package image_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"crpipe/lib/image"
	"crpipe/lib/pb"
)

// deferredStream has metadata, small and large pages frames, an unknown
// type between them, and frames that straddle the reader's buffers.
func deferredStream(t *testing.T, compress bool) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := image.NewWriter(&b, image.WriterOptions{Compress: compress})
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.WriteMessage(image.TypeProcess, &pb.Process{Pid: 9, Comm: "x"}))
	must(w.WritePages(image.PagesHeader{Pid: 9, Addr: 0x1000}, pattern(1, image.PageSize)))
	must(w.WritePages(image.PagesHeader{Pid: 9, Addr: 0x100000}, pattern(2, 4<<20)))
	must(w.WriteFrame(image.Type(99), 5, []byte("opaque")))
	must(w.WritePages(image.PagesHeader{Pid: 9, Flags: 1, Addr: 0x800000}, pattern(3, 16*image.PageSize)))
	must(w.WritePages(image.PagesHeader{Pid: 9, Addr: 0x900000}, pattern(4, 100*image.PageSize)))
	must(w.WriteMessage(image.TypeFiles, &pb.Files{Pid: 9}))
	must(w.Close())
	return b.Bytes()
}

// passAll copies every frame of in to a new stream with a deferring reader.
func passAll(in []byte, move image.Mover, compressOut bool) ([]byte, int, error) {
	r, err := image.NewReader(bytes.NewReader(in))
	if err != nil {
		return nil, 0, err
	}
	r.DeferPages(move)
	var out bytes.Buffer
	w, err := image.NewWriter(&out, image.WriterOptions{Compress: compressOut})
	if err != nil {
		return nil, 0, err
	}
	deferred := 0
	for {
		f, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return out.Bytes(), deferred, err
		}
		if f.Type == image.TypeEnd {
			continue
		}
		if f.Deferred() {
			deferred++
		}
		if err := w.Pass(f); err != nil {
			return out.Bytes(), deferred, err
		}
	}
	err = w.Close()
	return out.Bytes(), deferred, err
}

// TestDeferredPassIsIdentical: passing with deferred contents writes the
// same bytes as passing verified frames, through any mover, compressed or not.
func TestDeferredPassIsIdentical(t *testing.T) {
	plain := deferredStream(t, false)
	moved := int64(0)
	counting := func(dst io.Writer, src io.Reader, n int64) (int64, error) {
		m, err := image.CopyMover(dst, src, n)
		moved += m
		return m, err
	}
	out, deferred, err := passAll(plain, counting, false)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, plain) {
		t.Fatalf("deferred pass-through changed the stream: %d vs %d bytes, first difference at %d", len(out), len(plain), firstDiff(out, plain))
	}
	// 4 MiB and 100 pages are deferred; 1 page is read; 16 pages are exactly
	// the threshold.
	if deferred != 3 || moved == 0 {
		t.Errorf("%d frames deferred, %d bytes moved", deferred, moved)
	}
	// Compressed input, and compressed output: the same frames come out.
	comp := deferredStream(t, true)
	out, _, err = passAll(comp, nil, false)
	if err != nil || !bytes.Equal(out, plain) {
		t.Fatalf("compressed input: %v, identical %v", err, bytes.Equal(out, plain))
	}
	out, _, err = passAll(plain, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	back, _, err := passAll(out, nil, false)
	if err != nil || !bytes.Equal(back, plain) {
		t.Fatalf("compressed output: %v, identical %v", err, bytes.Equal(back, plain))
	}
}

// TestDeferredSkip: frames a caller does not pass are skipped, and the End
// counts still add up.
func TestDeferredSkip(t *testing.T) {
	r, err := image.NewReader(bytes.NewReader(deferredStream(t, false)))
	if err != nil {
		t.Fatal(err)
	}
	r.DeferPages(nil)
	var types []string
	for {
		f, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		types = append(types, f.Type.String())
		if f.Deferred() {
			if _, _, err := f.Pages(); err == nil {
				t.Error("Pages on a deferred frame returned contents")
			}
			h := f.Payload
			if len(h) != image.PagesPreamble {
				t.Errorf("deferred payload is %d bytes", len(h))
			}
		}
	}
	if got := strings.Join(types, " "); got != "process pages pages type-99 pages pages files end" {
		t.Errorf("frames: %s", got)
	}
	if r.End().PageBytes != (1+1024+16+100)*image.PageSize {
		t.Errorf("End: %v", r.End())
	}
}

// TestDeferredDamage: damaged contents pass unverified (the consumer's CRC
// check names the frame); a damaged length is still caught; a stream cut
// inside deferred contents is ErrTruncated naming the frame.
func TestDeferredDamage(t *testing.T) {
	plain := deferredStream(t, false)
	// The 4 MiB frame is frame 2: header(16) + process frame + 1-page frame.
	off := 16
	for i := 0; i < 2; i++ {
		off += 16 + int(le32(plain[off+8:]))
	}
	bad := bytes.Clone(plain)
	bad[off+16+16+3<<20] ^= 0x40 // in the contents
	out, _, err := passAll(bad, nil, false)
	if err != nil {
		t.Fatalf("deferred contents were verified: %v", err)
	}
	_, _, err = readAll(out)
	if !errors.Is(err, image.ErrChecksum) || !strings.Contains(err.Error(), "frame 2 (pages)") {
		t.Errorf("consumer: %v", err)
	}

	bad = bytes.Clone(plain)
	bad[off+8] ^= 0x10 // length no longer whole pages
	if _, _, err := passAll(bad, nil, false); !errors.Is(err, image.ErrCorrupt) || !strings.Contains(err.Error(), "frame 2 at offset") {
		t.Errorf("damaged length: %v", err)
	}

	cut := plain[:off+16+16+1<<20]
	_, _, err = passAll(cut, nil, false)
	if !errors.Is(err, image.ErrTruncated) || !strings.Contains(err.Error(), "frame 2 (pages)") {
		t.Errorf("cut stream: %v", err)
	}
	// Sticky.
	r, _ := image.NewReader(bytes.NewReader(cut))
	r.DeferPages(nil)
	var first error
	for first == nil {
		_, first = r.Next()
	}
	if _, err := r.Next(); err != first {
		t.Errorf("after %v: %v", first, err)
	}
}

// TestDeferredPassLate: a deferred frame's contents are gone once the next
// frame has been read.
func TestDeferredPassLate(t *testing.T) {
	r, _ := image.NewReader(bytes.NewReader(deferredStream(t, false)))
	r.DeferPages(nil)
	w, _ := image.NewWriter(io.Discard, image.WriterOptions{})
	var held *image.Frame
	for held == nil {
		f, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if f.Deferred() {
			held = f
		}
	}
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if err := w.Pass(held); err == nil {
		t.Error("passing a deferred frame after Next succeeded")
	}
}

// TestPassReusesChecksum: Pass writes the checksum that was read, unless the
// frame was changed.
func TestPassReusesChecksum(t *testing.T) {
	plain := deferredStream(t, false)
	r, _ := image.NewReader(bytes.NewReader(plain))
	var out bytes.Buffer
	w, _ := image.NewWriter(&out, image.WriterOptions{})
	for {
		f, err := r.Next()
		if err != nil || f.Type == image.TypeEnd {
			break
		}
		if f.Type == image.TypeFiles {
			f.Payload = append([]byte(nil), f.Payload...)
			f.Payload = append(f.Payload, 0x18, 0x01) // field 3 = 1: a changed payload
		}
		if err := w.Pass(f); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	if _, _, err := readAll(out.Bytes()); err != nil {
		t.Errorf("a changed frame kept its old checksum: %v", err)
	}
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
