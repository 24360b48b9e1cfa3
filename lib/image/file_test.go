package image_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"unsafe"

	"crpipe/lib/image"
	"crpipe/lib/sys"
)

// readFrames reads every frame from r, keeping copies of the payloads.
func readFrames(r io.Reader) ([][]byte, error) {
	rd, err := image.NewReader(r)
	if err != nil {
		return nil, err
	}
	var got [][]byte
	for {
		f, err := rd.Next()
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		got = append(got, append([]byte(fmt.Sprintf("%s/%d/%d:", f.Type, f.Flags, f.Offset)), f.Payload...))
	}
}

func tempFile(t *testing.T, data []byte) *os.File {
	t.Helper()
	name := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(name, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// shmFile is tempFile on tmpfs (/dev/shm), whose page contents are read
// with raw calls (sys.PreadInMemory), or nil where there is none.
func shmFile(t *testing.T, data []byte) *os.File {
	t.Helper()
	f, err := os.CreateTemp("/dev/shm", "crpipe-test-")
	if err != nil {
		return nil
	}
	t.Cleanup(func() { f.Close(); os.Remove(f.Name()) })
	if !sys.InMemoryFile(f) {
		return nil
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestFileReads: a stream read from a regular file (through the prefetching
// reader) gives the same frames and the same errors as the same bytes read
// from memory, also when the stream starts in the middle of the file; so
// does it with the contents of large pages frames read by the caller
// (Reader.PagesInFile, Frame.ReadPieces), which a compressed stream
// cannot be.
func TestFileReads(t *testing.T) {
	good := deferredStream(t, false)
	off := 16
	for i := 0; i < 2; i++ {
		off += 16 + int(le32(good[off+8:]))
	}
	cases := map[string][]byte{
		"good":             good,
		"flipped-contents": flip(good, off+16+16+3<<20, 0x20),
		"flipped-preamble": flip(good, off+16+9, 0x10),
		"cut-in-contents":  good[:off+16+16+2<<20],
		"cut-in-preamble":  good[:off+16+8],
		"cut-in-header":    good[:off+8],
		"lz4":              deferredStream(t, true),
		"parallel":         parallelStream(t),
	}
	for _, v := range vectors(t) {
		cases[v.Name] = v.data
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			want, wantErr := readFrames(bytes.NewReader(data))
			for _, prefix := range []int{0, 1000} {
				for _, way := range []string{"whole", "in file", "in file on tmpfs", "in pieces"} {
					f := tempFile(t, append(make([]byte, prefix), data...))
					if way == "in file on tmpfs" {
						if f = shmFile(t, append(make([]byte, prefix), data...)); f == nil {
							continue // no tmpfs here
						}
					}
					if _, err := f.Seek(int64(prefix), io.SeekStart); err != nil {
						t.Fatal(err)
					}
					var got [][]byte
					var left int
					var err error
					switch way {
					case "whole":
						got, err = readFrames(f)
					case "in file", "in file on tmpfs":
						got, left, err = readFramesFrom(t, f, true)
					default: // as from a pipe
						got, left, err = readFramesFrom(t, bufio.NewReader(f), false)
					}
					how := fmt.Sprintf("prefix %d, %s", prefix, way)
					if fmt.Sprint(err) != fmt.Sprint(wantErr) {
						t.Errorf("%s: error %v, from memory %v", how, err, wantErr)
					}
					if way != "whole" && (name == "good" || name == "parallel") && left == 0 {
						t.Errorf("%s: no frame's contents were read in pieces", how)
					}
					if len(got) != len(want) {
						t.Fatalf("%s: %d frames, from memory %d", how, len(got), len(want))
					}
					for i := range got {
						if !bytes.Equal(got[i], want[i]) {
							t.Errorf("%s: frame %d differs", how, i)
						}
					}
				}
			}
		})
	}
}

// TestFileShrinks: a file cut after its frame header was read is a
// truncated stream, not a crash.
func TestFileShrinks(t *testing.T) {
	good := deferredStream(t, false)
	f := tempFile(t, good)
	rd, err := image.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rd.Next(); err != nil { // the process frame
		t.Fatal(err)
	}
	if err := os.Truncate(f.Name(), int64(len(good)/2)); err != nil {
		t.Fatal(err)
	}
	for err == nil {
		_, err = rd.Next()
	}
	if !errors.Is(err, image.ErrTruncated) {
		t.Errorf("got %v", err)
	}
}

// TestFileReadsPagesInParallel: many large pages frames between small
// ones, read from a file (their contents read in parallel): the same
// frames in the same order as from memory; a damaged frame in the middle
// fails there with the same error, after every frame before it.
func TestFileReadsPagesInParallel(t *testing.T) {
	var b bytes.Buffer
	w, err := image.NewWriter(&b, image.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var offsets []int64
	for i := range 40 {
		if err := w.WriteFrame(image.Type(99), uint32(i), []byte("between")); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		offsets = append(offsets, int64(b.Len()))
		if err := w.WritePages(image.PagesHeader{Pid: 9, Addr: uint64(i) << 24}, pattern(byte(i), (128+i%3*64)*image.PageSize)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	good := b.Bytes()
	for name, data := range map[string][]byte{
		"good":    good,
		"damaged": flip(good, int(offsets[25])+16+16+100*image.PageSize, 0x01),
		"cut":     good[:offsets[30]+16+16+4096],
	} {
		want, wantErr := readFrames(bytes.NewReader(data))
		got, err := readFrames(tempFile(t, data))
		if fmt.Sprint(err) != fmt.Sprint(wantErr) {
			t.Errorf("%s: error %v, from memory %v", name, err, wantErr)
		}
		if len(got) != len(want) || (name == "good") != (len(got) == 81) {
			t.Fatalf("%s: %d frames, from memory %d", name, len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Errorf("%s: frame %d differs", name, i)
			}
		}
	}
}

// readFramesFrom is readFrames with the contents of large pages frames
// read by ReadPieces, by three goroutines, into the payload: left in the
// file (inFile, Reader.PagesInFile) or else in the input (Reader.DeferPages).
// It also counts such frames.
func readFramesFrom(t *testing.T, in io.Reader, inFile bool) ([][]byte, int, error) {
	t.Helper()
	rd, err := image.NewReader(in)
	if err != nil {
		return nil, 0, err
	}
	if !inFile {
		rd.DeferPages(nil)
	} else if rd.PagesInFile() == rd.Compressed {
		t.Fatalf("PagesInFile took effect %v on a stream compressed %v", rd.Compressed, rd.Compressed)
	}
	var got [][]byte
	left := 0
	for {
		fr, err := rd.Next()
		if err == io.EOF {
			return got, left, nil
		}
		if err != nil {
			return got, left, err
		}
		payload := fr.Payload
		if fr.InFile() || fr.Deferred() {
			left++
			contents := make([]byte, fr.ContentBytes())
			err := fr.ReadPieces(3, func(off int, piece []byte) error {
				copy(contents[off:], piece)
				return nil
			})
			if err != nil {
				return got, left, err
			}
			payload = append(bytes.Clone(fr.Payload), contents...)
		}
		got = append(got, append([]byte(fmt.Sprintf("%s/%d/%d:", fr.Type, fr.Flags, fr.Offset)), payload...))
	}
}

// TestPagesInFileShrinks: a file cut after a frame was returned with its
// contents in it is a truncated stream when they are read; an error of
// the caller's stops the reading and is returned as it is.
func TestPagesInFileShrinks(t *testing.T) {
	good := parallelStream(t)
	for _, cut := range []bool{true, false} {
		f := tempFile(t, good)
		rd, err := image.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		rd.PagesInFile()
		var fr *image.Frame
		for fr == nil || !fr.InFile() {
			if fr, err = rd.Next(); err != nil {
				t.Fatal(err)
			}
		}
		calls := 0
		mine := errors.New("mine")
		use := func(int, []byte) error { calls++; return nil }
		if cut {
			if err := os.Truncate(f.Name(), fr.Offset+16+16+4096); err != nil {
				t.Fatal(err)
			}
		} else {
			use = func(int, []byte) error { calls++; return mine }
		}
		err = fr.ReadPieces(1, use)
		switch {
		case cut && !errors.Is(err, image.ErrTruncated):
			t.Errorf("cut: got %v", err)
		case !cut && (err != mine || calls != 1):
			t.Errorf("use failing: got %v after %d calls", err, calls)
		}
	}
}

// parallelStream holds 40 large pages frames between small frames.
func parallelStream(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := image.NewWriter(&b, image.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if err := w.WriteFrame(image.Type(99), uint32(i), []byte("between")); err != nil {
			t.Fatal(err)
		}
		if err := w.WritePages(image.PagesHeader{Pid: 9, Addr: uint64(i) << 24}, pattern(byte(i), (128+i%3*64)*image.PageSize)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestGivePieceBuffers: pieces are read into the buffers given first,
// read right, and every given buffer is free again once read.
func TestGivePieceBuffers(t *testing.T) {
	image.ForgetGivenPieces()
	t.Cleanup(image.ForgetGivenPieces)
	mem := make([]byte, 4*image.PieceSize+100) // the rest is not a piece
	image.GivePieceBuffers(mem)
	if n := image.GivenPiecesFree(); n != 4 {
		t.Fatalf("%d given buffers free, want 4", n)
	}
	lo, hi := uintptr(unsafe.Pointer(&mem[0])), uintptr(unsafe.Pointer(&mem[0]))+uintptr(len(mem))
	for _, inFile := range []bool{true, false} {
		rd, err := image.NewReader(tempFile(t, parallelStream(t)))
		if err != nil {
			t.Fatal(err)
		}
		if inFile {
			rd.PagesInFile()
		} else {
			rd.DeferPages(nil)
		}
		var given atomic.Int64
		frames := 0
		for {
			fr, err := rd.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if !fr.InFile() && !fr.Deferred() {
				continue
			}
			contents := make([]byte, fr.ContentBytes())
			err = fr.ReadPieces(3, func(off int, piece []byte) error {
				if p := uintptr(unsafe.Pointer(&piece[0])); p >= lo && p < hi {
					given.Add(1)
				}
				copy(contents[off:], piece)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if want := pattern(byte(frames), len(contents)); !bytes.Equal(contents, want) {
				t.Fatalf("in file %v: frame of pages %d read wrong", inFile, frames)
			}
			frames++
		}
		if frames != 40 || given.Load() == 0 {
			t.Fatalf("in file %v: %d frames of pages, %d pieces in the given buffers", inFile, frames, given.Load())
		}
		if n := image.GivenPiecesFree(); n != 4 {
			t.Fatalf("in file %v: %d given buffers free after the reads, want 4", inFile, n)
		}
	}
}
