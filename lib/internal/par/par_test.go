package par

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
)

func TestFor(t *testing.T) {
	for _, workers := range []int{0, 1, 2, 7, 100} {
		var sum atomic.Int64
		if err := For(50, workers, func(i int) error { sum.Add(int64(i)); return nil }); err != nil {
			t.Fatal(err)
		}
		if sum.Load() != 49*50/2 {
			t.Errorf("%d workers: the sum of 0..49 is %d", workers, sum.Load())
		}
		err := For(50, workers, func(i int) error {
			if i%10 == 7 {
				return fmt.Errorf("piece %d", i)
			}
			return nil
		})
		if err == nil || err.Error() != "piece 7" {
			t.Errorf("%d workers: error %v, want the lowest failing piece's (piece 7)", workers, err)
		}
	}
	if err := For(0, 2, func(int) error { return errors.New("called") }); err != nil {
		t.Errorf("no pieces: %v", err)
	}
}
