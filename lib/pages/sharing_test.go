package pages

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/sys"
)

// Each VMA of a child is matched with the one VMA of its parent that holds
// it and maps the same thing, among many, or with none.
func TestSharingMatchesParentVmas(t *testing.T) {
	const n = 20000
	anon := func(start, end uint64) vma {
		return vma{m: &proc.Mapping{Start: start, End: end, Read: true}, kind: pb.VmaKind_VMA_ANON, flags: unix.MAP_PRIVATE | unix.MAP_ANONYMOUS}
	}
	var pvmas, vmas []vma
	for i := uint64(0); i < n; i++ {
		start := 0x10000000 + i*2*image.PageSize // two pages, each VMA right after the one before
		pvmas = append(pvmas, anon(start, start+2*image.PageSize))
		switch i % 4 {
		case 0: // the same
			vmas = append(vmas, anon(start, start+2*image.PageSize))
		case 1: // its second page
			vmas = append(vmas, anon(start+image.PageSize, start+2*image.PageSize))
		case 2: // reaching into the next
			vmas = append(vmas, anon(start+image.PageSize, start+3*image.PageSize))
		case 3: // not private anonymous memory there
			v := anon(start, start+2*image.PageSize)
			v.flags = unix.MAP_SHARED | unix.MAP_ANONYMOUS
			vmas = append(vmas, v)
		}
	}
	parent := os.Getpid() // its pagemap is opened: any process will do
	parents := parentVmas{isParent: map[int]bool{parent: true}, of: map[int][]vma{parent: pvmas}}
	in, err := newSharing(parent+1, parent, vmas, nil, false, parents)
	if err != nil {
		t.Fatal(err)
	}
	defer in.close()
	for i := range vmas {
		want := i%4 < 2
		if got := in.from[i]; (got != nil) != want || got != nil && got != &pvmas[i] {
			t.Fatalf("vma %d (%#x-%#x): inherits from %v, want %v", i, vmas[i].m.Start, vmas[i].m.End, got, want)
		}
	}
}

// The parent's pagemap is read only where the child may share a page with
// it: where one is swapped out, or present and not its own alone.
func TestAllExclusive(t *testing.T) {
	const p, s, x = sys.PagemapPresent, sys.PagemapSwapped, sys.PagemapExclusive
	for _, c := range []struct {
		es   []uint64
		want bool
	}{
		{nil, true},
		{[]uint64{0, 0}, true},                // nothing there
		{[]uint64{p | x | 7, 0, p | x}, true}, // its own
		{[]uint64{p | x, p | 7}, false},       // present, mapped twice
		{[]uint64{s | 3}, false},              // swapped out: may be the parent's slot
		{[]uint64{x}, true},                   // the bit without a page: nothing there
	} {
		if got := allExclusive(c.es); got != c.want {
			t.Errorf("allExclusive(%#x) = %v, want %v", c.es, got, c.want)
		}
	}
}
