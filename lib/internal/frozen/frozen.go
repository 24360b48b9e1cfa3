// Package frozen gives dump-stage tests a frozen target and the stream
// cr-freeze would have started for it.
package frozen

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/freeze"
	"crpipe/lib/image"
	"crpipe/lib/internal/testprog"
)

// Target is a frozen test process.
type Target struct {
	*testprog.Proc
	Frozen *freeze.Frozen
	Stream []byte // Inventory, Freeze, Process records and End
}

// Start runs target with args, freezes it, and thaws it again in cleanup
// (before the process is killed).
func Start(t testing.TB, args ...string) *Target {
	t.Helper()
	needRoot(t)
	return Freeze(t, testprog.Start(t, args...))
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (cgroups, ptrace)")
	}
}

// StartAsleep is Start for a target that sleeps ("sleep N"), frozen once
// it sits in its nanosleep: its registers are then the sleep's, not those
// of its start-up (a freeze right after the exec caught it there).
func StartAsleep(t testing.TB, args ...string) *Target {
	t.Helper()
	needRoot(t)
	p := testprog.Start(t, args...)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", p.Pid))
		if f := strings.Fields(string(b)); len(f) > 0 && (f[0] == strconv.Itoa(unix.SYS_NANOSLEEP) || f[0] == strconv.Itoa(unix.SYS_CLOCK_NANOSLEEP)) {
			return Freeze(t, p)
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d is not in nanosleep after 10 s: /proc/PID/syscall says %q", p.Pid, b)
		}
	}
}

// Freeze freezes a running target, as Start does.
func Freeze(t testing.TB, p *testprog.Proc) *Target {
	t.Helper()
	f, err := freeze.Freeze(p.Pid, freeze.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-registered first: thaw before testprog kills.
	t.Cleanup(func() { freeze.ThawPid(p.Pid) })
	var buf bytes.Buffer
	w, err := image.NewWriter(&buf, image.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	inv, fr, procs := f.Records()
	w.WriteMessage(image.TypeInventory, inv)
	w.WriteMessage(image.TypeFreeze, fr)
	for _, pr := range procs {
		w.WriteMessage(image.TypeProcess, pr)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return &Target{Proc: p, Frozen: f, Stream: buf.Bytes()}
}

// Thaw thaws the target now.
func (tg *Target) Thaw(t testing.TB) {
	t.Helper()
	if _, err := freeze.ThawPid(tg.Pid); err != nil {
		t.Fatal(err)
	}
}

// Frames decodes a stream into its frames (payloads copied).
func Frames(t testing.TB, stream []byte) []image.Frame {
	t.Helper()
	r, err := image.NewReader(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	var fs []image.Frame
	for {
		f, err := r.Next()
		if err != nil {
			if err == io.EOF {
				return fs
			}
			t.Fatal(err)
		}
		c := *f
		c.Payload = append([]byte(nil), f.Payload...)
		fs = append(fs, c)
	}
}
