// Command goprog is a Go test subject for crpipe: goroutines that count,
// timers and a ticker (the Go runtime's threads, epoll and eventfd come
// along). Usage: goprog PROGRESS VERDICT. It writes its tick count to
// PROGRESS every 10 ms; on SIGTERM it checks that every goroutine and the
// timer still run and writes "PASS <ticks>" or "FAIL <why>" to VERDICT.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: goprog PROGRESS VERDICT")
		os.Exit(2)
	}
	progress, err := os.OpenFile(os.Args[1], os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		os.Exit(2)
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	var counts [8]atomic.Int64
	for i := range counts {
		go func() {
			for {
				counts[i].Add(1)
				time.Sleep(time.Millisecond)
			}
		}()
	}
	var fired atomic.Int64
	var rearm func()
	rearm = func() { fired.Add(1); time.AfterFunc(5*time.Millisecond, rearm) }
	time.AfterFunc(5*time.Millisecond, rearm)
	ticker := time.NewTicker(10 * time.Millisecond)
	ticks := 0
	for {
		select {
		case <-ticker.C:
			ticks++
			progress.WriteAt([]byte(fmt.Sprintf("%d\n", ticks)), 0)
			continue
		case <-term:
		}
		break
	}
	var before [8]int64
	for i := range counts {
		before[i] = counts[i].Load()
	}
	f0 := fired.Load()
	time.Sleep(100 * time.Millisecond)
	why := ""
	for i := range counts {
		if counts[i].Load() <= before[i] {
			why = fmt.Sprintf("goroutine %d stopped counting", i)
		}
	}
	if fired.Load() <= f0 {
		why = "the timer stopped firing"
	}
	verdict := fmt.Sprintf("PASS %d\n", ticks)
	if why != "" {
		verdict = "FAIL " + why + "\n"
	}
	os.WriteFile(os.Args[2], []byte(verdict), 0o644)
	if why != "" {
		os.Exit(1)
	}
}
