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
			closeAndReadBack(t, w, &out, &want)
			if c.name == "compressible" && out.Len() > want.Len()/10 {
				t.Errorf("compressible data: %d bytes for %d", out.Len(), want.Len())
			}
			if c.name == "random" && out.Len() > want.Len()+64 {
				t.Errorf("random data: %d bytes for %d (blocks not stored as they are)", out.Len(), want.Len())
			}
		})
	}
}

// peekReader is a Reader whose next bytes can be looked at (as tee(2)
// does for a pipe); it counts the bytes moved by a Mover rather than read.
type peekReader struct {
	b     []byte
	moved int
}

func (r *peekReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

func (r *peekReader) peek(p []byte) (int, error) { return copy(p, r.b), nil }

// TestLz4WriterMoveFrom: contents whose sample compresses are compressed,
// the others are stored as they are and moved, not read, by the Mover,
// after the blocks before them; the frame reads back unchanged, with
// Writes between moves. A source that ends early is an error.
func TestLz4WriterMoveFrom(t *testing.T) {
	rnd := make([]byte, 2*lz4Block+5*PageSize)
	rand.New(rand.NewSource(2)).Read(rnd)
	pat := bytes.Repeat([]byte("crpipe pages ..."), (3*lz4Block+PageSize)/16)
	var out, want bytes.Buffer
	w := newLz4Writer(&out, 2)
	src := &peekReader{}
	moved := 0
	move := func(dst io.Writer, r io.Reader, n int64) (int64, error) {
		moved += int(n)
		return CopyMover(dst, r, n)
	}
	for _, part := range []struct {
		write []byte // then
		move  []byte
	}{
		{[]byte("header one"), pat},
		{[]byte("header two"), rnd},
		{nil, pat[:5*PageSize]},
		{[]byte("header three"), rnd[:PageSize]},
	} {
		if _, err := w.Write(part.write); err != nil {
			t.Fatal(err)
		}
		want.Write(part.write)
		src.b = part.move
		if n, err := w.MoveFrom(src, int64(len(part.move)), src.peek, move); err != nil || n != int64(len(part.move)) {
			t.Fatalf("MoveFrom: %d of %d, %v", n, len(part.move), err)
		}
		want.Write(part.move)
	}
	closeAndReadBack(t, w, &out, &want)
	if moved != len(rnd)+PageSize {
		t.Errorf("the Mover moved %d bytes, want the %d random ones", moved, len(rnd)+PageSize)
	}
	if limit := len(rnd) + PageSize + len(pat)/10; out.Len() > limit {
		t.Errorf("%d bytes written, want at most %d (compressible parts compressed)", out.Len(), limit)
	}

	// A sample of less than a page (the pipe held only the end of one) is
	// not judged: compressible contents behind it are compressed.
	out.Reset()
	w, moved = newLz4Writer(&out, 2), 0
	src.b = pat
	stingy := func(p []byte) (int, error) { return src.peek(p[:min(len(p), 32)]) }
	if n, err := w.MoveFrom(src, int64(len(pat)), stingy, move); err != nil || n != int64(len(pat)) {
		t.Fatalf("MoveFrom with 32-byte samples: %d of %d, %v", n, len(pat), err)
	}
	closeAndReadBack(t, w, &out, bytes.NewBuffer(pat))
	if moved != 0 || out.Len() > len(pat)/10 {
		t.Errorf("with 32-byte samples: %d bytes stored as they are, %d written for %d compressible", moved, out.Len(), len(pat))
	}

	w = newLz4Writer(io.Discard, 2)
	src.b = rnd[:PageSize]
	if _, err := w.MoveFrom(src, 2*PageSize, src.peek, move); err == nil {
		t.Error("MoveFrom of a source that ends early: no error")
	}
	w.Close()
}

// closeAndReadBack closes w and reads its frame in out back with the lz4
// package's reader: it must be want.
func closeAndReadBack(t *testing.T, w *lz4Writer, out, want *bytes.Buffer) {
	t.Helper()
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
