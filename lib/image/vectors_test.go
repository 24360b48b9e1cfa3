package image_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"crpipe/lib/image"
	"crpipe/lib/pb"
)

var update = flag.Bool("update", false, "rewrite the conformance vectors in testdata/ from their generators")

// vector is one conformance stream in testdata/. testdata/vectors.json lists
// them with their expected outcome, for any implementation of the format.
type vector struct {
	Name  string `json:"name"`
	About string `json:"about"`
	// Read is what reading every frame ends with: "ok" (End reached, counts
	// match) or the sentinel error, e.g. "ErrTruncated".
	Read string `json:"read"`
	// Check is what `crit check` ends with: Read, plus decoding every
	// metadata frame.
	Check string `json:"check"`
	// Where locates the damage as the error message must name it.
	Where string `json:"where,omitempty"`
	// Frames is the number of frames before End of a good stream.
	Frames int `json:"frames,omitempty"`

	data []byte
}

// Sentinels maps the names used in vectors.json to errors.
var sentinels = map[string]error{
	"ErrMagic":     image.ErrMagic,
	"ErrVersion":   image.ErrVersion,
	"ErrTruncated": image.ErrTruncated,
	"ErrChecksum":  image.ErrChecksum,
	"ErrTooLarge":  image.ErrTooLarge,
	"ErrCorrupt":   image.ErrCorrupt,
	"ErrTrailing":  image.ErrTrailing,
}

func at(frame, off int) string { return fmt.Sprintf("frame %d at offset %d", frame, off) }

func flip(b []byte, i int, mask byte) []byte {
	c := slices.Clone(b)
	c[i] ^= mask
	return c
}

