package restore

// Helpers of page filling (issue 10, speed): progress and the THP mode.

import (
	"bytes"
	"fmt"
	"os"
	"sync"

	"crpipe/lib/image"
	"crpipe/lib/stage"
)

// Progress of page filling, per task (shown by writePages; stage.Progress
// decides whether anybody sees it). The mm record's pages_total is an
// upper bound (pages of zeros may have been left out), so a task's report
// ends when its pages are all written, when the pages of another task
// begin (cr-pages writes each task's pages together), or at the latest
// once the stream is read.
var pageProgress struct {
	sync.Mutex
	m map[*task]*taskProgress
}

type taskProgress struct {
	p    *stage.Progress
	left int64
}

func init() {
	registerProcessState(func(rc *Ctx, t *task, s *scratchWriter) ([]call, error) {
		pageProgress.Lock()
		defer pageProgress.Unlock()
		t.endPageProgress()
		return nil, nil
	})
}

// pagesWritten counts n bytes written into t.
func (t *task) pagesWritten(n int) {
	pageProgress.Lock()
	defer pageProgress.Unlock()
	if pageProgress.m == nil {
		pageProgress.m = map[*task]*taskProgress{}
	}
	tp := pageProgress.m[t]
	if tp == nil {
		for other := range pageProgress.m {
			other.endPageProgress()
		}
		total := int64(0)
		if t.mm != nil {
			total = int64(t.mm.PagesTotal) * image.PageSize
		}
		tp = &taskProgress{p: stage.NewProgress(fmt.Sprintf("pid %d", t.pid), total), left: total}
		pageProgress.m[t] = tp
	}
	tp.p.Add(int64(n))
	tp.left -= int64(n)
	if tp.left <= 0 {
		t.endPageProgress()
	}
}

// endPageProgress ends t's report, if any (pageProgress is locked).
func (t *task) endPageProgress() {
	if tp := pageProgress.m[t]; tp != nil {
		tp.p.Done()
		delete(pageProgress.m, t)
	}
}

// thpMode is the system's transparent huge page mode: "always", "madvise"
// or "never" ("" when unknown).
var thpMode = sync.OnceValue(func() string {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil {
		return ""
	}
	if i := bytes.IndexByte(b, '['); i >= 0 {
		if j := bytes.IndexByte(b[i:], ']'); j > 0 {
			return string(b[i+1 : i+j])
		}
	}
	return ""
})
