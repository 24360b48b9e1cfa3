package image_test

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"

	"crpipe/lib/image"
)

// TestPrefetchSame: a prefetching reader returns the same frames, offsets,
// End record and errors as a plain one, for every vector and a stream of
// large frames, compressed or not.
func TestPrefetchSame(t *testing.T) {
	inputs := map[string][]byte{
		"large":     deferredStream(t, false),
		"large-lz4": deferredStream(t, true),
	}
	for _, v := range vectors(t) {
		inputs[v.Name] = v.data
	}
	type out struct {
		frames []string
		end    string
		err    string
	}
	read := func(data []byte, prefetch bool) out {
		defer image.SetPrefetchAlways(image.SetPrefetchAlways(prefetch))
		var o out
		r, err := image.NewReader(bytes.NewReader(data))
		if err != nil {
			o.err = err.Error()
			return o
		}
		for {
			f, err := r.Next()
			if err == io.EOF {
				o.end = fmt.Sprint(r.End(), r.Offset())
				// EOF stays EOF.
				if _, err := r.Next(); err != io.EOF {
					o.err = fmt.Sprint("after EOF: ", err)
				}
				return o
			}
			if err != nil {
				o.err = err.Error()
				// Errors are sticky.
				if _, again := r.Next(); again != err {
					o.err += fmt.Sprint("; then ", again)
				}
				return o
			}
			o.frames = append(o.frames, fmt.Sprintf("%d %v %d %d %x %d", f.Index, f.Type, f.Flags, f.Offset, f.Payload, r.Offset()))
		}
	}
	for name, data := range inputs {
		plain, pre := read(data, false), read(data, true)
		if fmt.Sprint(plain) != fmt.Sprint(pre) {
			t.Errorf("%s: prefetching reader differs:\n plain    %.300v\n prefetch %.300v", name, plain, pre)
		}
	}
}

// TestPrefetchAbandoned: a prefetching Reader dropped in the middle of a
// stream does not keep its goroutine.
func TestPrefetchAbandoned(t *testing.T) {
	defer image.SetPrefetchAlways(image.SetPrefetchAlways(true))
	data := deferredStream(t, false)
	before := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		r, err := image.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+1 && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+1 {
		t.Errorf("%d goroutines left behind by abandoned readers", n-before)
	}
}