func vectors(t testing.TB) []vector {
	frames := sampleFrames()
	good := rawStream(v1Header(), frames, true)
	offs := frameOffsets(good)
	nf := len(frames)
	const (
		inventory = 0
		process   = 2
		thread    = 3
		pages0    = 6
		pages1    = 7
	)
	endOff := offs[nf]
	var pageFrames, pageBytes uint64
	for _, f := range frames {
		if f.t == image.TypePages {
			pageFrames++
			pageBytes += uint64(len(f.payload) - 16)
		}
	}
	body := good[:endOff] // header and every frame but End
	withEnd := func(b []byte, end []byte) []byte { return append(slices.Clone(b), end...) }
	replace := func(i int, f sampleFrame) []byte {
		fs := slices.Clone(frames)
		fs[i] = f
		return rawStream(v1Header(), fs, true)
	}

	// What a newer minor version may write: a header flag, frame types and a
	// field this reader does not know.
	future := slices.Clone(frames)
	future = slices.Insert(future, thread,
		sampleFrame{99, 7, []byte("a record type from the future")},
		sampleFrame{0x7fff0001, 0, nil})
	unknownField := slices.Clone(frames[process].payload)
	unknownField = append(unknownField, 0xa0, 0x1f, 0x2a) // field 500, varint 42
	// Field 6 (comm) before field 1 (pid): valid protobuf, but not the
	// order a deterministic marshal writes.
	reordered := append([]byte{0x32, 0x03, 'c', 'a', 't'}, 0x08, 0x07)

	lz := writeSample(t, image.WriterOptions{Compress: true})
	plain := writeSample(t, image.WriterOptions{})
	if !bytes.Equal(plain, good) {
		t.Fatalf("the Writer and doc/stream-v1.md disagree: Writer output differs from the stream built by hand")
	}

	mangled := bytes.Replace(good[:16], []byte("\r\n"), []byte("\n"), 1)
	mangled = append(mangled, good[16:]...)

	hostile := withEnd(v1Header(), rawFrame(image.TypeInventory, 0, nil)[:8])
	hostile = binary.LittleEndian.AppendUint32(hostile, 0xffffffff)
	hostile = binary.LittleEndian.AppendUint32(hostile, 0)
	hostilePages := withEnd(v1Header(), nil)
	hostilePages = binary.LittleEndian.AppendUint32(hostilePages, uint32(image.TypePages))
	hostilePages = binary.LittleEndian.AppendUint32(hostilePages, 0)
	hostilePages = binary.LittleEndian.AppendUint32(hostilePages, image.MaxPagesPayload+image.PageSize)
	hostilePages = binary.LittleEndian.AppendUint32(hostilePages, 0)
	hostilePages = append(hostilePages, make([]byte, 64)...)

	vs := []vector{
		{Name: "every-type.img", About: "one frame of every record type of version 1.0, as the pipeline writes them", Read: "ok", Check: "ok", Frames: nf, data: good},
		{Name: "minimal.img", About: "the smallest valid stream: a header and an End frame that counts nothing", Read: "ok", Check: "ok", data: withEnd(v1Header(), rawEnd(0, 0, 0, true))},
		{Name: "lz4.img", About: "every-type.img as one lz4 frame (what --compress writes); offsets count uncompressed bytes", Read: "ok", Check: "ok", Frames: nf, data: lz},
		{Name: "future-minor-unknown-type.img", About: "version 1.1 with header flags and two frame types this reader does not know: must decode, and stages pass them through", Read: "ok", Check: "ok", Frames: len(future), data: rawStream(rawHeader(image.Magic, 1, 1, 0x10), future, true)},
		{Name: "unknown-field.img", About: "a process record with a field this version does not define (field 500): must decode", Read: "ok", Check: "ok", Frames: nf, data: replace(process, sampleFrame{image.TypeProcess, 0, unknownField})},
		{Name: "noncanonical-message.img", About: "a process record whose fields are not in canonical order: valid, and crit must keep its bytes", Read: "ok", Check: "ok", Frames: nf, data: replace(process, sampleFrame{image.TypeProcess, 0, reordered})},
		{Name: "frame-flags.img", About: "frames with flags this version does not define: must decode and pass through unchanged", Read: "ok", Check: "ok", Frames: nf, data: replace(pages1, sampleFrame{image.TypePages, 0x8000_0001, frames[pages1].payload})},

		{Name: "empty.img", About: "no bytes at all", Read: "ErrTruncated", Check: "ErrTruncated", Where: "header at offset 0", data: []byte{}},
		{Name: "truncated-in-stream-header.img", About: "the stream header cut after 10 bytes", Read: "ErrTruncated", Check: "ErrTruncated", Where: "header at offset 0", data: good[:10]},
		{Name: "truncated-in-header.img", About: "cut 7 bytes into the header of the process frame", Read: "ErrTruncated", Check: "ErrTruncated", Where: at(process, offs[process]), data: good[:offs[process]+7]},
		{Name: "truncated-in-metadata-payload.img", About: "cut in the middle of the inventory payload", Read: "ErrTruncated", Check: "ErrTruncated", Where: at(inventory, offs[inventory]), data: good[:offs[inventory]+16+10]},
		{Name: "truncated-in-page-payload.img", About: "cut in the middle of the page contents of the first pages frame", Read: "ErrTruncated", Check: "ErrTruncated", Where: at(pages0, offs[pages0]), data: good[:offs[pages0]+16+16+5000]},
		{Name: "missing-end.img", About: "every frame but the End frame: a stage died after a frame boundary", Read: "ErrTruncated", Check: "ErrTruncated", Where: at(nf, endOff), data: body},
		{Name: "flipped-byte.img", About: "one bit flipped in the page contents of the first pages frame", Read: "ErrChecksum", Check: "ErrChecksum", Where: at(pages0, offs[pages0]), data: flip(good, offs[pages0]+16+16+4097, 0x10)},
		{Name: "flipped-type.img", About: "one bit flipped in the type field of the thread-core frame header", Read: "ErrChecksum", Check: "ErrChecksum", Where: at(thread, offs[thread]), data: flip(good, offs[thread], 0x01)},
		{Name: "flipped-crc.img", About: "one bit flipped in the stored CRC32C of the process frame", Read: "ErrChecksum", Check: "ErrChecksum", Where: at(process, offs[process]), data: flip(good, offs[process]+12, 0x80)},
		{Name: "bad-magic.img", About: "the first byte of the magic changed", Read: "ErrMagic", Check: "ErrMagic", Where: "header at offset 0", data: flip(good, 0, 0xff)},
		{Name: "crlf-mangled.img", About: "CRLF in the magic turned into LF, as a text-mode transfer does", Read: "ErrMagic", Check: "ErrMagic", Where: "header at offset 0", data: mangled},
		{Name: "future-major.img", About: "major version 2: refused, whatever follows", Read: "ErrVersion", Check: "ErrVersion", Where: "header at offset 0", data: append(rawHeader(image.Magic, 2, 0, 0), good[16:]...)},
		{Name: "end-count-mismatch.img", About: "the End frame counts one frame more than the stream has", Read: "ErrCorrupt", Check: "ErrCorrupt", Where: at(nf, endOff), data: withEnd(body, rawEnd(uint64(nf)+1, pageFrames, pageBytes, true))},
		{Name: "end-page-bytes-mismatch.img", About: "the End frame counts 4096 page bytes more than the stream has", Read: "ErrCorrupt", Check: "ErrCorrupt", Where: at(nf, endOff), data: withEnd(body, rawEnd(uint64(nf), pageFrames, pageBytes+image.PageSize, true))},
		{Name: "end-incomplete.img", About: "the End frame says a stage failed (complete = false)", Read: "ErrCorrupt", Check: "ErrCorrupt", Where: at(nf, endOff), data: withEnd(body, rawEnd(uint64(nf), pageFrames, pageBytes, false))},
		{Name: "end-undecodable.img", About: "the End payload is not a protobuf End message", Read: "ErrCorrupt", Check: "ErrCorrupt", Where: at(nf, endOff), data: withEnd(body, rawFrame(image.TypeEnd, 0, []byte{0xff, 0xff, 0xff}))},
		{Name: "trailing-data.img", About: "bytes after the End frame", Read: "ErrTrailing", Check: "ErrTrailing", Where: at(nf+1, len(good)), data: append(slices.Clone(good), "garbage"...)},
		{Name: "hostile-length.img", About: "a frame header claiming a 4 GiB payload: refused before any allocation", Read: "ErrTooLarge", Check: "ErrTooLarge", Where: at(0, 16), data: hostile},
		{Name: "hostile-pages-length.img", About: "a pages frame longer than MaxPagesPayload (but below MaxPayload)", Read: "ErrTooLarge", Check: "ErrTooLarge", Where: at(0, 16), data: hostilePages},
		{Name: "pages-not-whole.img", About: "a pages payload of a preamble and 100 bytes, with a correct CRC", Read: "ErrCorrupt", Check: "ErrCorrupt", Where: at(pages0, offs[pages0]), data: replace(pages0, sampleFrame{image.TypePages, 0, rawPages(samplePid, 0, 0x555555577000, pattern(1, 100))})},
		{Name: "pages-unaligned.img", About: "a pages frame whose address is not page aligned, with a correct CRC", Read: "ErrCorrupt", Check: "ErrCorrupt", Where: at(pages0, offs[pages0]), data: replace(pages0, sampleFrame{image.TypePages, 0, rawPages(samplePid, 0, 0x555555577010, pattern(1, image.PageSize))})},
		{Name: "undecodable-process.img", About: "a process frame whose payload is not protobuf: the stream is whole, but crit check refuses it", Read: "ok", Check: "ErrCorrupt", Where: at(process, offs[process]), Frames: nf, data: replace(process, sampleFrame{image.TypeProcess, 0, []byte{0x08, 0xff}})},
		{Name: "lz4-truncated.img", About: "lz4.img cut in the middle of its only block: not even the header can be decompressed", Read: "ErrTruncated", Check: "ErrTruncated", Where: "header at offset 0", data: lz[:len(lz)/2]},
		{Name: "lz4-flipped-byte.img", About: "one bit flipped in lz4.img's compressed data (lz4 block checksums are off: the frame CRC catches it)", Read: "ErrChecksum", Check: "ErrChecksum", Where: at(pages0, offs[pages0]), data: flip(lz, len(lz)/2, 0x04)},
		{Name: "lz4-missing-end-mark.img", About: "lz4.img without the lz4 end mark: every frame is there, the container is not whole", Read: "ErrCorrupt", Check: "ErrCorrupt", Where: at(nf+1, len(good)), data: lz[:len(lz)-4]},
		{Name: "lz4-trailing-data.img", About: "bytes after lz4.img's lz4 frame that are not another lz4 frame", Read: "ErrCorrupt", Check: "ErrCorrupt", Where: at(nf+1, len(good)), data: append(slices.Clone(lz), "garbage"...)},
	}
	return vs
}

