package image_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"crpipe/lib/image"
)

// heapWatch samples the live heap while a test streams, and reports the
// largest growth over the baseline taken before.
type heapWatch struct {
	base uint64
	peak atomic.Uint64
	stop chan struct{}
	done chan struct{}
}

func watchHeap() *heapWatch {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	h := &heapWatch{base: m.HeapInuse, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > h.peak.Load() {
				h.peak.Store(m.HeapInuse)
			}
			select {
			case <-h.stop:
				return
			case <-t.C:
			}
		}
	}()
	return h
}

func (h *heapWatch) growth() uint64 {
	close(h.stop)
	<-h.done
	if p := h.peak.Load(); p > h.base {
		return p - h.base
	}
	return 0
}

// TestConstantMemory writes 1 GiB of page frames and reads it back through
// a pipe: the heap must not grow with the stream, only with the largest frame.
func TestConstantMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 1 GiB (twice): skipped with -short")
	}
	const total = 1 << 30
	const chunk = 4 << 20
	for _, compress := range []bool{false, true} {
		data := make([]byte, chunk)
		w0 := watchHeap()
		pr, pw := io.Pipe()
		werr := make(chan error, 1)
		go func() {
			w, err := image.NewWriter(pw, image.WriterOptions{Compress: compress})
			if err == nil {
				for addr := uint64(0); addr < total && err == nil; addr += chunk {
					// Mark every frame so the reader can tell them apart.
					binary.LittleEndian.PutUint64(data, addr)
					err = w.WritePages(image.PagesHeader{Pid: 1, Addr: addr}, data)
				}
			}
			if err == nil {
				err = w.Close()
			}
			pw.CloseWithError(err)
			werr <- err
		}()
		r, err := image.NewReader(pr)
		if err != nil {
			t.Fatal(err)
		}
		var got uint64
		for {
			f, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.Type != image.TypePages {
				continue
			}
			h, p, err := f.Pages()
			if err != nil {
				t.Fatal(err)
			}
			if h.Addr != got || binary.LittleEndian.Uint64(p) != got {
				t.Fatalf("frame at %#x carries %#x, want %#x", h.Addr, binary.LittleEndian.Uint64(p), got)
			}
			got += uint64(len(p))
		}
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
		growth := w0.growth()
		if got != total || r.End().PageBytes != total {
			t.Fatalf("read %d page bytes, End says %d", got, r.End().PageBytes)
		}
		// Writer and reader hold a 1 MiB buffer each, the reader one 4 MiB
		// frame, the lz4 writer up to 8 blocks of 1 MiB in flight (with their
		// compressed copies), the lz4 reader one block: a stage must stay
		// under 64 MiB of RSS whatever the stream's size or the core count.
		limit := uint64(24 << 20)
		if compress {
			limit = 48 << 20
		}
		t.Logf("compress=%v: heap grew %.1f MiB while streaming 1 GiB (limit %d MiB)", compress, float64(growth)/(1<<20), limit>>20)
		if growth > limit {
			t.Errorf("compress=%v: heap grew by %d MiB while streaming 1 GiB", compress, growth>>20)
		}
	}
}

// TestSmallFramesSmallBuffer: a stream of small pages frames (a tiny
// process's: 4 KiB to 200 KiB) is read with a payload buffer the size of
// its frames, not one of 4 MiB, which made a small restore collect its
// garbage (doc/performance.md, 69).
func TestSmallFramesSmallBuffer(t *testing.T) {
	var stream bytes.Buffer
	w, err := image.NewWriter(&stream, image.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range []int{4 << 10, 64 << 10, 200 << 10, 8 << 10} {
		if err := w.WritePages(image.PagesHeader{Pid: 1, Addr: uint64(i) << 20}, bytes.Repeat([]byte{byte(i + 1)}, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, frames, err := readAll(stream.Bytes())
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	allocated := after.TotalAlloc - before.TotalAlloc
	if frames != 4 || allocated > 1<<20 {
		t.Fatalf("read %d pages frames of at most 200 KiB allocating %d KiB: want 4 frames and under 1 MiB", frames, allocated>>10)
	}
}
