package crit_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"crpipe/lib/crit"
	"crpipe/lib/image"
	"crpipe/lib/pb"
)

const testdata = "../image/testdata"

// vector mirrors an entry of ../image/testdata/vectors.json.
type vector struct {
	Name   string `json:"name"`
	Read   string `json:"read"`
	Check  string `json:"check"`
	Where  string `json:"where"`
	Frames int    `json:"frames"`
}

func vectors(t testing.TB) []vector {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) < 20 {
		t.Fatalf("only %d vectors", len(vs))
	}
	return vs
}

func readVector(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var sentinels = map[string]error{
	"ErrMagic":     image.ErrMagic,
	"ErrVersion":   image.ErrVersion,
	"ErrTruncated": image.ErrTruncated,
	"ErrChecksum":  image.ErrChecksum,
	"ErrTooLarge":  image.ErrTooLarge,
	"ErrCorrupt":   image.ErrCorrupt,
	"ErrTrailing":  image.ErrTrailing,
}

var typeInMessage = regexp.MustCompile(`frame (\d+) \([a-z0-9-]+\) at`)

func names(msg string) string { return typeInMessage.ReplaceAllString(msg, "frame $1 at") }

func roundTrip(t *testing.T, in []byte) ([]byte, string) {
	t.Helper()
	var js, out bytes.Buffer
	if err := crit.Decode(&js, bytes.NewReader(in)); err != nil {
		t.Fatalf("decode: %v", err)
	}
	var warnings []string
	if err := crit.Encode(&out, bytes.NewReader(js.Bytes()), crit.EncodeOptions{Warn: func(s string) { warnings = append(warnings, s) }}); err != nil {
		t.Fatalf("encode: %v", err)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings: %q", warnings)
	}
	return out.Bytes(), js.String()
}

// decode | encode gives back every good vector byte for byte: unknown
// types, unknown fields, non-canonical messages, flags, lz4 and all.
func TestRoundTripVectors(t *testing.T) {
	n := 0
	for _, v := range vectors(t) {
		if v.Read != "ok" {
			continue
		}
		n++
		t.Run(v.Name, func(t *testing.T) {
			in := readVector(t, v.Name)
			out, js := roundTrip(t, in)
			if !bytes.Equal(out, in) {
				t.Errorf("decode|encode changed the stream (%d -> %d bytes); JSON:\n%.2000s", len(in), len(out), js)
			}
		})
	}
	if n < 6 {
		t.Errorf("only %d good vectors", n)
	}
}

// Which lines carry raw: exactly those msg cannot reproduce.
func TestDecodeRawOnlyWhereNeeded(t *testing.T) {
	for name, wantRaw := range map[string][]string{
		"every-type.img":                {},
		"unknown-field.img":             {"process"},
		"noncanonical-message.img":      {"process"},
		"undecodable-process.img":       {"process"},
		"future-minor-unknown-type.img": {"type-99", "type-2147418113"},
	} {
		var js bytes.Buffer
		if err := crit.Decode(&js, bytes.NewReader(readVector(t, name))); err != nil {
			t.Fatal(err)
		}
		var gotRaw []string
		lines := strings.Split(strings.TrimSpace(js.String()), "\n")
		for _, l := range lines[1:] {
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("%s: %v in %s", name, err, l)
			}
			if _, ok := m["raw"]; ok {
				gotRaw = append(gotRaw, m["type"].(string))
			}
		}
		if strings.Join(gotRaw, ",") != strings.Join(wantRaw, ",") {
			t.Errorf("%s: raw on %v, want %v", name, gotRaw, wantRaw)
		}
		if want := `{"header":{"major":1,"minor":0,"flags":0}}`; name == "every-type.img" && lines[0] != want {
			t.Errorf("header line %s, want %s", lines[0], want)
		}
	}
}

