package image_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"crpipe/lib/image"
	"crpipe/lib/pb"
)

func TestRoundTrip(t *testing.T) {
	for _, compress := range []bool{false, true} {
		var b bytes.Buffer
		w, err := image.NewWriter(&b, image.WriterOptions{Compress: compress})
		if err != nil {
			t.Fatal(err)
		}
		proc := &pb.Process{Pid: 7, Ppid: 1, Comm: "x", Threads: []uint32{7}}
		mm := &pb.Mm{Pid: 7, Vmas: []*pb.Vma{{Start: 0x10000, End: 0x20000, Prot: 3, HasPages: true}}}
		// More than one lz4 block (4 MiB) so block boundaries are crossed.
		big := pattern(5, 4<<20)
		small := pattern(6, image.PageSize)
		steps := []func() error{
			func() error { return w.WriteMessage(image.TypeProcess, proc) },
			func() error { return w.WriteMessage(image.TypeMm, mm) },
			func() error { return w.WritePages(image.PagesHeader{Pid: 7, Addr: 0x10000}, small) },
			func() error { return w.WritePages(image.PagesHeader{Pid: 7, Flags: 3, Addr: 0x7f0000000000}, big) },
			func() error { return w.WritePages(image.PagesHeader{Pid: 7, Addr: 0x20000}, nil) },
		}
		for _, s := range steps {
			if err := s(); err != nil {
				t.Fatal(err)
			}
		}
		wc := w.Counts()
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if wc != (image.Counts{Frames: 5, PageFrames: 3, PageBytes: uint64(len(big) + len(small))}) {
			t.Errorf("Counts() = %+v", wc)
		}

		r, err := image.NewReader(&b)
		if err != nil {
			t.Fatal(err)
		}
		if r.Compressed != compress || r.Major != image.Major || r.Minor != image.Minor || r.HdrFlags != 0 {
			t.Errorf("reader header: compressed %v version %d.%d flags %#x", r.Compressed, r.Major, r.Minor, r.HdrFlags)
		}
		wantOff := int64(image.HeaderSize)
		for i := 0; ; i++ {
			f, err := r.Next()
			if err == io.EOF {
				if i != 6 {
					t.Errorf("EOF after %d frames", i)
				}
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.Index != uint64(i) || f.Offset != wantOff {
				t.Errorf("frame %d: Index %d Offset %d, want offset %d", i, f.Index, f.Offset, wantOff)
			}
			wantOff += image.FrameHeaderSize + int64(len(f.Payload))
			switch i {
			case 0, 1:
				var m pb.Message = &pb.Process{}
				want := pb.Message(proc)
				if i == 1 {
					m, want = &pb.Mm{}, mm
				}
				if err := image.Unmarshal(f, m); err != nil || !pb.Equal(m, want) {
					t.Errorf("frame %d: %v %v", i, m, err)
				}
			case 2, 3, 4:
				h, data, err := f.Pages()
				if err != nil {
					t.Fatal(err)
				}
				want := map[int][]byte{2: small, 3: big, 4: nil}[i]
				wantH := map[int]image.PagesHeader{2: {Pid: 7, Addr: 0x10000}, 3: {Pid: 7, Flags: 3, Addr: 0x7f0000000000}, 4: {Pid: 7, Addr: 0x20000}}[i]
				if h != wantH || !bytes.Equal(data, want) {
					t.Errorf("frame %d: pages %+v, %d bytes", i, h, len(data))
				}
			case 5:
				if f.Type != image.TypeEnd {
					t.Errorf("last frame is %v", f.Type)
				}
			}
		}
		end := r.End()
		if end == nil || end.Frames != 5 || end.PageFrames != 3 || end.PageBytes != wc.PageBytes || !end.Complete {
			t.Errorf("End() = %v", end)
		}
		if _, err := r.Next(); err != io.EOF {
			t.Errorf("Next after End: %v", err)
		}
	}
}

// A stage passes frames it does not know through unchanged and in order,
// then appends its own records: the contract every stage relies on.
func TestPassThroughUnknown(t *testing.T) {
	in, err := readFileVector("future-minor-unknown-type.img")
	if err != nil {
		t.Fatal(err)
	}
	r, err := image.NewReader(bytes.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	w, err := image.NewWriter(&out, image.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	type seen struct {
		t       image.Type
		flags   uint32
		payload string
	}
	var passed []seen
	for {
		f, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if f.Type == image.TypeEnd {
			break
		}
		passed = append(passed, seen{f.Type, f.Flags, string(f.Payload)})
		if err := w.Pass(f); err != nil {
			t.Fatal(err)
		}
	}
	own := &pb.Files{Pid: 1, Cwd: "/"}
	if err := w.WriteMessage(image.TypeFiles, own); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	r2, err := image.NewReader(&out)
	if err != nil {
		t.Fatal(err)
	}
	var got []seen
	for {
		f, err := r2.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if f.Type != image.TypeEnd {
			got = append(got, seen{f.Type, f.Flags, string(f.Payload)})
		}
	}
	if len(got) != len(passed)+1 {
		t.Fatalf("%d frames out, %d in", len(got), len(passed))
	}
	unknown := 0
	for i, s := range passed {
		if got[i] != s {
			t.Errorf("frame %d changed: %v -> %v", i, s.t, got[i].t)
		}
		if strings.HasPrefix(s.t.String(), "type-") {
			unknown++
		}
	}
	if unknown != 2 {
		t.Errorf("the vector should carry 2 unknown types, saw %d", unknown)
	}
	if last := got[len(got)-1]; last.t != image.TypeFiles || last.payload != string(mustMarshal(own)) {
		t.Errorf("own record not appended last: %v", last.t)
	}
}

func TestCompressedIsSmallerAndDetected(t *testing.T) {
	var plain, lz bytes.Buffer
	for _, c := range []struct {
		b        *bytes.Buffer
		compress bool
	}{{&plain, false}, {&lz, true}} {
		w, err := image.NewWriter(c.b, image.WriterOptions{Compress: c.compress})
		if err != nil {
			t.Fatal(err)
		}
		zeros := make([]byte, 1<<20)
		for i := 0; i < 9; i++ {
			if err := w.WritePages(image.PagesHeader{Pid: 1, Addr: uint64(i) << 20}, zeros); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if lz.Len()*10 > plain.Len()/10 {
		t.Errorf("lz4 stream of zero pages is %d bytes, plain %d", lz.Len(), plain.Len())
	}
	r, n, err := readAll(lz.Bytes())
	if err != nil || n != 9 || !r.Compressed {
		t.Errorf("lz4 read: %d frames, compressed %v, %v", n, r != nil && r.Compressed, err)
	}
}

func TestWriterRefuses(t *testing.T) {
	w, err := image.NewWriter(io.Discard, image.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WritePages(image.PagesHeader{Addr: 0x1000}, make([]byte, 100)); err == nil {
		t.Error("WritePages accepted a partial page")
	}
	if err := w.WritePages(image.PagesHeader{Addr: 0x1001}, make([]byte, image.PageSize)); err == nil {
		t.Error("WritePages accepted an unaligned address")
	}
	if err := w.WritePages(image.PagesHeader{Addr: 0x1000}, make([]byte, 4<<20+image.PageSize)); !errors.Is(err, image.ErrTooLarge) {
		t.Errorf("WritePages over 4 MiB: %v", err)
	}
	if err := w.WriteFrame(image.TypePages, 0, make([]byte, 20)); err == nil {
		t.Error("WriteFrame accepted a pages payload that is not whole pages")
	}
	if err := w.WriteFrame(image.TypePages, 0, make([]byte, 8)); err == nil {
		t.Error("WriteFrame accepted a pages payload shorter than its preamble")
	}
	if err := w.WriteFrame(image.TypeEnd, 0, nil); err == nil {
		t.Error("WriteFrame wrote an End frame")
	}
	if err := w.WriteFrame(99, 0, make([]byte, image.MaxPayload+1)); !errors.Is(err, image.ErrTooLarge) {
		t.Errorf("WriteFrame over MaxPayload: %v", err)
	}
	if c := w.Counts(); c.Frames != 0 {
		t.Errorf("refused frames were counted: %+v", c)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteFrame(99, 0, nil); err == nil {
		t.Error("write after Close succeeded")
	}
	if _, err := image.NewWriter(io.Discard, image.WriterOptions{Header: &image.Header{Major: 2}}); !errors.Is(err, image.ErrVersion) {
		t.Errorf("NewWriter with major 2: %v", err)
	}
}

func TestHeaderOption(t *testing.T) {
	var b bytes.Buffer
	w, err := image.NewWriter(&b, image.WriterOptions{Header: &image.Header{Major: 1, Minor: 9, Flags: 0xabcd}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	want := rawHeader(image.Magic, 1, 9, 0xabcd)
	if !bytes.Equal(b.Bytes()[:16], want) {
		t.Errorf("header % x, want % x", b.Bytes()[:16], want)
	}
	r, err := image.NewReader(&b)
	if err != nil || r.Minor != 9 || r.HdrFlags != 0xabcd {
		t.Errorf("read back: %v %+v", err, r)
	}
}

func TestTypeNames(t *testing.T) {
	for _, ty := range []image.Type{image.TypeInventory, image.TypeFreeze, image.TypeProcess, image.TypeThreadCore, image.TypeTaskState, image.TypeMm, image.TypePages, image.TypeFiles, image.TypeEnd, 0, 99, 0x7fffffff} {
		got, ok := image.TypeByName(ty.String())
		if !ok || got != ty {
			t.Errorf("TypeByName(%q) = %v, %v", ty.String(), got, ok)
		}
	}
	for _, bad := range []string{"", "type-", "type--1", "type-+1", "type-5x", "type-4294967296", "Process", "type-0x10", " type-1"} {
		if ty, ok := image.TypeByName(bad); ok {
			t.Errorf("TypeByName(%q) = %v, want refusal", bad, ty)
		}
	}
}

// After damage the reader's position is meaningless: it keeps reporting
// the first error instead of decoding garbage as frames.
func TestErrorsAreSticky(t *testing.T) {
	data, err := readFileVector("flipped-byte.img")
	if err != nil {
		t.Fatal(err)
	}
	r, err := image.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	var first error
	for first == nil {
		_, first = r.Next()
	}
	for i := 0; i < 3; i++ {
		if _, err := r.Next(); err != first {
			t.Fatalf("Next after %v returned %v", first, err)
		}
	}
}

// A hostile length on a short input must not make the reader allocate the
// length it claims.
func TestHostileLengthAllocatesLittle(t *testing.T) {
	s := rawHeader(image.Magic, 1, 0, 0)
	s = append(s, rawFrame(99, 0, make([]byte, 100))[:16]...)
	s[16+8], s[16+9], s[16+10], s[16+11] = 0, 0, 0, 4 // 64 MiB, exactly the cap
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, _, err := readAll(append(s, make([]byte, 100)...))
	runtime.ReadMemStats(&after)
	if !errors.Is(err, image.ErrTruncated) {
		t.Fatalf("got %v", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 8<<20 {
		t.Errorf("reading a 64 MiB claim backed by 100 bytes allocated %d bytes", got)
	}
}

func TestPagesOnOtherFrame(t *testing.T) {
	f := &image.Frame{Type: image.TypeMm, Payload: make([]byte, 16+image.PageSize)}
	if _, _, err := f.Pages(); !errors.Is(err, image.ErrCorrupt) {
		t.Errorf("Pages on an mm frame: %v", err)
	}
}

func TestUnmarshalNamesFrame(t *testing.T) {
	f := &image.Frame{Type: image.TypeProcess, Payload: []byte{0x08, 0xff}, Index: 4, Offset: 512}
	err := image.Unmarshal(f, &pb.Process{})
	if !errors.Is(err, image.ErrCorrupt) || !bytes.Contains([]byte(err.Error()), []byte("frame 4 (process) at offset 512")) {
		t.Errorf("Unmarshal: %v", err)
	}
}

func readFileVector(name string) ([]byte, error) { return os.ReadFile(filepath.Join("testdata", name)) }