// readAll reads every frame the way a stage does.
func readAll(data []byte) (*image.Reader, int, error) {
	r, err := image.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, 0, err
	}
	n := 0
	for {
		f, err := r.Next()
		if err == io.EOF {
			return r, n, nil
		}
		if err != nil {
			return r, n, err
		}
		if f.Type == image.TypePages {
			if _, _, err := f.Pages(); err != nil {
				return r, n, fmt.Errorf("Next accepted a bad pages frame: %v", err)
			}
		}
		if f.Type != image.TypeEnd {
			n++
		}
	}
}

var typeInMessage = regexp.MustCompile(`frame (\d+) \([a-z0-9-]+\) at`)

// checkOutcome compares err with what a vector expects.
func checkOutcome(t *testing.T, v vector, want string, err error) {
	t.Helper()
	if want == "ok" {
		if err != nil {
			t.Errorf("%s: want success, got %v", v.Name, err)
		}
		return
	}
	if err == nil {
		t.Errorf("%s: want %s, got success", v.Name, want)
		return
	}
	if !errors.Is(err, sentinels[want]) {
		t.Errorf("%s: want %s, got %v", v.Name, want, err)
	}
	msg := typeInMessage.ReplaceAllString(err.Error(), "frame $1 at")
	if !strings.Contains(msg, v.Where) {
		t.Errorf("%s: error %q does not name %q", v.Name, err, v.Where)
	}
}