// A stream with every record type, big page frames (several per lz4 block
// and across blocks) and a frame of an unknown type, plain and lz4.
func TestRoundTripEveryRecordType(t *testing.T) {
	for _, compress := range []bool{false, true} {
		var b bytes.Buffer
		w, err := image.NewWriter(&b, image.WriterOptions{Compress: compress})
		if err != nil {
			t.Fatal(err)
		}
		msgs := []struct {
			t image.Type
			m pb.Message
		}{
			{image.TypeInventory, &pb.Inventory{RootPid: 9, Hostname: "h", Kernel: "6.18", CreatedUnixNano: -5, ToolVersion: "v", BootId: "b", PageSize: 4096}},
			{image.TypeFreeze, &pb.Freeze{Method: "cgroup2-given", Cgroup: "/c", Original: []*pb.TaskCgroup{{Pid: 9, Cgroup2: "/o"}}}},
			{image.TypeProcess, &pb.Process{Pid: 9, Ppid: 1, Pgid: 9, Sid: 9, Threads: []uint32{9}, Comm: "ünïcode ✓", StartTime: 1 << 40, State: "S"}},
			{image.TypeThreadCore, &pb.ThreadCore{Pid: 9, Tid: 9, Regs: &pb.X86Regs{Rip: ^uint64(0), Rsp: 1, Gs: 3}, Xsave: []byte{0, 1, 2}, Sigmask: ^uint64(0), Rseq: &pb.Rseq{AbiPointer: 8, AbiSize: 32, Flags: 1, Signature: 2}}},
			{image.TypeTaskState, &pb.TaskState{Pid: 9, Tid: 9, ClearChildTid: 4, Sigactions: []*pb.Sigaction{{Signo: 64, Handler: 1 << 63, Flags: ^uint64(0), Restorer: 1, Mask: 2}}}},
			{image.TypeMm, &pb.Mm{Pid: 9, Vmas: []*pb.Vma{{Start: 0x400000, End: 0x1400000, Prot: 7, Flags: 1, Pgoff: 4096, Path: "/x y", Kind: 2, Dev: 1, Inode: 2, FileSize: -1, MtimeNsec: 3, HasPages: true, Huge: true}}, Auxv: make([]byte, 64), Exe: "/x", PagesTotal: 3073}},
			{image.TypeFiles, &pb.Files{Pid: 9, Fds: []*pb.Fd{{Fd: -1, Cloexec: true, Kind: 2, Path: "/", Flags: 0o200000, Offset: -1, Rdev: 1, Dev: 2, Inode: 3, Mode: 0o40755}}, Cwd: "/", Root: "/", Exe: "/x", Umask: 0o77}},
		}
		for _, m := range msgs {
			if err := w.WriteMessage(m.t, m.m); err != nil {
				t.Fatal(err)
			}
		}
		page := bytes.Repeat([]byte("crpipe page data"), 4<<20/16)
		for i := uint64(0); i < 3; i++ {
			if err := w.WritePages(image.PagesHeader{Pid: 9, Addr: 0x400000 + i<<22}, page); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.WritePages(image.PagesHeader{Pid: 9, Flags: 1, Addr: 0x1000000}, page[:image.PageSize]); err != nil {
			t.Fatal(err)
		}
		if err := w.WriteFrame(1000, 42, []byte{1, 2, 3}); err != nil {
			t.Fatal(err)
		}
		if err := w.WriteFrame(1001, 0, nil); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		in := b.Bytes()
		out, js := roundTrip(t, in)
		if !bytes.Equal(out, in) {
			t.Errorf("compress=%v: round trip changed the stream (%d -> %d bytes)", compress, len(in), len(out))
		}
		if strings.Contains(js, `"raw"`) && !strings.Contains(js, `"type":"type-1000","flags":42,"raw":"AQID"`) {
			t.Errorf("unexpected raw lines in:\n%.3000s", js)
		}
	}
}

func TestCheckVectors(t *testing.T) {
	for _, v := range vectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			sum, err := crit.Check(bytes.NewReader(readVector(t, v.Name)))
			if v.Check == "ok" {
				if err != nil || !strings.HasPrefix(sum, "ok: ") {
					t.Errorf("check: %q, %v", sum, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("check passed a broken stream: %s", sum)
			}
			if !errors.Is(err, sentinels[v.Check]) || !strings.Contains(names(err.Error()), v.Where) {
				t.Errorf("check: %v; want %s at %q", err, v.Check, v.Where)
			}
		})
	}
}

