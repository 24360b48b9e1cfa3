package e2e

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"crpipe/lib/image"
)

// TestFreezeWaitsForItsReader: cr-freeze freezes the tree only once the
// reader of its stream has taken the header (lib/stage/ready.go), so the
// tree is not frozen while the stages after it start; a reader that does
// not read delays it by about a second, no more.
func TestFreezeWaitsForItsReader(t *testing.T) {
	need(t, "cr-freeze")
	for _, reads := range []bool{true, false} {
		t.Run(map[bool]string{true: "reader", false: "no-reader"}[reads], func(t *testing.T) {
			p := startCounter(t, "counter", 0)
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			cmd := exec.Command(bin("cr-freeze"), "--pid", strconv.Itoa(p.pid))
			cmd.Stdout = w
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			start := time.Now()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			w.Close()
			var waitErr error
			exited := make(chan struct{})
			go func() { waitErr = cmd.Wait(); close(exited) }()
			t.Cleanup(func() {
				cmd.Process.Kill()
				<-exited
				exec.Command(bin("cr-freeze"), "thaw", "--pid", strconv.Itoa(p.pid)).Run()
			})
			var stream []byte
			if reads {
				// The header waits in the pipe; the counter runs on.
				for v := p.waitProgress(0, time.Second); time.Since(start) < 500*time.Millisecond; {
					v = p.waitProgress(v+2, 5*time.Second)
				}
				if _, err := os.Stat(p.cgroupDir()); err == nil {
					t.Fatalf("frozen into %s before its reader read a byte", p.cgroupDir())
				}
				if stream, err = io.ReadAll(r); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case <-exited:
				if waitErr != nil {
					t.Fatalf("cr-freeze: %v\n%s", waitErr, stderr.Bytes())
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("cr-freeze has not ended after 20 s\n%s", stderr.Bytes())
			}
			took := time.Since(start)
			if !reads {
				if took < 900*time.Millisecond {
					t.Fatalf("with nobody reading, cr-freeze ended after %v, before its wait of a second", took)
				}
				if stream, err = io.ReadAll(r); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Contains([]byte(readFile(p.cgroupDir()+"/cgroup.events")), []byte("frozen 1")) {
				t.Fatalf("cr-freeze ended, the target is not frozen:\n%s", stderr.Bytes())
			}
			ir, err := image.NewReader(bytes.NewReader(stream))
			if err != nil {
				t.Fatal(err)
			}
			for f, err := ir.Next(); f == nil || f.Type != image.TypeEnd; f, err = ir.Next() {
				if err != nil {
					t.Fatalf("the stream after the wait: %v", err)
				}
			}
			t.Logf("cr-freeze took %v", took)
			if out, err := exec.Command(bin("cr-freeze"), "thaw", "--pid", strconv.Itoa(p.pid)).CombinedOutput(); err != nil {
				t.Fatalf("thaw: %v: %s", err, out)
			}
			p.checkRunning()
		})
	}
}
