package restore

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// TestPlacingAhead: frames left in the image file are placed framesAhead
// at a time, a frame that writes where one under way does waits for it
// (the later pages must win), and a failure comes back from start or
// wait.
func TestPlacingAhead(t *testing.T) {
	var mu sync.Mutex
	running, most := 0, 0
	var order []int
	frame := func(i int, d time.Duration, err error) func() error {
		return func() error {
			mu.Lock()
			running++
			most = max(most, running)
			mu.Unlock()
			time.Sleep(d)
			mu.Lock()
			running--
			order = append(order, i)
			mu.Unlock()
			return err
		}
	}
	var a placing
	const mb = 1 << 20
	for i := range 6 {
		lo := uint64(i) * mb
		if err := a.start(lo, lo+mb, frame(i, 20*time.Millisecond, nil)); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.wait(); err != nil {
		t.Fatal(err)
	}
	if most != framesAhead || len(order) != 6 {
		t.Fatalf("%d frames placed, at most %d at once; want 6, %d at once", len(order), most, framesAhead)
	}

	// Frame 1 overlaps frame 0, which takes longer: it must end after it.
	order = nil
	a.start(0, 2*mb, frame(0, 50*time.Millisecond, nil))
	a.start(mb, 3*mb, frame(1, 0, nil))
	if err := a.wait(); err != nil {
		t.Fatal(err)
	}
	if len(order) != 2 || order[0] != 0 {
		t.Fatalf("overlapping frames ended in the order %v, want [0 1]", order)
	}

	// A failure: returned by the start that waits for it, or by wait.
	bad := errors.New("frame 7: crc32c mismatch")
	a.start(0, mb, frame(7, 0, bad))
	a.start(mb, 2*mb, frame(8, 0, nil))
	if err := a.start(2*mb, 3*mb, frame(9, 0, nil)); !errors.Is(err, bad) {
		t.Fatalf("start after a failed frame: %v, want %v", err, bad)
	}
	if err := a.wait(); err != nil {
		t.Fatalf("wait after the failure was returned: %v", err)
	}
	a.start(0, mb, frame(10, 10*time.Millisecond, bad))
	if err := a.wait(); !errors.Is(err, bad) {
		t.Fatalf("wait: %v, want %v", err, bad)
	}
}
