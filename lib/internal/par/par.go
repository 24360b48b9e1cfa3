// Package par runs independent pieces of work on several goroutines.
package par

import "sync"

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
