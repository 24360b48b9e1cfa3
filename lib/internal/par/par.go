// Package par runs independent pieces of work on several goroutines.
package par

import (
	"os"
	"runtime"
	"strconv"
	"sync"
)

// For runs f(0) ... f(n-1) on up to workers goroutines (worker w takes w,
// w+workers, ...) and returns the error of the lowest i that failed, so
// that the error reported does not depend on timing.
func For(n, workers int, f func(i int) error) error {
	return ForWorker(n, workers, func(_, i int) error { return f(i) })
}

// ForWorker is For with the index of the worker that runs f(i) (one of
// 0 ... workers-1): what a worker owns, pieces of it never run at once.
func ForWorker(n, workers int, f func(w, i int) error) error {
	errs := make([]error, n)
	workers = max(1, min(workers, n))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				errs[i] = f(w, i)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Ordered runs f(0) ... f(n-1) as For does and hands each result to use,
// one at a time and in index order, as soon as it and every result before
// it are in, so that the results need not all be held at once. Past the
// first failure in index order (of f, or of use) use is not called again;
// that failure is returned once every f has run.
func Ordered[T any](n, workers int, f func(i int) (T, error), use func(i int, v T) error) error {
	var (
		mu    sync.Mutex
		vals  = make([]T, n)
		errs  = make([]error, n)
		done  = make([]bool, n)
		next  int
		first error
	)
	ForWorker(n, workers, func(_, i int) error {
		v, err := f(i)
		mu.Lock()
		defer mu.Unlock()
		vals[i], errs[i], done[i] = v, err, true
		for ; next < n && done[next]; next++ {
			if first == nil {
				if first = errs[next]; first == nil {
					first = use(next, vals[next])
				}
			}
			var zero T
			vals[next] = zero
		}
		return nil
	})
	return first
}

// EnvCPUs names the variable with which cr-dump tells a stage it started
// with one P (GOMAXPROCS=1: a Go runtime starts ~9% cheaper so, which a
// dump of one small process pays five times over) how many CPUs it may
// widen to when it has parallel work.
const EnvCPUs = "CRPIPE_CPUS"

var widen = sync.OnceValue(func() int {
	n, err := strconv.Atoi(os.Getenv(EnvCPUs))
	if err != nil {
		return runtime.GOMAXPROCS(0)
	}
	n = min(n, runtime.NumCPU()) // a stage held to fewer CPUs (taskset)
	if n <= runtime.GOMAXPROCS(0) {
		return runtime.GOMAXPROCS(0)
	}
	runtime.GOMAXPROCS(n)
	return n
})

// Workers is how many goroutines n independent pieces of work get: one
// per CPU the stage may use, and no more than n. Two pieces or more widen
// a stage that cr-dump started narrow (EnvCPUs).
func Workers(n int) int {
	if n < 2 {
		return 1
	}
	return min(widen(), n)
}
