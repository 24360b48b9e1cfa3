package pb

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
