package stage

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// awaitFor runs awaitReader on out with readerWait set to wait and
// returns how long it took.
func awaitFor(t *testing.T, out *os.File, wait time.Duration) time.Duration {
	t.Helper()
	was := readerWait
	readerWait = wait
	t.Cleanup(func() { readerWait = was })
	start := time.Now()
	awaitReader(out)
	return time.Since(start)
}

func pipeWith(t *testing.T, data string) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	if _, err := w.WriteString(data); err != nil {
		t.Fatal(err)
	}
	return r, w
}

// The wait ends when the reader has taken everything, not before.
func TestAwaitReaderWaitsForTheReader(t *testing.T) {
	r, w := pipeWith(t, "header")
	const delay = 200 * time.Millisecond
	go func() {
		time.Sleep(delay)
		buf := make([]byte, 3)
		r.Read(buf) // half of it: the wait goes on
		time.Sleep(delay)
		r.Read(buf)
	}()
	if took := awaitFor(t, w, 20*time.Second); took < 2*delay || took > 10*time.Second {
		t.Fatalf("returned after %v; the reader took everything after %v", took, 2*delay)
	}
}

// A reader that does not read delays the writer by readerWait, no more.
func TestAwaitReaderGivesUp(t *testing.T) {
	_, w := pipeWith(t, "header")
	const wait = 300 * time.Millisecond
	if took := awaitFor(t, w, wait); took < wait || took > 10*time.Second {
		t.Fatalf("returned after %v, want the %v readerWait", took, wait)
	}
}

// Gone readers, empty pipes and anything not a pipe: no wait.
func TestAwaitReaderReturnsAtOnce(t *testing.T) {
	r, gone := pipeWith(t, "header")
	r.Close()
	_, empty := pipeWith(t, "")
	file, err := os.Create(filepath.Join(t.TempDir(), "image"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	file.WriteString("header")
	for name, out := range map[string]*os.File{"reader gone": gone, "empty pipe": empty, "file": file} {
		if took := awaitFor(t, out, 20*time.Second); took > 10*time.Second {
			t.Errorf("%s: waited %v", name, took)
		}
	}
}
