package par

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
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

func TestOrdered(t *testing.T) {
	for _, workers := range []int{0, 1, 2, 7, 100} {
		var got []int
		err := Ordered(50, workers, func(i int) (int, error) { return i * i, nil }, func(i, v int) error {
			if v != i*i || i != len(got) {
				t.Errorf("%d workers: use(%d, %d) after %d results", workers, i, v, len(got))
			}
			got = append(got, v)
			return nil
		})
		if err != nil || len(got) != 50 {
			t.Errorf("%d workers: %v, %d results used, want 50", workers, err, len(got))
		}
		// The first failure in index order, of f or of use, ends the uses.
		used := 0
		err = Ordered(50, workers, func(i int) (int, error) {
			if i == 30 {
				return 0, fmt.Errorf("piece %d", i)
			}
			return i, nil
		}, func(i, v int) error {
			used++
			if i == 20 {
				return fmt.Errorf("use %d", i)
			}
			return nil
		})
		if err == nil || err.Error() != "use 20" || used != 21 {
			t.Errorf("%d workers: error %v after %d uses, want use 20 after 21", workers, err, used)
		}
		used = 0
		err = Ordered(50, workers, func(i int) (int, error) {
			if i%10 == 7 {
				return 0, fmt.Errorf("piece %d", i)
			}
			return i, nil
		}, func(int, int) error { used++; return nil })
		if err == nil || err.Error() != "piece 7" || used != 7 {
			t.Errorf("%d workers: error %v after %d uses, want piece 7 after 7", workers, err, used)
		}
	}
}

// TestWorkersWiden runs itself again as a stage that cr-dump started
// narrow: one P until there are two pieces of work, then the CPUs it was
// told of (at most those it may run on).
func TestWorkersWiden(t *testing.T) {
	if os.Getenv("PAR_WIDEN_CHILD") == "1" {
		if got := Workers(1); got != 1 || runtime.GOMAXPROCS(0) != 1 {
			fmt.Printf("Workers(1) = %d with GOMAXPROCS %d, want 1 and 1\n", got, runtime.GOMAXPROCS(0))
			os.Exit(1)
		}
		want := min(3, runtime.NumCPU())
		if got := Workers(10); got != want || runtime.GOMAXPROCS(0) != want {
			fmt.Printf("Workers(10) = %d with GOMAXPROCS %d, want %d and %d\n", got, runtime.GOMAXPROCS(0), want, want)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: nothing to widen to")
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestWorkersWiden$")
	cmd.Env = append(os.Environ(), "PAR_WIDEN_CHILD=1", "GOMAXPROCS=1", EnvCPUs+"=3")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// Not narrowed: every P from the start, and never more pieces than work.
	if got := Workers(runtime.GOMAXPROCS(0) + 5); got != runtime.GOMAXPROCS(0) {
		t.Errorf("Workers = %d, want GOMAXPROCS %d", got, runtime.GOMAXPROCS(0))
	}
	if got := Workers(0); got != 1 {
		t.Errorf("Workers(0) = %d, want 1", got)
	}
}