func TestVectors(t *testing.T) {
	vs := vectors(t)
	manifest, err := json.MarshalIndent(vs, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	manifest = append(manifest, '\n')
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			if err := os.WriteFile(filepath.Join("testdata", v.Name), v.data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile("testdata/vectors.json", manifest, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const regen = "run: go test ./lib/image -run TestVectors -update"
	if got, err := os.ReadFile("testdata/vectors.json"); err != nil || !bytes.Equal(got, manifest) {
		t.Errorf("testdata/vectors.json is not what the generator writes (%v); %s", err, regen)
	}
	names := map[string]bool{}
	for _, v := range vs {
		names[v.Name] = true
		t.Run(v.Name, func(t *testing.T) {
			got, err := os.ReadFile(filepath.Join("testdata", v.Name))
			if err != nil {
				t.Fatalf("%v; %s", err, regen)
			}
			if !bytes.Equal(got, v.data) {
				t.Fatalf("testdata/%s differs from its generator; %s", v.Name, regen)
			}
			r, n, err := readAll(got)
			checkOutcome(t, v, v.Read, err)
			if v.Read == "ok" && err == nil {
				if n != v.Frames {
					t.Errorf("read %d frames, want %d", n, v.Frames)
				}
				if end := r.End(); end == nil || end.Frames != uint64(n) || !end.Complete {
					t.Errorf("End() = %v after %d frames", end, n)
				}
			}
		})
	}
	files, _ := filepath.Glob("testdata/*.img")
	for _, f := range files {
		if !names[filepath.Base(f)] {
			t.Errorf("%s has no generator (delete it or add it to vectors())", f)
		}
	}
}

// TestVectorsPassThrough: a stage that copies every frame with Pass writes
// good vectors back byte for byte (uncompressed, same header), unknown
// types, flags and fields included.
func TestVectorsPassThrough(t *testing.T) {
	for _, v := range vectors(t) {
		if v.Read != "ok" {
			continue
		}
		r, err := image.NewReader(bytes.NewReader(v.data))
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		w, err := image.NewWriter(&out, image.WriterOptions{Compress: r.Compressed, Header: &image.Header{Major: r.Major, Minor: r.Minor, Flags: r.HdrFlags}})
		if err != nil {
			t.Fatal(err)
		}
		for {
			f, err := r.Next()
			if err != nil {
				t.Fatalf("%s: %v", v.Name, err)
			}
			if f.Type == image.TypeEnd {
				break
			}
			if err := w.Pass(f); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), v.data) {
			t.Errorf("%s: passing every frame through changed the stream", v.Name)
		}
	}
}

var _ = pb.End{}
