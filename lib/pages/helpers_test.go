package pages

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
)

var (
	buildOnce sync.Once
	memtest   string
	buildErr  error
	buildDir  string
)

// memtestBinary compiles testdata/memtest.c once per test run.
func memtestBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "crpipe-pages-test")
		if buildErr != nil {
			return
		}
		memtest = filepath.Join(buildDir, "memtest")
		out, err := exec.Command("gcc", "-O2", "-Wall", "-o", memtest, "testdata/memtest.c").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("gcc: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return memtest
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// region is a named address range a test program reports.
type region struct{ start, end uint64 }

// testProc is a test program this test started, stopped with SIGSTOP.
type testProc struct {
	cmd     *exec.Cmd
	pid     int
	regions map[string]region
}

// startStopped starts memtest with args, waits for "ready" and stops it.
// Cleanup kills it (by its pid, which this test owns) and reaps it.
func startStopped(t testing.TB, args ...string) *testProc {
	t.Helper()
	cmd := exec.Command(memtestBinary(t), args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		stdin.Close()
		cmd.Wait()
	})
	p := &testProc{cmd: cmd, pid: cmd.Process.Pid, regions: map[string]region{}}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 1 && f[0] == "ready" {
			break
		}
		if len(f) != 3 {
			t.Fatalf("memtest said %q", sc.Text())
		}
		lo, _ := strconv.ParseUint(f[1], 16, 64)
		hi, _ := strconv.ParseUint(f[2], 16, 64)
		p.regions[f[0]] = region{lo, hi}
	}
	if len(p.regions) == 0 {
		t.Fatalf("memtest did not get ready: %v", sc.Err())
	}
	if err := syscall.Kill(p.pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitState(t, p.pid, 'T')
	return p
}

func waitState(t testing.TB, pid int, want byte) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.LastIndexByte(b, ')'); i > 0 && len(b) > i+2 && b[i+2] == want {
			return
		}
	}
	t.Fatalf("pid %d did not reach state %c", pid, want)
}

// inputStream is what cr-freeze would write for pids.
func inputStream(t testing.TB, pids ...int) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := image.NewWriter(&buf, image.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		st, err := proc.ReadMmStat(pid)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.WriteMessage(image.TypeProcess, &pb.Process{Pid: uint32(pid), Threads: []uint32{uint32(pid)}, StartTime: st.StartTime}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// pageFrame is one decoded page frame (a copy).
type pageFrame struct {
	pid  uint32
	addr uint64
	data []byte
}

type dumpOut struct {
	mms    []*pb.Mm
	pages  []pageFrame
	frames []image.Type
}

// runFilter runs the cr-pages filter on in and decodes what it wrote.
func runFilter(t testing.TB, in []byte) (*dumpOut, error) {
	t.Helper()
	var out bytes.Buffer
	if err := stage.RunFilter(bytes.NewReader(in), &out, false, Filter()); err != nil {
		return nil, err
	}
	return decode(t, &out), nil
}

func decode(t testing.TB, in io.Reader) *dumpOut {
	t.Helper()
	r, err := image.NewReader(in)
	if err != nil {
		t.Fatal(err)
	}
	d := &dumpOut{}
	for {
		f, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		d.frames = append(d.frames, f.Type)
		switch f.Type {
		case image.TypeMm:
			mm := new(pb.Mm)
			if err := image.Unmarshal(f, mm); err != nil {
				t.Fatal(err)
			}
			d.mms = append(d.mms, mm)
		case image.TypePages:
			h, data, err := f.Pages()
			if err != nil {
				t.Fatal(err)
			}
			d.pages = append(d.pages, pageFrame{h.Pid, h.Addr, bytes.Clone(data)})
		}
	}
	return d
}
