package stage

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func fakeProgress(t *testing.T, tty, verbose bool) (*bytes.Buffer, *time.Time) {
	var out bytes.Buffer
	now := time.Unix(1000, 0)
	oo, ot, on, ov, oe := progressOut, progressTTY, progressNow, Verbose, progressDisabledByEnv
	progressOut, progressTTY, progressNow, Verbose = &out, func() bool { return tty }, func() time.Time { return now }, verbose
	progressDisabledByEnv = func() bool { return false }
	t.Cleanup(func() { progressOut, progressTTY, progressNow, Verbose, progressDisabledByEnv = oo, ot, on, ov, oe })
	return &out, &now
}

func TestProgressQuietUnlessAsked(t *testing.T) {
	out, now := fakeProgress(t, false, false)
	p := NewProgress("pid 1", 1<<30)
	if p != nil {
		t.Fatal("progress without a terminal or -v")
	}
	p.Add(1 << 20) // nil-safe
	p.Done()
	*now = now.Add(time.Hour)
	if out.Len() != 0 {
		t.Errorf("wrote %q", out)
	}
}

func TestProgressTerminal(t *testing.T) {
	out, now := fakeProgress(t, true, false)
	p := NewProgress("pid 1", 1<<30)
	p.Add(1 << 28) // within the first half second: nothing
	if out.Len() != 0 {
		t.Fatalf("too early: %q", out)
	}
	*now = now.Add(time.Second)
	p.Add(1 << 28) // half done after 1 s
	got := out.String()
	if !strings.HasPrefix(got, "\r\033[K") || !strings.Contains(got, "pid 1: 512.0 MiB of 1.00 GiB (50%), 0.54 GB/s, 1s left") {
		t.Errorf("line %q", got)
	}
	*now = now.Add(50 * time.Millisecond)
	p.Add(1) // too soon after the last line
	if out.String() != got {
		t.Errorf("redrawn too often: %q", out)
	}
	p.Done()
	if !strings.HasSuffix(out.String(), "\r\033[K") {
		t.Errorf("line not cleared: %q", out)
	}
}

func TestProgressVerbose(t *testing.T) {
	out, now := fakeProgress(t, false, true)
	p := NewProgress("pid 2", 100<<20)
	*now = now.Add(600 * time.Millisecond)
	p.Add(50 << 20)
	*now = now.Add(600 * time.Millisecond)
	p.Add(50 << 20)
	p.Done()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "50.0 MiB of 100.0 MiB (50%)") || !strings.Contains(lines[1], "100.0 MiB of 100.0 MiB (100%)") || !strings.HasSuffix(lines[1], ", 1.2 s") {
		t.Errorf("lines %q", lines)
	}
	// A short transfer says nothing.
	out.Reset()
	q := NewProgress("pid 3", 1<<20)
	q.Add(1 << 20)
	q.Done()
	if out.Len() != 0 {
		t.Errorf("short transfer: %q", out)
	}
}
