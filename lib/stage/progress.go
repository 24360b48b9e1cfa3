package stage

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Progress shows how a long transfer goes (bytes, rate, time left) on
// stderr: on one rewritten line when stderr is a terminal, as a line every
// few seconds with -v, not at all otherwise. Nothing shows for a transfer
// that ends within its first half second. A nil *Progress does nothing, so
// callers need not check.
type Progress struct {
	mu       sync.Mutex
	out      io.Writer
	prefix   string
	what     string
	total    int64
	done     int64
	start    time.Time
	next     time.Time // when to show next
	every    time.Duration
	tty      bool
	shown    bool
	finished bool
}

// progressOut and progressTTY are replaced by tests.
var (
	progressOut           = io.Writer(os.Stderr)
	progressTTY           = func() bool { return isTerminal(os.Stderr) }
	progressDelay         = 500 * time.Millisecond
	progressEveryTTY      = 200 * time.Millisecond
	progressEveryVerbose  = 2 * time.Second
	progressNow           = time.Now
	progressDisabledByEnv = func() bool { return os.Getenv("CRPIPE_PROGRESS") == "0" }
)

// NewProgress starts reporting a transfer of total bytes, described by what
// ("pid 4242"). It returns nil when nobody would see it.
func NewProgress(what string, total int64) *Progress {
	tty := progressTTY()
	if (!tty && !Verbose) || total <= 0 || progressDisabledByEnv() {
		return nil
	}
	now := progressNow()
	p := &Progress{out: progressOut, prefix: filepath.Base(os.Args[0]), what: what, total: total, start: now, next: now.Add(progressDelay), tty: tty, every: progressEveryVerbose}
	if tty {
		p.every = progressEveryTTY
	}
	return p
}

// Add counts n more bytes done.
func (p *Progress) Add(n int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	if now := progressNow(); !p.finished && !now.Before(p.next) {
		p.show(now, false)
		p.next = now.Add(p.every)
	}
}

// Done ends the report: the terminal line is cleared; with -v, a transfer
// that showed progress says how it ended.
func (p *Progress) Done() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished {
		return
	}
	p.finished = true
	if !p.shown {
		return
	}
	if p.tty {
		fmt.Fprint(p.out, "\r\033[K")
		return
	}
	p.show(progressNow(), true)
}

func (p *Progress) show(now time.Time, final bool) {
	el := now.Sub(p.start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(p.done) / el
	}
	line := fmt.Sprintf("%s: %s: %s of %s (%.0f%%), %.2f GB/s", p.prefix, p.what, size(p.done), size(p.total), 100*float64(p.done)/float64(p.total), rate/1e9)
	if final {
		line += fmt.Sprintf(", %.1f s", el)
	} else if rate > 0 && p.done < p.total {
		line += fmt.Sprintf(", %s left", (time.Duration(float64(p.total-p.done) / rate * 1e9)).Round(100*time.Millisecond))
	}
	if p.tty {
		fmt.Fprintf(p.out, "\r\033[K%s", line)
	} else {
		fmt.Fprintln(p.out, line)
	}
	p.shown = true
}

func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%d KiB", n>>10)
	}
}
