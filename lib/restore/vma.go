package restore

import (
	"crpipe/lib/image"
	"crpipe/lib/pb"
)

// vma is a Vma record as the restore keeps it, for the life of its task.
// A task can have 65,530 VMAs, and their decoded records (~190 bytes each,
// with protobuf's state) were two thirds of cr-restore's heap then: this
// takes 72 bytes, what most VMAs lack (a file, a segment, pages inherited)
// behind one pointer.
type vma struct {
	Start, End, Pgoff         uint64
	Prot, Flags, Kind, Advice uint32
	HasPages, Huge            bool
	Path                      string
	more                      *vmaMore // nil where all of it is zero
}

type vmaMore struct {
	dev, inode      uint64
	fileSize, mtime int64
	inherited       []span // pb.Vma.Inherited
	sysv            *pb.SysvShm
	memfd           *pb.MemfdState
}

var noMore vmaMore

func (v *vma) ext() *vmaMore {
	if v.more == nil {
		return &noMore
	}
	return v.more
}

func (v *vma) dev() uint64           { return v.ext().dev }
func (v *vma) inode() uint64         { return v.ext().inode }
func (v *vma) fileSize() int64       { return v.ext().fileSize }
func (v *vma) mtimeNsec() int64      { return v.ext().mtime }
func (v *vma) inherited() []span     { return v.ext().inherited }
func (v *vma) sysv() *pb.SysvShm     { return v.ext().sysv }
func (v *vma) memfd() *pb.MemfdState { return v.ext().memfd }

// canInherit: pb.Vma.CanInherit, on records of the fields it compares
// (on the stack: it is asked for each inherited VMA of each child).
func (v *vma) canInherit(p *vma) bool {
	c, pr := v.placeRecord(), p.placeRecord()
	return c.CanInherit(&pr)
}

// placeRecord is v's Vma record without its path, advice, pages and
// attachments: where and what it maps.
func (v *vma) placeRecord() pb.Vma {
	return pb.Vma{Start: v.Start, End: v.End, Pgoff: v.Pgoff, Prot: v.Prot, Flags: v.Flags, Kind: v.Kind, Dev: v.dev(), Inode: v.inode()}
}

// newVma keeps what restore needs of the record r.
func newVma(r *pb.Vma) vma {
	v := vma{Start: r.Start, End: r.End, Pgoff: r.Pgoff, Prot: r.Prot, Flags: r.Flags, Kind: r.Kind, Advice: r.Advice,
		HasPages: r.HasPages, Huge: r.Huge, Path: r.Path}
	if r.Dev != 0 || r.Inode != 0 || r.FileSize != 0 || r.MtimeNsec != 0 || len(r.Inherited) > 0 || r.Sysv != nil || r.Memfd != nil {
		v.more = &vmaMore{dev: r.Dev, inode: r.Inode, fileSize: r.FileSize, mtime: r.MtimeNsec, sysv: r.Sysv, memfd: r.Memfd}
		// Spans, not the records: a forked child's VMAs have a range each.
		if len(r.Inherited) > 0 {
			v.more.inherited = make([]span, len(r.Inherited))
			for i, ir := range r.Inherited {
				v.more.inherited[i] = span{ir.Start, ir.End}
			}
		}
	}
	return v
}

// decodeMm decodes an Mm record, its VMAs kept as vma, their paths as
// the ones in paths where it has them (and added to it): the processes of
// a tree map the same files.
func decodeMm(f *image.Frame, paths map[string]string) (*pb.Mm, []vma, error) {
	mm := new(pb.Mm)
	// Counted first: a slice grown by append would leave its earlier
	// arrays to the collector, 4 MB with 60,000 VMAs.
	n := 0
	pb.EachField(f.Payload, func(num pb.FieldNumber, _ pb.WireType, _ []byte) error {
		if num == pb.MmVmasField {
			n++
		}
		return nil
	})
	vmas := make([]vma, 0, n)
	err := pb.UnmarshalMm(f.Payload, mm, func(r *pb.Vma) error {
		v := newVma(r)
		if p, ok := paths[v.Path]; ok {
			v.Path = p
		} else if paths != nil {
			paths[v.Path] = v.Path
		}
		vmas = append(vmas, v)
		return nil
	})
	if err != nil {
		return nil, nil, image.CorruptFrame(f, err)
	}
	return mm, vmas, nil
}
