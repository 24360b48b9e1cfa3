package proc

// gather collects the entries of a /proc file, one per line, in blocks,
// and returns them in one slice of the exact length. Appending them one at
// a time to a slice allocates about five times its final size as it grows
// (25 MB to parse the maps of 60,000 mappings): garbage the collector must
// chase, and a heap that reaches twice the slice. Blocks and one copy at
// the end allocate twice its size; a file of fewer than 64 entries, one
// block.
type gather[T any] struct {
	full []([]T)
	cur  []T
	n    int
}

const (
	gatherFirstBlock = 64
	gatherMaxBlock   = 4096
)

func (g *gather[T]) add(v T) {
	if len(g.cur) == cap(g.cur) {
		if g.cur != nil {
			g.full = append(g.full, g.cur)
		}
		g.cur = make([]T, 0, min(max(gatherFirstBlock, 2*cap(g.cur)), gatherMaxBlock))
	}
	g.cur = append(g.cur, v)
	g.n++
}

// last is the entry added last; nil before the first.
func (g *gather[T]) last() *T {
	if len(g.cur) == 0 {
		return nil
	}
	return &g.cur[len(g.cur)-1]
}

// slice returns the entries in the order added.
func (g *gather[T]) slice() []T {
	if len(g.full) == 0 {
		return g.cur
	}
	out := make([]T, 0, g.n)
	for _, b := range g.full {
		out = append(out, b...)
	}
	return append(out, g.cur...)
}
