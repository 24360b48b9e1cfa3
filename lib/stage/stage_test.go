package stage

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/pierrec/lz4/v4"
	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/pb"
)

// testStream: metadata, a small and two large pages frames, an unknown type.
func testStream(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := image.NewWriter(&b, image.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 4<<20)
	for i := range big {
		big[i] = byte(i * 13 >> 7)
	}
	for _, err := range []error{
		w.WriteMessage(image.TypeProcess, &pb.Process{Pid: 5, Comm: "t"}),
		w.WritePages(image.PagesHeader{Pid: 5, Addr: 0x1000}, big[:image.PageSize]),
		w.WritePages(image.PagesHeader{Pid: 5, Addr: 0x400000}, big),
		w.WriteFrame(image.Type(77), 3, []byte("x")),
		w.WritePages(image.PagesHeader{Pid: 5, Addr: 0x900000}, big[:300*image.PageSize]),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// endpoint is one side of RunFilter: a pipe or a regular file.
type endpoint struct {
	name string
	in   func(t *testing.T, data []byte) *os.File     // a file to read data from
	out  func(t *testing.T) (*os.File, func() []byte) // a file to write to, and what was written
}

var endpoints = []endpoint{
	{
		name: "pipe",
		in: func(t *testing.T, data []byte) *os.File {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			go func() { w.Write(data); w.Close() }()
			t.Cleanup(func() { r.Close() })
			return r
		},
		out: func(t *testing.T) (*os.File, func() []byte) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			got := make(chan []byte, 1)
			go func() { b, _ := io.ReadAll(r); r.Close(); got <- b }()
			return w, func() []byte { w.Close(); return <-got }
		},
	},
	{
		name: "file",
		in: func(t *testing.T, data []byte) *os.File {
			name := filepath.Join(t.TempDir(), "in")
			if err := os.WriteFile(name, data, 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(name)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			return f
		},
		out: func(t *testing.T) (*os.File, func() []byte) {
			name := filepath.Join(t.TempDir(), "out")
			f, err := os.Create(name)
			if err != nil {
				t.Fatal(err)
			}
			return f, func() []byte { f.Close(); b, _ := os.ReadFile(name); return b }
		},
	},
}

// appendFile is an output that splice refuses (EINVAL): the relay's pages
// are copied out instead.
var appendFile = endpoint{
	name: "append",
	out: func(t *testing.T) (*os.File, func() []byte) {
		name := filepath.Join(t.TempDir(), "out")
		f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		return f, func() []byte { f.Close(); b, _ := os.ReadFile(name); return b }
	},
}

// TestRunFilterMovesPages: every combination of pipe and file on either
// side (splice where one side is a pipe, through the relay from a pipe
// to a file, copying otherwise) passes the stream through byte for byte,
// and Observe never sees pages frames it did not ask for.
func TestRunFilterMovesPages(t *testing.T) {
	data := testStream(t)
	for _, verify := range []bool{false, true} {
		for _, in := range endpoints {
			for _, out := range append(endpoints, appendFile) {
				t.Run(in.name+"-to-"+out.name, func(t *testing.T) {
					if verify {
						t.Setenv("CRPIPE_VERIFY", "1")
					}
					src := in.in(t, data)
					dst, written := out.out(t)
					var seen []image.Type
					err := RunFilter(src, dst, false, Filter{Observe: func(f *image.Frame) error {
						seen = append(seen, f.Type)
						return nil
					}})
					if err != nil {
						t.Fatal(err)
					}
					if got := written(); !bytes.Equal(got, data) {
						t.Fatalf("stream changed: %d bytes in, %d out", len(data), len(got))
					}
					if len(seen) != 2 || seen[0] != image.TypeProcess || seen[1] != image.Type(77) {
						t.Errorf("Observe saw %v", seen)
					}
				})
			}
		}
	}
}

// TestRunFilterCompressed: a compressing stage's output decompresses to
// its input byte for byte from a pipe or a file, into a pipe or a file:
// from a pipe, contents that do not compress are stored as they are
// (tee and splice); the compressible ones shrink.
func TestRunFilterCompressed(t *testing.T) {
	var b bytes.Buffer
	w, err := image.NewWriter(&b, image.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rnd := make([]byte, 3<<20)
	rand.New(rand.NewSource(3)).Read(rnd)
	pat := bytes.Repeat([]byte("compressible...."), 2<<20/16)
	for _, err := range []error{
		w.WriteMessage(image.TypeProcess, &pb.Process{Pid: 5, Comm: "t"}),
		w.WritePages(image.PagesHeader{Pid: 5, Addr: 0x400000}, rnd),
		w.WritePages(image.PagesHeader{Pid: 5, Addr: 0x900000}, pat),
		w.WritePages(image.PagesHeader{Pid: 5, Addr: 0xc00000}, rnd[:300*image.PageSize]),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	data := b.Bytes()
	for _, in := range endpoints {
		for _, out := range endpoints {
			t.Run(in.name+"-to-"+out.name, func(t *testing.T) {
				dst, written := out.out(t)
				if err := RunFilter(in.in(t, data), dst, true, Filter{}); err != nil {
					t.Fatal(err)
				}
				lz := written()
				got, err := io.ReadAll(lz4.NewReader(bytes.NewReader(lz)))
				if err != nil {
					t.Fatalf("lz4: %v", err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("stream changed: %d bytes in, %d decompressed", len(data), len(got))
				}
				if limit := len(rnd) + 300*image.PageSize + len(pat)/10; len(lz) > limit {
					t.Errorf("%d bytes compressed, want at most %d", len(lz), limit)
				}
			})
		}
	}
}

// TestRunFilterObservePages: a filter that asks for page contents gets them.
func TestRunFilterObservePages(t *testing.T) {
	data := testStream(t)
	var pages int
	var out bytes.Buffer
	err := RunFilter(endpoints[0].in(t, data), &out, false, Filter{ObservePages: true, Observe: func(f *image.Frame) error {
		if f.Type == image.TypePages {
			_, p, err := f.Pages()
			if err != nil {
				return err
			}
			pages += len(p) / image.PageSize
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if pages != 1+1024+300 || !bytes.Equal(out.Bytes(), data) {
		t.Errorf("observed %d pages; stream identical: %v", pages, bytes.Equal(out.Bytes(), data))
	}
}

// TestRunFilterTruncated: a stream cut inside spliced contents is an input
// error naming the frame, and the stage writes no End frame.
func TestRunFilterTruncated(t *testing.T) {
	data := testStream(t)
	cut := data[:len(data)/2]
	dst, written := endpoints[0].out(t)
	err := RunFilter(endpoints[0].in(t, cut), dst, false, Filter{})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("input: frame 2 (pages)")) {
		t.Fatalf("got %v", err)
	}
	if _, _, err := readStream(written()); err == nil {
		t.Error("the output of a failed stage reads as a whole stream")
	}
}

// TestRunFilterPassesFramesOn: a frame goes on as soon as the filter has
// read it and nothing more is at hand, not when the input ends (cr-pages
// learns of a large process while the stages before it still work).
func TestRunFilterPassesFramesOn(t *testing.T) {
	var b bytes.Buffer
	w, err := image.NewWriter(&b, image.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteMessage(image.TypeProcess, &pb.Process{Pid: 5, Comm: "t"}); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil { // the header and the frame; no End yet
		t.Fatal(err)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	done := make(chan error, 1)
	go func() {
		done <- RunFilter(inR, outW, false, Filter{})
		inR.Close()
		outW.Close()
	}()
	if _, err := inW.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := outR.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	r, err := image.NewReader(outR)
	if err != nil {
		t.Fatal(err)
	}
	f, err := r.Next()
	if err != nil {
		t.Fatalf("the frame did not come out before the input ended: %v", err)
	}
	if f.Type != image.TypeProcess {
		t.Errorf("got a %s frame", f.Type)
	}
	inW.Close()
	if err := <-done; err == nil || !errors.Is(err, image.ErrTruncated) {
		t.Errorf("input cut before its End: %v", err)
	}
}

func readStream(b []byte) (*image.Reader, int, error) {
	r, err := image.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, 0, err
	}
	n := 0
	for {
		_, err := r.Next()
		if err == io.EOF {
			return r, n, nil
		}
		if err != nil {
			return r, n, err
		}
		n++
	}
}

// TestDonatedPagesStayIntact: pages given to the output pipe keep the
// contents they had when given, although the caller refills its buffer at
// once (the pipe still holds the last MiB of every frame then), as long as
// it drops them first. (Without the MADV_DONTNEED this test fails.)
func TestDonatedPagesStayIntact(t *testing.T) {
	if donor() == nil {
		t.Skip("transparent huge pages are disabled: stages copy instead of donating")
	}
	const size = 4 << 20
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	unix.Madvise(mem, unix.MADV_HUGEPAGE)
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	growPipe(pw)
	type result struct {
		sums []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		defer r.Close()
		rd, err := image.NewReader(slowReader{r})
		if err != nil {
			done <- result{err: err}
			return
		}
		var res result
		for {
			f, err := rd.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				res.err = err
				break
			}
			if _, p, err := f.Pages(); err == nil {
				for i := 0; i < len(p); i += image.PageSize {
					if !bytes.Equal(p[i:i+image.PageSize], bytes.Repeat(p[:1], image.PageSize)) {
						res.err = fmt.Errorf("frame %d: page %d changed", f.Index, i/image.PageSize)
						break
					}
				}
				res.sums = append(res.sums, p[0])
			}
		}
		done <- res
	}()
	w, err := image.NewWriter(pw, image.WriterOptions{Donate: donor()})
	if err != nil {
		t.Fatal(err)
	}
	for k := byte(1); k <= 8; k++ {
		for i := range mem {
			mem[i] = k
		}
		h := image.PagesHeader{Pid: 1, Addr: uint64(k) << 30}
		donated, err := w.WritePagesSummed(h, mem, image.PagesSum(h, mem), true)
		if err != nil {
			t.Fatal(err)
		}
		if !donated {
			t.Fatal("pages written to a pipe were not donated")
		}
		// The contract: drop the donated pages before writing again.
		if err := unix.Madvise(mem, unix.MADV_DONTNEED); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if !bytes.Equal(res.sums, []byte{1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Errorf("frames carried %v", res.sums)
	}
}

// slowReader is a slow consumer: the writer refills its buffer while the
// pipe still refers to the pages it gave.
type slowReader struct{ r io.Reader }

func (s slowReader) Read(p []byte) (int, error) {
	time.Sleep(5 * time.Millisecond)
	return s.r.Read(p)
}

// TestAwaitRoom: a full pipe makes awaitRoom sleep until the reader takes
// something; a pipe with room, and a regular file, return at once.
func TestAwaitRoom(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	awaitRoom(p[1]) // empty: at once
	f, err := os.CreateTemp(t.TempDir(), "file")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	awaitRoom(int(f.Fd()))
	page := make([]byte, 4096)
	for {
		if _, err := unix.Write(p[1], page); err == unix.EAGAIN {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() { awaitRoom(p[1]); close(done) }()
	select {
	case <-done:
		t.Fatal("awaitRoom returned while the pipe was full")
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := unix.Read(p[0], page); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("awaitRoom still waits after the reader took a page")
	}
}

// TestFirstCollectionDeferred: until the first collection the collector
// waits for the heap to near firstCollectionAt (GOGC off, the soft limit
// at most that); once it has run, GOGC is 100 and the limit the soft
// limit again.
func TestFirstCollectionDeferred(t *testing.T) {
	if os.Getenv("GOMEMLIMIT") != "" || os.Getenv("GOGC") != "" {
		t.Skip("GOMEMLIMIT or GOGC is set: the user's pacing stays")
	}
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	limitMemory()
	if p := gcPercent(); p != -1 {
		t.Errorf("GOGC %d before the first collection, want off", p)
	}
	if got, want := debug.SetMemoryLimit(-1), min(softLimit(heapReserved.Load()), firstCollectionAt); got != want {
		t.Errorf("soft limit %d before the first collection, want %d", got, want)
	}
	collectFirst(t)
	if p := gcPercent(); p != 100 {
		t.Errorf("GOGC %d after the first collection, want 100", p)
	}
	if got, want := debug.SetMemoryLimit(-1), softLimit(heapReserved.Load()); got != want {
		t.Errorf("soft limit %d after the first collection, want %d", got, want)
	}
}

func gcPercent() int {
	p := debug.SetGCPercent(-1)
	debug.SetGCPercent(p)
	return p
}

// collectFirst runs a collection and waits for deferFirstCollection's
// cleanup, which runs on a goroutine of its own.
func collectFirst(t *testing.T) {
	t.Helper()
	runtime.GC()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		limitMu.Lock()
		pending := firstPending
		limitMu.Unlock()
		if !pending {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the first collection's cleanup did not run")
		}
	}
}

// TestReserveHeap: the soft limit stays the stages' own while the
// reserved state fits in it with room for garbage, and grows with it
// beyond; given back, it comes down again.
func TestReserveHeap(t *testing.T) {
	if os.Getenv("GOMEMLIMIT") != "" {
		t.Skip("GOMEMLIMIT is set: the user's limit stays")
	}
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	limitMemory()
	collectFirst(t)               // the limit is then the soft limit alone
	before := heapReserved.Load() // other tests' trees
	if before > 4<<20 {
		t.Fatalf("%d bytes reserved before the test", before)
	}
	limit := func() int64 { return debug.SetMemoryLimit(-1) }
	ReserveHeap(10 * ProcessHeap)
	if got := limit(); got != memoryLimit {
		t.Fatalf("soft limit %d with 640 KiB reserved, want %d", got, memoryLimit)
	}
	const vmas = 2 * 65530 // two processes at vm.max_map_count
	ReserveHeap(vmas * VmaHeap)
	if got, want := limit(), before+10*ProcessHeap+vmas*VmaHeap+heapHeadroom; got != want || got <= memoryLimit {
		t.Fatalf("soft limit %d with %d VMAs reserved, want %d", got, vmas, want)
	}
	ReserveHeap(-vmas*VmaHeap - 10*ProcessHeap)
	if got := limit(); got != memoryLimit {
		t.Fatalf("soft limit %d after all was given back, want %d", got, memoryLimit)
	}
}

// A name may hold any byte but '/' and NUL: an error that quotes one
// must stay one line, for the user and for cr-dump, which reads its
// stages' stderr line by line.
func TestOneLine(t *testing.T) {
	for in, want := range map[string]string{
		"plain":                       "plain",
		"/tmp/new\nline is not it":    `/tmp/new\nline is not it`,
		"tab\there\r\x1b[2J\x7f":      `tab\there\x0d\x1b[2J\x7f`,
		"ünïcode stays, \x00 escaped": `ünïcode stays, \x00 escaped`,
		"C1 \u009b2J too":             `C1 \x9b2J too`,
	} {
		if got := OneLine(in); got != want {
			t.Errorf("OneLine(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReportIsOneLine(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := os.Stderr
	os.Stderr = w
	code := Report("cr-test", Hint(fmt.Errorf("pid 1 fd 3: %s is not the file that was dumped", "/tmp/new\nline"), "look at\nthe file"))
	os.Stderr = stderr
	w.Close()
	out, _ := io.ReadAll(r)
	want := "cr-test: error: pid 1 fd 3: /tmp/new\\nline is not the file that was dumped\ncr-test: hint: look at\\nthe file\n"
	if code != 1 || string(out) != want {
		t.Errorf("Report: status %d, printed %q; want 1 and %q", code, out, want)
	}
}

// TestReportStatus: a stage of the dump pipeline that failed only because
// a neighbour did says so in its exit status, found in the error's chain;
// words alone do not.
func TestReportStatus(t *testing.T) {
	stderr := os.Stderr
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	os.Stderr = devNull
	defer func() { os.Stderr = stderr }()
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"truncated input", fmt.Errorf("input: frame 6 at offset 3284: %w", image.ErrTruncated), ExitInputTruncated},
		{"closed output", fmt.Errorf("output: %w", &os.PathError{Op: "write", Path: "/dev/stdout", Err: unix.EPIPE}), ExitOutputClosed},
		{"interrupted", Interrupted(unix.SIGTERM, "tasks left frozen"), ExitInterrupted},
		{"interrupted, its input cut too", errors.Join(Interrupted(unix.SIGTERM, ""), fmt.Errorf("input: %w", image.ErrTruncated)), ExitInterrupted},
		{"the words of a truncated stream", errors.New("pid 1 fd 3: its queue: stream truncated"), 1},
		{"the words of a broken pipe", errors.New("pid 1 fd 4: write: broken pipe"), 1},
		{"usage", Usagef("unexpected argument %q", "x"), 2},
		{"a status to pass on", &ExitStatus{Code: 3}, 3},
	} {
		if got := Report("cr-test", NeighbourStatus(tc.err)); got != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, got, tc.want)
		}
	}
	// crit and cr-restore: a truncated image is their failure itself.
	if got := Report("crit", fmt.Errorf("frame 6 at offset 3284: %w", image.ErrTruncated)); got != 1 {
		t.Errorf("a truncated image outside the pipeline: status %d, want 1", got)
	}
	if got, want := Interrupted(unix.SIGTERM, "tasks left frozen").Error(), "interrupted by terminated; tasks left frozen"; got != want {
		t.Errorf("Interrupted: %q, want %q", got, want)
	}
}

// TestDonorDeclinesNonPipe: a regular file is not given pages (the caller
// writes them), every time it is asked, and a pipe after it still is.
func TestDonorDeclinesNonPipe(t *testing.T) {
	give := donor()
	if give == nil {
		t.Skip("transparent huge pages are disabled: stages copy instead of donating")
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, 4096)
	for i := 0; i < 2; i++ {
		if given, err := give(f, page); given || err != nil {
			t.Fatalf("a regular file, call %d: given %v, error %v", i+1, given, err)
		}
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if given, err := give(w, mem); !given || err != nil {
		t.Fatalf("a pipe: given %v, error %v", given, err)
	}
}
