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
// decides whether anybody sees it). A task's report ends when the pages
// its mm record announced have all been written.
var pageProgress struct {
	sync.Mutex
	m map[*task]*taskProgress
}

type taskProgress struct {
	p       *stage.Progress
	left    int64
	started bool
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
