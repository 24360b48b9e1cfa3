package image_test

import (
	"bytes"
	"io"
	"testing"

	"crpipe/lib/image"
)

// TestPagesSummed: a checksum computed by parts, ahead of writing, gives the
// same stream as WritePages, donated or not.
func TestPagesSummed(t *testing.T) {
	data := pattern(7, 300*image.PageSize)
	h := image.PagesHeader{Pid: 3, Flags: 1, Addr: 0x7f0000000000}
	var want bytes.Buffer
	w, _ := image.NewWriter(&want, image.WriterOptions{})
	w.WritePages(h, data)
	w.Close()

	var s image.PagesSummer
	for off := 0; off < len(data); off += 5000 {
		s.Add(data[off:min(off+5000, len(data))])
	}
	if s.Sum(h) != image.PagesSum(h, data) {
		t.Fatalf("summed by parts %08x, at once %08x", s.Sum(h), image.PagesSum(h, data))
	}
	// Every length, the empty contents included.
	for _, n := range []int{0, 1, image.PageSize, 5 * image.PageSize, len(data)} {
		var s image.PagesSummer
		s.Add(data[:n])
		if got, want := s.Sum(h), image.PagesSum(h, data[:n]); got != want {
			t.Fatalf("%d bytes: summed %08x, at once %08x", n, got, want)
		}
	}
	for _, donate := range []bool{false, true} {
		var got bytes.Buffer
		given := 0
		w, _ := image.NewWriter(&got, image.WriterOptions{Donate: func(dst io.Writer, p []byte) (bool, error) {
			given++
			_, err := dst.Write(p)
			return true, err
		}})
		donated, err := w.WritePagesSummed(h, data, s.Sum(h), donate)
		if err != nil {
			t.Fatal(err)
		}
		if donated != donate {
			t.Errorf("donate=%v: donated %v", donate, donated)
		}
		w.Close()
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Errorf("donate=%v: the stream differs from WritePages's", donate)
		}
		if donate != (given == 1) {
			t.Errorf("donate=%v: donor called %d times", donate, given)
		}
	}
}
