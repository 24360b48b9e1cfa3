package crit_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"crpipe/lib/crit"
	"crpipe/lib/image"
)

func testdataStreams(f *testing.F) [][]byte {
	files, err := filepath.Glob(filepath.Join(testdata, "*.img"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no streams in %s (%v)", testdata, err)
	}
	var out [][]byte
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// FuzzEncode: crit encode on any input never panics; what it accepts is a
// whole stream, and encoding is idempotent through decode.
//
//	go test ./lib/crit -run '^$' -fuzz FuzzEncode -fuzztime 1m
func FuzzEncode(f *testing.F) {
	for _, s := range testdataStreams(f) {
		var js bytes.Buffer
		crit.Decode(&js, bytes.NewReader(s)) // broken streams give partial JSON: seeds too
		f.Add(js.Bytes())
	}
	f.Add([]byte("{\"header\":{\"major\":1,\"minor\":0,\"flags\":0}}\n{\"type\":\"end\",\"flags\":0}\n"))
	f.Add([]byte("{\"header\":{\"major\":1,\"minor\":3,\"flags\":1,\"lz4\":true}}\n\n{\"type\":\"type-7\",\"flags\":1,\"raw\":\"\"}\n{\"type\":\"pages\",\"flags\":0,\"pid\":1,\"addr\":\"4096\",\"data\":\"\"}\n{\"type\":\"end\",\"flags\":0,\"msg\":{}}"))
	f.Fuzz(func(t *testing.T, js []byte) {
		var out bytes.Buffer
		if err := crit.Encode(&out, bytes.NewReader(js), crit.EncodeOptions{}); err != nil {
			return
		}
		if _, err := crit.Check(bytes.NewReader(out.Bytes())); err != nil && !isMetadataError(err) {
			t.Fatalf("encode wrote a stream that does not read back: %v", err)
		}
		var js2, out2 bytes.Buffer
		if err := crit.Decode(&js2, bytes.NewReader(out.Bytes())); err != nil {
			t.Fatalf("decode of encode's output: %v", err)
		}
		if err := crit.Encode(&out2, &js2, crit.EncodeOptions{}); err != nil {
			t.Fatalf("encode of decode of encode's output: %v", err)
		}
		if !bytes.Equal(out.Bytes(), out2.Bytes()) {
			t.Fatalf("encode | decode | encode changed the stream")
		}
	})
}

// isMetadataError: encode may write raw payloads that are not valid
// messages (that is what raw is for); check rightly refuses those.
func isMetadataError(err error) bool {
	return bytes.Contains([]byte(err.Error()), []byte("proto:"))
}

// FuzzStream: show, decode and check on any stream never panic or hang;
// a stream check accepts decodes, and an uncompressed one comes back from
// decode | encode unchanged up to its End frame (which encode recomputes).
//
//	go test ./lib/crit -run '^$' -fuzz FuzzStream -fuzztime 1m
func FuzzStream(f *testing.F) {
	for _, s := range testdataStreams(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		crit.Show(io.Discard, bytes.NewReader(data))
		var js bytes.Buffer
		decErr := crit.Decode(&js, bytes.NewReader(data))
		if _, err := crit.Check(bytes.NewReader(data)); err != nil {
			return
		}
		if decErr != nil {
			t.Fatalf("check passed, decode failed: %v", decErr)
		}
		var out bytes.Buffer
		if err := crit.Encode(&out, &js, crit.EncodeOptions{}); err != nil {
			t.Fatalf("check passed, decode | encode failed: %v", err)
		}
		if _, err := crit.Check(bytes.NewReader(out.Bytes())); err != nil {
			t.Fatalf("re-encoded stream fails check: %v", err)
		}
		if bytes.HasPrefix(data, []byte{0x04, 0x22, 0x4d, 0x18}) {
			return // another lz4 compressor's bytes cannot be expected back
		}
		endOff := endOffset(t, data)
		if !bytes.Equal(out.Bytes()[:min(endOff, int64(out.Len()))], data[:endOff]) {
			t.Fatalf("decode | encode changed the frames before End")
		}
	})
}

func endOffset(t *testing.T, data []byte) int64 {
	r, err := image.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	for {
		f, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if f.Type == image.TypeEnd {
			return f.Offset
		}
	}
}
