package restore

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/pierrec/lz4/v4"

	"crpipe/lib/pb"
)

// A tree's records are held from the stream's reading to the tasks' last
// states. Decoded, a process's took ~13 KB of cr-restore's heap, and a
// restore of 1,000 processes peaked at 41 MB (doc/performance.md, 64).
// The larger parts are held as bytes instead, compressed where that pays,
// and decoded where they are used: a thread's xsave area (~2.6 KB, mostly
// zeros) takes ~300 bytes as an lz4 block, a ProcessState (its limits)
// ~160 bytes against ~1.3 KB decoded.

// held is bytes (an encoded record, an xsave area), as an lz4 block where
// that halves them.
type held struct {
	data []byte
	size int // their length where data is their lz4 block, else 0
}

// holder makes helds; one goroutine at a time uses it.
type holder struct {
	c     *lz4.Compressor // made once holdPlain bytes are held
	plain int             // bytes held as they came, before c
	buf   []byte
}

// holdPlain: the first bytes held are kept as they came. A small tree's
// records are a few KB, and the compressor's table (128 KiB, faulted in
// as it is used) cost the counter's restore more than they would save
// (doc/performance.md, 69); a large tree's first 256 KiB held plain are
// a small part of its heap.
const holdPlain = 256 << 10

// hold keeps a copy of b.
func (h *holder) hold(b []byte) held {
	if h.c == nil {
		if h.plain+len(b) <= holdPlain {
			h.plain += len(b)
			return held{data: bytes.Clone(b)}
		}
		h.c = new(lz4.Compressor)
	}
	if n := lz4.CompressBlockBound(len(b)); cap(h.buf) < n {
		h.buf = make([]byte, n)
	}
	n, err := h.c.CompressBlock(b, h.buf[:cap(h.buf)])
	if err != nil || n == 0 || n > len(b)/2 {
		return held{data: bytes.Clone(b)}
	}
	return held{data: bytes.Clone(h.buf[:n]), size: len(b)}
}

// bytes returns the held bytes (nil for none).
func (h held) bytes() ([]byte, error) {
	if h.size == 0 {
		return h.data, nil
	}
	b := make([]byte, h.size)
	if n, err := lz4.UncompressBlock(h.data, b); err != nil || n != h.size {
		return nil, fmt.Errorf("held lz4 block of %d bytes gave %d of %d: %v", len(h.data), n, h.size, err)
	}
	return b, nil
}

// decode decodes the held record into m.
func (h held) decode(m pb.Message) error {
	b, err := h.bytes()
	if err == nil {
		err = pb.Unmarshal(b, m)
	}
	if err != nil {
		return fmt.Errorf("held %s record: %w", strings.TrimPrefix(m.MessageName(), "cr.v1."), err)
	}
	return nil
}
