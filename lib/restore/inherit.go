package restore

import (
	"fmt"
	"slices"
	"sort"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
)

// Memory shared copy-on-write since fork (Vma.inherited, written by
// cr-pages). A process is forked from its parent after the parent's memory
// is filled; the VMAs with inherited pages stay as the fork left them,
// everything else of the parent's is kept out of the fork, and the
// inherited VMAs are cleared outside their inherited ranges before the
// process's own pages are written.

// keptSpans checks t's inherited VMAs against its parent's (already
// restored) memory and returns their extents, in address order.
func (t *task) keptSpans() ([]span, error) {
	if t.mm == nil {
		return nil, nil
	}
	var kept []span
	for i := range t.vmas {
		v := &t.vmas[i]
		if len(v.inherited()) == 0 {
			continue
		}
		if err := t.checkInherited(v); err != nil {
			return nil, fmt.Errorf("pid %d: vma %#x-%#x: %w", t.proc.Pid, v.Start, v.End, err)
		}
		// In address order, which subtractSpans needs: limitFork asks
		// before t's own setupMm has checked its VMAs.
		if n := len(kept); n > 0 && v.Start < kept[n-1].hi {
			return nil, fmt.Errorf("pid %d: vma %#x-%#x: not after the vma before it, which ends at %#x", t.proc.Pid, v.Start, v.End, kept[n-1].hi)
		}
		kept = append(kept, span{v.Start, v.End})
	}
	return kept, nil
}

func (t *task) checkInherited(v *vma) error {
	p := t.parent
	if p == nil || p.mm == nil {
		return fmt.Errorf("pages inherited from the parent, whose memory the stream has not restored before (stream out of order)")
	}
	// The one parent VMA that could hold v: the first that ends after v's
	// start (the parent's VMAs are in address order, checked when its
	// memory was restored). A scan of all of them for each VMA took
	// seconds for a child of a parent with 16,000 mappings.
	pvmas := p.vmas
	i := sort.Search(len(pvmas), func(i int) bool { return pvmas[i].End > v.Start })
	if i == len(pvmas) || !v.canInherit(&pvmas[i]) {
		return fmt.Errorf("pages inherited from pid %d, which has no matching mapping there", p.proc.Pid)
	}
	last := v.Start
	for _, r := range v.inherited() {
		if r.lo < last || r.hi <= r.lo || r.hi > v.End || r.lo%pageSize != 0 || r.hi%pageSize != 0 {
			return fmt.Errorf("inherited range %#x-%#x is not page aligned, in order and inside the vma", r.lo, r.hi)
		}
		last = r.hi
	}
	return nil
}

// limitFork keeps everything of the parent's dumped memory but t's
// inherited VMAs out of the fork that creates t (MADV_DONTFORK), so a fork
// copies page tables only for what t keeps. The parent keeps them out
// until a child needs another set, or its VMAs are sealed (sealVmas puts
// them back first): siblings that keep the same spans cost no round trip.
func (t *task) limitFork() error {
	p := t.parent
	if p == nil || p.mm == nil {
		return nil
	}
	kept, err := t.keptSpans()
	if err != nil {
		return err
	}
	var parentSpans []span
	for i := range p.vmas {
		v := &p.vmas[i]
		if !isVdsoKind(pb.VmaKind(v.Kind)) {
			parentSpans = append(parentSpans, span{v.Start, v.End})
		}
	}
	var out []span
	for _, s := range mergeSpans(parentSpans) {
		out = append(out, subtractSpans(s, kept)...)
	}
	if slices.Equal(out, p.forkOut) {
		return nil
	}
	calls := append(p.forkBack(), adviseSpans("keep out of the fork", out, unix.MADV_DONTFORK)...)
	if _, err := p.r.run(calls...); err != nil {
		return err
	}
	p.forkOut = out
	return nil
}

// forkBack are the calls that put what limitFork kept out of forks back
// in; t's forkOut is then empty.
func (t *task) forkBack() []call {
	calls := adviseSpans("back into forks", t.forkOut, unix.MADV_DOFORK)
	t.forkOut = nil
	return calls
}

// adviseSpans are the madvise calls that give spans advice.
func adviseSpans(what string, spans []span, advice int) []call {
	calls := make([]call, 0, len(spans))
	for _, s := range spans {
		calls = append(calls, sc(fmt.Sprintf("%s %#x-%#x", what, s.lo, s.hi), unix.SYS_MADVISE, s.lo, s.hi-s.lo, uint64(advice)))
	}
	return calls
}

// keepCalls prepare an inherited VMA: its dumped protection (writable while
// its own pages are written) and its pages outside the inherited ranges
// dropped: zeros for anonymous memory, the file's bytes for a file.
func keepCalls(v *vma, prot uint64) []call {
	calls := []call{vmaCall("protect kept", v, unix.SYS_MPROTECT, v.Start, v.End-v.Start, prot)}
	for _, s := range subtractSpans(span{v.Start, v.End}, v.inherited()) {
		calls = append(calls, sc(fmt.Sprintf("clear %#x-%#x", s.lo, s.hi), unix.SYS_MADVISE, s.lo, s.hi-s.lo, unix.MADV_DONTNEED))
	}
	return calls
}

// mergeSpans sorts spans and joins those that touch or overlap.
func mergeSpans(in []span) []span {
	sort.Slice(in, func(i, j int) bool { return in[i].lo < in[j].lo })
	var out []span
	for _, s := range in {
		if n := len(out); n > 0 && s.lo <= out[n-1].hi {
			out[n-1].hi = max(out[n-1].hi, s.hi)
			continue
		}
		out = append(out, s)
	}
	return out
}

// subtractSpans returns the parts of s outside cut (sorted, not
// overlapping). It looks only at the cuts that overlap s: it is called once
// per VMA with the kept VMAs as cut, 16,000 of each in a large fork.
func subtractSpans(s span, cut []span) []span {
	var out []span
	lo := s.lo
	for _, c := range cut[sort.Search(len(cut), func(i int) bool { return cut[i].hi > s.lo }):] {
		if c.lo >= s.hi {
			break
		}
		if c.lo > lo {
			out = append(out, span{lo, c.lo})
		}
		lo = max(lo, c.hi)
	}
	if lo < s.hi {
		out = append(out, span{lo, s.hi})
	}
	return out
}
