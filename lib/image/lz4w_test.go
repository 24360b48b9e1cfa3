package image

import (
	"bytes"
	"io"
	"math/rand"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// TestLz4Writer: what lz4Writer writes, through Write and ReadFrom, reads
// back unchanged with the lz4 package's reader: compressible and random
// blocks (stored as they are), a partial last block, an empty frame.
func TestLz4Writer(t *testing.T) {
	rnd := make([]byte, 3*lz4Block+12345)
	rand.New(rand.NewSource(1)).Read(rnd)
	pat := bytes.Repeat([]byte("crpipe pages ..."), (2*lz4Block+777)/16)
	for _, c := range []struct {
		name   string
		writes [][]byte
		from   []byte // then ReadFrom
	}{
		{"empty", nil, nil},
		{"small writes", [][]byte{[]byte("hello"), []byte(" world")}, nil},
		{"compressible", [][]byte{pat}, nil},
		{"random", [][]byte{rnd}, nil},
		{"write then read from", [][]byte{[]byte("header"), pat[:100]}, rnd},
		{"read from only", nil, pat},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out, want bytes.Buffer
			w := newLz4Writer(&out, 2)
			for _, p := range c.writes {
				if n, err := w.Write(p); err != nil || n != len(p) {
					t.Fatalf("Write: %d, %v", n, err)
				}
				want.Write(p)
			}
			if c.from != nil {
				if n, err := io.Copy(w, bytes.NewReader(c.from)); err != nil || n != int64(len(c.from)) {
					t.Fatalf("ReadFrom: %d, %v", n, err)
				}
				want.Write(c.from)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(lz4.NewReader(bytes.NewReader(out.Bytes())))
			if err != nil {
				t.Fatalf("lz4 reader: %v", err)
			}
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("read back %d bytes, wrote %d", len(got), want.Len())
			}
			if c.name == "compressible" && out.Len() > want.Len()/10 {
				t.Errorf("compressible data: %d bytes for %d", out.Len(), want.Len())
			}
			if c.name == "random" && out.Len() > want.Len()+64 {
				t.Errorf("random data: %d bytes for %d (blocks not stored as they are)", out.Len(), want.Len())
			}
		})
	}
}

// TestLz4WriterError: a failing output is reported, not lost.
func TestLz4WriterError(t *testing.T) {
	w := newLz4Writer(failWriter{}, 2)
	w.Write(make([]byte, 3*lz4Block))
	if err := w.Close(); err == nil {
		t.Fatal("Close after failed writes: no error")
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

// BenchmarkLz4Writer compares lz4Writer with lz4.Writer as cr-tcp
// --compress used it (1 MiB blocks, one goroutine per CPU, no checksums,
// the contents copied to it from the input through a 1 MiB buffer, as its
// ReadFrom cannot follow a Write), on 64 MiB read from a plain reader (as
// from a pipe): pages made of repeated words, as in the bench's
// compressible workload, and random ones.
func BenchmarkLz4Writer(b *testing.B) {
	const size = 64 << 20
	rnd := make([]byte, size)
	rand.New(rand.NewSource(1)).Read(rnd)
	pat := make([]byte, size)
	for i := 0; i < size; i += 8 {
		copy(pat[i:], []byte{byte(i >> 12), byte(i >> 15), 1, 2, 3, 4, byte(i >> 3 & 3), 0})
	}
	for _, data := range []struct {
		name string
		b    []byte
	}{{"compressible", pat}, {"random", rnd}} {
		for _, impl := range []struct {
			name string
			w    func(io.Writer) io.WriteCloser
		}{
			{"ours", func(o io.Writer) io.WriteCloser { return newLz4Writer(o, 2) }},
			{"pierrec", func(o io.Writer) io.WriteCloser {
				w := lz4.NewWriter(o)
				w.Apply(lz4.ConcurrencyOption(2), lz4.BlockSizeOption(lz4.Block1Mb), lz4.ChecksumOption(false))
				return struct {
					io.Writer
					io.Closer
				}{w, w}
			}},
		} {
			b.Run(data.name+"/"+impl.name, func(b *testing.B) {
				b.SetBytes(size)
				for i := 0; i < b.N; i++ {
					w := impl.w(io.Discard)
					if _, err := CopyMover(w, struct{ io.Reader }{bytes.NewReader(data.b)}, size); err != nil {
						b.Fatal(err)
					}
					if err := w.Close(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
