package pages

// sharedObjects remembers, from one process of a dump to the next, which
// parts of each shared memory object (shared anonymous memory, a System V
// segment: named by device and inode) are in the image already. Every VMA
// that maps a part of one shows the same pages, so they are dumped once,
// with the first process (in stream order) that maps them: a PostgreSQL
// server's 6 processes mapping its shared buffers made an image 6 times
// their size. A restore fills the object through that process's VMA, and
// the others map the same object (doc/stream-v1.md).
//
// Within a process too: a JIT maps one memfd twice, writable and
// executable (memfd.go), and the pages go with the first VMA. A process may
// be scanned twice (prepare's second pass), so a part claimed by the same
// VMA counts as not dumped yet.
type sharedObjects map[objectKey][]objectPart

type objectKey struct{ dev, inode uint64 }

// objectPart is [lo, hi) in bytes of the object, claimed by the VMA vma
// (its index) of process pid.
type objectPart struct {
	lo, hi   int64
	pid, vma int
}

// missing returns the parts of [lo, hi) of object k that no other VMA than
// vma of pid claimed, in order.
func (o sharedObjects) missing(k objectKey, pid, vma int, lo, hi int64) [][2]int64 {
	out := [][2]int64{{lo, hi}}
	for _, c := range o[k] {
		if c.pid == pid && c.vma == vma {
			continue
		}
		var next [][2]int64
		for _, r := range out {
			if c.hi <= r[0] || c.lo >= r[1] {
				next = append(next, r)
				continue
			}
			if r[0] < c.lo {
				next = append(next, [2]int64{r[0], c.lo})
			}
			if c.hi < r[1] {
				next = append(next, [2]int64{c.hi, r[1]})
			}
		}
		out = next
	}
	return out
}

// claim records that the VMA vma of pid dumps [lo, hi) of object k.
func (o sharedObjects) claim(k objectKey, pid, vma int, lo, hi int64) {
	o[k] = append(o[k], objectPart{lo, hi, pid, vma})
}
