package restore

import (
	"math/rand"
	"os"
	"slices"
	"strings"
	"testing"

	"crpipe/lib/pb"
)

// subtractSpans against the same subtraction page by page, on random spans
// and cuts (sorted, not overlapping, as kept VMAs and inherited ranges are).
func TestSubtractSpans(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	const pages = 64
	for round := 0; round < 2000; round++ {
		var cut []span
		for lo := uint64(rng.Intn(4)); lo < pages; {
			hi := lo + 1 + uint64(rng.Intn(6))
			cut = append(cut, span{lo, min(hi, pages)})
			lo = hi + uint64(rng.Intn(8))
		}
		lo := uint64(rng.Intn(pages))
		s := span{lo, lo + 1 + uint64(rng.Intn(pages-int(lo)))}
		var want []span
		for p := s.lo; p < s.hi; p++ {
			inCut := slices.ContainsFunc(cut, func(c span) bool { return c.lo <= p && p < c.hi })
			switch n := len(want); {
			case inCut:
			case n > 0 && want[n-1].hi == p:
				want[n-1].hi++
			default:
				want = append(want, span{p, p + 1})
			}
		}
		if got := subtractSpans(s, cut); !slices.Equal(got, want) {
			t.Fatalf("%v minus %v: %v, want %v", s, cut, got, want)
		}
	}
}

// A VMA with inherited pages is checked against the one parent VMA that
// could hold it, found by address among many.
func TestCheckInherited(t *testing.T) {
	const n = 20000
	parent := &task{proc: &pb.Process{Pid: 10}, mm: &pb.Mm{}}
	for i := uint64(0); i < n; i++ {
		start := 0x10000000 + i*2*pageSize // a gap after each
		parent.vmas = append(parent.vmas, newVma(&pb.Vma{Start: start, End: start + pageSize, Kind: uint32(pb.VmaKind_VMA_ANON), Flags: 0x22}))
	}
	child := &task{proc: &pb.Process{Pid: 11}, parent: parent, mm: &pb.Mm{}}
	for _, v := range parent.vmas {
		child.vmas = append(child.vmas, newVma(&pb.Vma{Start: v.Start, End: v.End, Kind: v.Kind, Flags: v.Flags,
			Inherited: []*pb.PageRange{{Start: v.Start, End: v.End}}}))
	}
	kept, err := child.keptSpans()
	if err != nil || len(kept) != n || kept[n-1] != (span{parent.vmas[n-1].Start, parent.vmas[n-1].End}) {
		t.Fatalf("kept: %d spans, %v", len(kept), err)
	}
	for _, c := range []struct {
		name       string
		start, end uint64
	}{
		{"in a gap", parent.vmas[7].End, parent.vmas[8].Start},
		{"across a gap", parent.vmas[7].Start, parent.vmas[8].End},
		{"after the last", parent.vmas[n-1].End, parent.vmas[n-1].End + pageSize},
		{"before the first", parent.vmas[0].Start - pageSize, parent.vmas[0].Start},
	} {
		v := newVma(&pb.Vma{Start: c.start, End: c.end, Kind: uint32(pb.VmaKind_VMA_ANON), Flags: 0x22,
			Inherited: []*pb.PageRange{{Start: c.start, End: c.end}}})
		if err := child.checkInherited(&v); err == nil || !strings.Contains(err.Error(), "no matching mapping") {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

// A record whose VMAs are not in address order, or overlap, is refused
// before the task is touched.
func TestSetupMmRefusesVmasOutOfOrder(t *testing.T) {
	vma := func(start, end uint64) *pb.Vma {
		return &pb.Vma{Start: start, End: end, Kind: uint32(pb.VmaKind_VMA_ANON), Prot: 3, Flags: 0x22}
	}
	for name, vmas := range map[string][]*pb.Vma{
		"out of order": {vma(0x20000, 0x21000), vma(0x10000, 0x11000)},
		"overlapping":  {vma(0x10000, 0x12000), vma(0x11000, 0x13000)},
	} {
		tk := &task{pid: os.Getpid(), proc: &pb.Process{Pid: 1}, vmas: vmasOf(vmas...)}
		err := tk.setupMm(nil)
		if err == nil || !strings.Contains(err.Error(), "not after the vma before it") {
			t.Errorf("%s: %v", name, err)
		}
	}
}
