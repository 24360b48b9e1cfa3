package restore

import (
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
)

// uffdRanges joins the eligible VMAs that touch, with pages or not, and
// leaves out a range with no pages at all and every VMA it cannot use.
func TestUffdRanges(t *testing.T) {
	anon := func(lo, hi uint64, pages bool) *pb.Vma {
		return &pb.Vma{Start: lo << 12, End: hi << 12, HasPages: pages, Prot: unix.PROT_READ | unix.PROT_WRITE}
	}
	file := &pb.Vma{Start: 30 << 12, End: 31 << 12, Kind: uint32(pb.VmaKind_VMA_FILE_PRIVATE), HasPages: true}
	inherited := anon(40, 41, true)
	inherited.Inherited = []*pb.PageRange{{Start: 40 << 12, End: 41 << 12}}
	nohuge := anon(50, 51, true)
	nohuge.Advice = pb.AdviceNoHugepage
	vmas := vmasOf(
		anon(1, 2, false), anon(2, 4, true), anon(4, 5, false), anon(5, 7, true), // one range: 1-7
		anon(10, 11, false), anon(11, 12, false), // no pages: left out
		anon(20, 22, true),       // alone
		file, anon(31, 32, true), // the file breaks the range
		inherited, anon(41, 42, false),
		nohuge,
	)
	ranges, total := uffdRanges(vmas)
	want := []span{{1 << 12, 7 << 12}, {20 << 12, 22 << 12}, {31 << 12, 32 << 12}}
	if !reflect.DeepEqual(ranges, want) || total != 7<<12 {
		t.Errorf("ranges %x, %d bytes with pages; want %x, %d", ranges, total, want, 7<<12)
	}
	f := &uffdFill{registered: ranges}
	for _, c := range []struct {
		v    *vma
		want bool
	}{{&vmas[1], true}, {&vmas[3], true}, {&vmas[6], true}, {&vmas[8], true}, {&vmas[7], false}, {&vmas[9], false}, {&vmas[11], false}} {
		if got := f.isRegistered(c.v); got != c.want {
			t.Errorf("vma %#x-%#x: registered %v, want %v", c.v.Start, c.v.End, got, c.want)
		}
	}
}

// vmasOf is records as restore keeps them.
func vmasOf(records ...*pb.Vma) []vma {
	vmas := make([]vma, len(records))
	for i, r := range records {
		vmas[i] = newVma(r)
	}
	return vmas
}
