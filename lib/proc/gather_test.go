package proc

import "testing"

// TestGather: entries come back in order, in a slice of the exact length
// once there is more than one block; last is the entry added last.
func TestGather(t *testing.T) {
	for _, n := range []int{0, 1, gatherFirstBlock - 1, gatherFirstBlock, gatherFirstBlock + 1, 3*gatherMaxBlock + 7} {
		var g gather[int]
		if g.last() != nil {
			t.Fatalf("last of an empty gather: %v", g.last())
		}
		for i := range n {
			g.add(i)
			if *g.last() != i {
				t.Fatalf("n %d: last %d after adding %d", n, *g.last(), i)
			}
		}
		s := g.slice()
		if len(s) != n {
			t.Fatalf("n %d: %d entries", n, len(s))
		}
		if n > gatherFirstBlock && cap(s) != n {
			t.Fatalf("n %d: capacity %d, want the exact length", n, cap(s))
		}
		for i, v := range s {
			if v != i {
				t.Fatalf("n %d: entry %d is %d", n, i, v)
			}
		}
	}
}
