package stage

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/cli"
	"crpipe/lib/image"
	"crpipe/lib/pb"
)

// TestRunIn: a filter stage run in this process reads the pipe it is
// given and writes the one it is given, not stdin and stdout, takes its
// flags, closes its output once its stream is complete, and returns its
// error; a panic becomes its error.
func TestRunIn(t *testing.T) {
	data := testStream(t)
	var sawFlag bool
	app := FilterCommand("cr-test", "", []cli.Flag{&cli.BoolFlag{Name: "flag"}}, func(c *cli.Context) (Filter, error) {
		sawFlag = c.Bool("flag")
		return Filter{Finish: func(w *image.Writer) error {
			return w.WriteMessage(image.TypeProcess, &pb.Process{Pid: 6})
		}}, nil
	})
	in := endpoints[0].in(t, data)
	out, written := endpoints[0].out(t)
	if err := RunIn(app, []string{"--flag", "-v"}, in, out); err != nil {
		t.Fatal(err)
	}
	if !sawFlag {
		t.Error("--flag not seen")
	}
	if _, err := out.Write([]byte("x")); !errors.Is(err, os.ErrClosed) {
		t.Errorf("output still open after the stream: write gave %v", err)
	}
	_, nIn, _ := readStream(data)
	if _, n, err := readStream(written()); err != nil || n != nIn+1 {
		t.Errorf("output: %d frames, %v; want the %d passed on and one appended", n, err, nIn)
	}

	boom := FilterCommand("cr-test", "", nil, func(*cli.Context) (Filter, error) { panic("boom") })
	out2, _ := endpoints[0].out(t)
	stderr := os.Stderr
	os.Stderr, _ = os.Open(os.DevNull)
	err := RunIn(boom, nil, endpoints[0].in(t, data), out2)
	os.Stderr.Close()
	os.Stderr = stderr
	if err == nil || !strings.Contains(err.Error(), "panic: boom") || Status(err) != 1 {
		t.Errorf("a panicking stage: %v", err)
	}
	// The parsing lock is not left held: another stage runs.
	bad := func() *cli.App {
		return FilterCommand("cr-test", "", nil, func(*cli.Context) (Filter, error) { return Filter{}, nil })
	}
	if err := RunIn(bad(), []string{"--nope"}, nil, nil); Status(err) != 2 {
		t.Errorf("an unknown flag: %v (status %d), want a usage error", err, Status(err))
	}
	if err := RunIn(bad(), []string{"arg"}, nil, nil); Status(err) != 2 {
		t.Errorf("an argument: %v (status %d), want a usage error", err, Status(err))
	}
}

// TestInterrupt: Interrupt reaches the channels asked for before it and
// those asked for after it, once each, and a filter stops at its next
// frame; ClearInterrupt ends it.
func TestInterrupt(t *testing.T) {
	t.Cleanup(ClearInterrupt)
	before := make(chan os.Signal, 1)
	NotifyInterrupt(before)
	defer StopInterrupt(before)
	Interrupt(unix.SIGTERM)
	Interrupt(unix.SIGTERM) // a second call waits behind the first
	after := make(chan os.Signal, 1)
	NotifyInterrupt(after)
	defer StopInterrupt(after)
	for name, ch := range map[string]chan os.Signal{"before": before, "after": after} {
		select {
		case sig := <-ch:
			if sig != unix.SIGTERM {
				t.Errorf("%s: %v", name, sig)
			}
		case <-time.After(time.Second):
			t.Errorf("%s: no signal", name)
		}
	}
	dst, _ := endpoints[0].out(t)
	err := RunFilter(endpoints[0].in(t, testStream(t)), dst, false, Filter{})
	if !errors.Is(err, ErrInterrupted) || Status(NeighbourStatus(err)) != ExitInterrupted {
		t.Errorf("a filter after Interrupt: %v", err)
	}
	ClearInterrupt()
	if InterruptSent() != nil {
		t.Error("ClearInterrupt left the signal")
	}
	dst, _ = endpoints[0].out(t)
	if err := RunFilter(endpoints[0].in(t, testStream(t)), dst, false, Filter{}); err != nil {
		t.Errorf("a filter after ClearInterrupt: %v", err)
	}
}
