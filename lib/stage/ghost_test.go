package stage

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"crpipe/lib/image"
	"crpipe/lib/pb"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "65536": 65536, "64M": 64 << 20, "1G": 1 << 30, "3K": 3072} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "-1", "1T", "1.5M", "99999999999999999G"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) succeeded", in)
		}
	}
}

// TestWriteContents: MiBs that are all zero are left out, the rest (a
// short last piece too) come as FileData records at their offsets.
func TestWriteContents(t *testing.T) {
	size := int64(3*ContentsChunk + 100)
	file := make([]byte, size)
	file[5] = 1                 // MiB 0
	file[2*ContentsChunk+7] = 2 // MiB 2
	file[size-1] = 3            // the short tail
	var out bytes.Buffer
	w, err := image.NewWriter(&out, image.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kept, err := WriteContents(w, 9, bytes.NewReader(file), size)
	if err != nil || kept != 2*ContentsChunk+100 {
		t.Fatalf("kept %d, %v", kept, err)
	}
	w.Close()
	r, err := image.NewReader(&out)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	var offs []int64
	for {
		f, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if f.Type != image.TypeFileData {
			continue
		}
		var d pb.FileData
		if err := image.Unmarshal(f, &d); err != nil || d.Object != 9 {
			t.Fatalf("record %v, %v", &d, err)
		}
		offs = append(offs, d.Offset)
		copy(got[d.Offset:], d.Data)
	}
	if len(offs) != 3 || offs[0] != 0 || offs[1] != 2*ContentsChunk || offs[2] != 3*ContentsChunk || !bytes.Equal(got, file) {
		t.Errorf("pieces at %v; contents equal: %v", offs, bytes.Equal(got, file))
	}
}
