package image_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"crpipe/lib/image"
)

func seedFromTestdata(f *testing.F) {
	files, err := filepath.Glob("testdata/*.img")
	if err != nil || len(files) == 0 {
		f.Fatalf("no seeds in testdata/ (%v)", err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

var sentinelList = []error{image.ErrMagic, image.ErrVersion, image.ErrTruncated, image.ErrChecksum, image.ErrTooLarge, image.ErrCorrupt, image.ErrTrailing}

// FuzzReader: any input either reads to a checked End or fails with one of
// the sentinel errors; never a panic, a hang or an allocation past the caps.
//
//	go test ./lib/image -run '^$' -fuzz FuzzReader -fuzztime 1m
func FuzzReader(f *testing.F) {
	seedFromTestdata(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		r, err := image.NewReader(bytes.NewReader(data))
		if err == nil {
			last := int64(0)
			for {
				var fr *image.Frame
				fr, err = r.Next()
				if err != nil {
					break
				}
				if fr.Offset <= last || len(fr.Payload) > image.MaxPayload {
					t.Fatalf("frame %d at offset %d after %d, %d bytes", fr.Index, fr.Offset, last, len(fr.Payload))
				}
				last = fr.Offset
				if fr.Type == image.TypePages {
					if _, _, perr := fr.Pages(); perr != nil {
						t.Fatalf("Next returned a pages frame Pages refuses: %v", perr)
					}
				}
			}
			if err == io.EOF {
				end := r.End()
				if end == nil || !end.Complete {
					t.Fatalf("EOF without a complete End: %v", end)
				}
				if _, err := r.Next(); err != io.EOF {
					t.Fatalf("Next after EOF: %v", err)
				}
				err = nil
			}
		}
		if err != nil && !isSentinel(err) {
			t.Fatalf("error without a sentinel: %v", err)
		}
		runtime.ReadMemStats(&after)
		// Buffers: 1 MiB bufio, lz4's block buffers, and at most the
		// payload bytes actually present (twice, while growing).
		if grew := after.TotalAlloc - before.TotalAlloc; grew > uint64(24<<20+3*len(data)) {
			t.Fatalf("%d input bytes made the reader allocate %d bytes", len(data), grew)
		}
	})
}

func isSentinel(err error) bool {
	for _, s := range sentinelList {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// FuzzPages: Frame.Pages accepts exactly a preamble plus whole pages at an
// aligned address, and never panics.
func FuzzPages(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.img")
	for _, name := range files {
		b, _ := os.ReadFile(name)
		r, err := image.NewReader(bytes.NewReader(b))
		if err != nil {
			continue
		}
		for {
			fr, err := r.Next()
			if err != nil {
				break
			}
			if fr.Type == image.TypePages {
				f.Add(bytes.Clone(fr.Payload))
			}
		}
	}
	f.Add([]byte{})
	f.Add(make([]byte, 15))
	f.Add(make([]byte, 16+100))
	f.Fuzz(func(t *testing.T, payload []byte) {
		fr := &image.Frame{Type: image.TypePages, Payload: payload}
		h, data, err := fr.Pages()
		ok := len(payload) >= 16 && (len(payload)-16)%image.PageSize == 0
		if err != nil {
			if !errors.Is(err, image.ErrCorrupt) {
				t.Fatalf("error without ErrCorrupt: %v", err)
			}
			if ok && h.Addr%image.PageSize == 0 {
				t.Fatalf("refused a well-formed payload: %v", err)
			}
			return
		}
		if !ok || h.Addr%image.PageSize != 0 || len(data) != len(payload)-16 {
			t.Fatalf("accepted %d bytes at %#x", len(payload), h.Addr)
		}
	})
}