func TestShow(t *testing.T) {
	var out bytes.Buffer
	if err := crit.Show(&out, bytes.NewReader(readVector(t, "lz4.img"))); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{
		"stream 1.0, lz4-compressed, 10 frames, 3 page frames, 16 KiB of page data",
		"process 4242 (counter): ppid 1, pgid 4242, sid 4242",
		"threads 4242",
		"memory: 5 vmas, 296 KiB mapped, 4 pages (16 KiB) dumped",
		// address range, size, prot, kind, pages, path
		"0x555555577000-0x555555598000  132 KiB  rw-p          anon      2 [heap]",
		"0x555555554000-0x555555556000    8 KiB  r-xp  file-private      0 /usr/local/bin/counter",
		"[stack]",
		"thread 4242: rip 0x555555555234 rsp 0x7fffffffd000",
		"SIGTERM  handler 0x555555555100  flags SA_RESTORER",
		"SIGPIPE  ignore",
		// fd, kind, path, flags, offset
		"1  regular  wronly|append  offset 8192  /tmp/counter.log",
		"3  regular  rdwr           offset 17    /var/lib/counter/state  cloexec",
		"0  chardev  rdonly         offset 0     /dev/null",
		"cwd /var/lib/counter",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("show lacks %q:\n%s", want, s)
		}
	}
}

func TestShowUnknownAndDamaged(t *testing.T) {
	var out bytes.Buffer
	if err := crit.Show(&out, bytes.NewReader(readVector(t, "future-minor-unknown-type.img"))); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "stream 1.1 (header flags 0x10)") || !strings.Contains(out.String(), "type-99 ×1, type-2147418113 ×1") {
		t.Errorf("show:\n%s", out.String())
	}
	out.Reset()
	err := crit.Show(&out, bytes.NewReader(readVector(t, "truncated-in-page-payload.img")))
	if !errors.Is(err, image.ErrTruncated) || !strings.Contains(out.String(), "DAMAGED") || !strings.Contains(out.String(), "process 4242 (counter)") {
		t.Errorf("show of a truncated stream: %v\n%s", err, out.String())
	}
}

func decodeLines(t *testing.T, name string) []string {
	t.Helper()
	var js bytes.Buffer
	if err := crit.Decode(&js, bytes.NewReader(readVector(t, name))); err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(js.String(), "\n"), "\n")
}

func encode(lines []string) ([]byte, []string, error) {
	var out bytes.Buffer
	var warnings []string
	err := crit.Encode(&out, strings.NewReader(strings.Join(lines, "\n")+"\n"), crit.EncodeOptions{Warn: func(s string) { warnings = append(warnings, s) }})
	return out.Bytes(), warnings, err
}

// Editing is the point of decode | jq | encode: an edited msg is written,
// and dropping a frame gives a recomputed End (with a note).
func TestEncodeEdited(t *testing.T) {
	lines := decodeLines(t, "every-type.img")
	var edited []string
	for _, l := range lines {
		if strings.HasPrefix(l, `{"type":"thread-core"`) {
			continue // drop it
		}
		edited = append(edited, strings.Replace(l, `"comm":"counter"`, `"comm":"edited"`, 1))
	}
	out, warnings, err := encode(edited)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "End frame recomputed: 9 frames") {
		t.Errorf("warnings %q", warnings)
	}
	r, err := image.NewReader(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	for {
		f, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if f.Type == image.TypeThreadCore {
			t.Error("dropped frame still there")
		}
		if f.Type == image.TypeProcess {
			var p pb.Process
			if err := image.Unmarshal(f, &p); err != nil || p.Comm != "edited" {
				t.Errorf("process: %v %v", &p, err)
			}
		}
	}
	if r.End().Frames != 9 {
		t.Errorf("End says %d frames", r.End().Frames)
	}
}

