package pb

// Vma.advice bits: what mlock(2) and madvise(2) left on a VMA, as the
// VmFlags line of /proc/PID/smaps shows it (its two-letter names).
const (
	AdviceLocked      = 1 << iota // lo: mlock
	AdviceLockOnFault             // lf: mlock2(MLOCK_ONFAULT)
	AdviceDontFork                // dc: MADV_DONTFORK
	AdviceWipeOnFork              // wf: MADV_WIPEONFORK
	AdviceDontDump                // dd: MADV_DONTDUMP
	AdviceMergeable               // mg: MADV_MERGEABLE (KSM)
	AdviceHugepage                // hg: MADV_HUGEPAGE
	AdviceNoHugepage              // nh: MADV_NOHUGEPAGE
	AdviceSequential              // sr: MADV_SEQUENTIAL
	AdviceRandom                  // rr: MADV_RANDOM
	AdviceSealed                  // sl: mseal(2), sealed again once the VMA is complete
)

// AdviceKnown is every Advice bit above: a restore refuses others, whose
// meaning it cannot give back.
const AdviceKnown = AdviceSealed<<1 - 1

// AdviceFlags are the VmFlags names of the Advice bits, in bit order.
var AdviceFlags = []struct {
	Flag string
	Bit  uint32
}{
	{"lo", AdviceLocked}, {"lf", AdviceLockOnFault}, {"dc", AdviceDontFork}, {"wf", AdviceWipeOnFork},
	{"dd", AdviceDontDump}, {"mg", AdviceMergeable}, {"hg", AdviceHugepage}, {"nh", AdviceNoHugepage},
	{"sr", AdviceSequential}, {"rr", AdviceRandom}, {"sl", AdviceSealed},
}

// CanInherit reports whether the VMA c of a child process lies inside the
// VMA p of its parent and maps the same thing there, so that a fork of the
// parent gives c the parent's pages at the same addresses: both private,
// both anonymous or both the same file at the same offset. cr-pages only
// looks for pages shared since fork in such pairs, and cr-restore checks it
// again before keeping a VMA from the parent.
func (c *Vma) CanInherit(p *Vma) bool {
	k := VmaKind(c.Kind)
	if k != VmaKind(p.Kind) || (k != VmaKind_VMA_ANON && k != VmaKind_VMA_FILE_PRIVATE) {
		return false
	}
	if c.Flags != p.Flags || c.Start < p.Start || c.End > p.End {
		return false
	}
	if k == VmaKind_VMA_FILE_PRIVATE {
		return c.Dev == p.Dev && c.Inode == p.Inode && c.Pgoff-p.Pgoff == c.Start-p.Start
	}
	return true
}