func TestEncodeRefuses(t *testing.T) {
	good := decodeLines(t, "unknown-field.img")
	n := len(good)
	with := func(i int, l string) []string {
		c := append([]string(nil), good...)
		c[i] = l
		return c
	}
	processLine := -1
	for i, l := range good {
		if strings.HasPrefix(l, `{"type":"process"`) {
			processLine = i
		}
	}
	for _, c := range []struct {
		name  string
		lines []string
		want  string
	}{
		{"empty", nil, "no header line"},
		{"no end line", good[:n-1], "without an end line"},
		{"line after end", append(append([]string(nil), good...), good[1]), "after the end line"},
		{"no header", good[1:], "first line must be the header"},
		{"second header", with(2, good[0]), "second header"},
		{"future major", with(0, `{"header":{"major":2,"minor":0,"flags":0}}`), "unsupported stream version"},
		{"typo field", with(1, `{"type":"inventory","flags":0,"mgs":{}}`), `unknown field "mgs"`},
		{"unknown msg field", with(1, `{"type":"inventory","flags":0,"msg":{"root_pidd":1}}`), "inventory msg"},
		{"text after object", with(1, `{"type":"inventory","flags":0,"msg":{}} x`), "after top-level value"},
		{"bad type", with(1, `{"type":"inventori","flags":0,"msg":{}}`), `unknown type name "inventori"`},
		{"msg on unknown type", with(1, `{"type":"type-99","flags":0,"msg":{}}`), "takes raw, not msg"},
		{"no msg", with(1, `{"type":"inventory","flags":0}`), `needs "msg" or "raw"`},
		{"edited msg with raw kept", with(processLine, strings.Replace(good[processLine], `"comm":"counter"`, `"comm":"other"`, 1)), "msg differs from raw"},
		{"pages without data", with(7, `{"type":"pages","flags":0,"pid":1,"addr":"0x1000"}`), `needs "pid", "addr" and "data"`},
		{"pages unaligned", with(7, `{"type":"pages","flags":0,"pid":1,"addr":"0x1001","data":""}`), "not whole pages"},
		{"pages bad addr", with(7, `{"type":"pages","flags":0,"pid":1,"addr":"here","data":""}`), "not a number"},
		{"pages with msg", with(7, `{"type":"pages","flags":0,"msg":{}}`), "not msg or raw"},
		{"pid on metadata", with(1, `{"type":"inventory","flags":0,"pid":3,"msg":{}}`), "belong to pages lines"},
		{"bad base64", with(7, `{"type":"pages","flags":0,"pid":1,"addr":"0x1000","data":"!!"}`), "not a JSON line"},
		{"not an object", with(1, `[1]`), "not a JSON line"},
		{"flags overflow", with(1, `{"type":"inventory","flags":4294967296,"msg":{}}`), "not a JSON line"},
	} {
		_, _, err := encode(c.lines)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
	// Control: the unedited lines encode.
	if _, _, err := encode(good); err != nil {
		t.Errorf("control: %v", err)
	}
}

// The binary: exit codes, the one-line error naming frame and offset,
// FILE or stdin.

var (
	critBin  string
	buildErr error
	once     sync.Once
)

func critBinary(t *testing.T) string {
	t.Helper()
	once.Do(func() {
		dir, err := os.MkdirTemp("", "crit-test")
		if err != nil {
			buildErr = err
			return
		}
		critBin = filepath.Join(dir, "crit")
		out, err := exec.Command("go", "build", "-o", critBin, "crpipe/cmd/crit").CombinedOutput()
		if err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("go build cmd/crit: %v", buildErr)
	}
	return critBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if critBin != "" {
		os.RemoveAll(filepath.Dir(critBin))
	}
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

func run(t *testing.T, stdin io.Reader, args ...string) result {
	t.Helper()
	cmd := exec.Command(critBinary(t), args...)
	cmd.Stdin = stdin
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return result{o.String(), e.String(), cmd.ProcessState.ExitCode()}
}

var errorLine = regexp.MustCompile(`^crit: error: (frame \d+( \([a-z0-9-]+\))?|header) at offset \d+: .+\n(crit: hint: .+\n)?$`)

func TestBinaryCheck(t *testing.T) {
	for _, v := range vectors(t) {
		path := filepath.Join(testdata, v.Name)
		r := run(t, nil, "check", path)
		if v.Check == "ok" {
			if r.code != 0 || !strings.HasPrefix(r.stdout, "ok: ") || strings.Count(r.stdout, "\n") != 1 || r.stderr != "" {
				t.Errorf("%s: exit %d, stdout %q, stderr %q", v.Name, r.code, r.stdout, r.stderr)
			}
			continue
		}
		if r.code != 1 || !errorLine.MatchString(r.stderr) || !strings.Contains(names(r.stderr), v.Where) || r.stdout != "" {
			t.Errorf("%s: exit %d, stderr %q (want it to name %q)", v.Name, r.code, r.stderr, v.Where)
		}
		// The same from stdin.
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		r2 := run(t, f, "check")
		f.Close()
		if r2.code != 1 || r2.stderr != r.stderr {
			t.Errorf("%s on stdin: exit %d, %q", v.Name, r2.code, r2.stderr)
		}
	}
}

func TestBinaryPipeline(t *testing.T) {
	in := readVector(t, "future-minor-unknown-type.img")
	dec := run(t, bytes.NewReader(in), "decode")
	if dec.code != 0 {
		t.Fatalf("decode: %d %s", dec.code, dec.stderr)
	}
	enc := run(t, strings.NewReader(dec.stdout), "encode")
	if enc.code != 0 || enc.stdout != string(in) {
		t.Fatalf("encode: exit %d, %s, identical %v", enc.code, enc.stderr, enc.stdout == string(in))
	}
	comp := run(t, strings.NewReader(dec.stdout), "encode", "--compress")
	if comp.code != 0 || !strings.HasPrefix(comp.stdout, "\x04\x22\x4d\x18") {
		t.Fatalf("encode --compress: exit %d, %s", comp.code, comp.stderr)
	}
	show := run(t, strings.NewReader(comp.stdout), "show")
	if show.code != 0 || !strings.Contains(show.stdout, "lz4-compressed") || !strings.Contains(show.stdout, "process 4242 (counter)") {
		t.Errorf("show of the lz4 re-encoding: %d %s %s", show.code, show.stdout, show.stderr)
	}
	// A failed decode's JSON does not become a stream that looks whole.
	bad := run(t, nil, "decode", filepath.Join(testdata, "missing-end.img"))
	if bad.code != 1 || !errorLine.MatchString(bad.stderr) {
		t.Errorf("decode of a broken stream: exit %d %q", bad.code, bad.stderr)
	}
	enc2 := run(t, strings.NewReader(bad.stdout), "encode")
	if enc2.code != 1 || !strings.Contains(enc2.stderr, "without an end line") {
		t.Errorf("encode of a failed decode: exit %d %q", enc2.code, enc2.stderr)
	}
}

func TestBinaryUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"frobnicate"}, {"show", "a", "b"}, {"check", "--nope"}} {
		r := run(t, nil, args...)
		if r.code != 2 || !strings.HasPrefix(r.stderr, "crit: error: ") {
			t.Errorf("crit %q: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
	r := run(t, nil, "show", "/nonexistent/x.img")
	if r.code != 1 || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("missing file: exit %d %q", r.code, r.stderr)
	}
}

// Decode and encode stream: their memory does not grow with the stream.
func TestDecodeEncodeStream(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 192 MiB through JSON")
	}
	const frames = 48
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()

	pr, pw := io.Pipe()
	go func() {
		w, err := image.NewWriter(pw, image.WriterOptions{})
		page := make([]byte, 4<<20)
		for i := uint64(0); i < frames && err == nil; i++ {
			page[0] = byte(i)
			err = w.WritePages(image.PagesHeader{Pid: 1, Addr: i << 22}, page)
		}
		if err == nil {
			err = w.Close()
		}
		pw.CloseWithError(err)
	}()
	jr, jw := io.Pipe()
	go func() { jw.CloseWithError(crit.Decode(jw, pr)) }()
	er, ew := io.Pipe()
	go func() { ew.CloseWithError(crit.Encode(ew, jr, crit.EncodeOptions{})) }()
	r, err := image.NewReader(er)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		f, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if f.Type == image.TypePages && f.Payload[16] != byte(i) {
			t.Fatalf("frame %d out of order", i)
		}
	}
	close(stop)
	<-sampled
	if r.End().PageBytes != frames<<22 {
		t.Errorf("End: %v", r.End())
	}
	growth := int64(peak.Load()) - int64(base.HeapInuse)
	t.Logf("heap grew %d MiB while 192 MiB went through decode | encode", growth>>20)
	// Live: a few copies of one 4 MiB frame on each side of the JSON (the
	// payload, its base64 line, the decoded bytes) and GC slack; 192 MiB of
	// pages must not show.
	if growth > 96<<20 {
		t.Errorf("heap grew by %d MiB", growth>>20)
	}
}
