package stage

import (
	"errors"

	"crpipe/lib/image"
	"crpipe/lib/pb"
)

// Upstream collects what a dump stage needs from the records cr-freeze
// wrote: the freeze record and the live processes (a zombie has no threads,
// memory or files left to dump), and apart the zombies (which a pidfd or a
// /proc file may refer to). Use its Observe as the Filter's.
//
// It also notes the ghost files (ghost.go) already written upstream and the
// highest object number in use, so that a stage adding objects numbers
// them after it and writes no file twice.
type Upstream struct {
	Freeze  *pb.Freeze
	Procs   []*pb.Process
	Zombies []*pb.Process
	Ghosts  map[GhostKey]uint64 // object of each ghost-file record
	Objects uint64              // the highest object number of ghost-file and file-desc records
}

// Observe records the freeze and process records it sees.
func (u *Upstream) Observe(f *image.Frame) error {
	switch f.Type {
	case image.TypeFreeze:
		u.Freeze = &pb.Freeze{}
		return image.Unmarshal(f, u.Freeze)
	case image.TypeProcess:
		p := &pb.Process{}
		if err := image.Unmarshal(f, p); err != nil {
			return err
		}
		ReserveHeap(ProcessHeap)
		if p.State == "Z" {
			u.Zombies = append(u.Zombies, p)
		} else {
			u.Procs = append(u.Procs, p)
		}
	case image.TypeGhostFile:
		g := &pb.GhostFile{}
		if err := image.Unmarshal(f, g); err != nil {
			return err
		}
		if u.Ghosts == nil {
			u.Ghosts = map[GhostKey]uint64{}
		}
		u.Ghosts[GhostKey{g.Dev, g.Inode}] = g.Object
		u.Objects = max(u.Objects, g.Object)
	case image.TypeFileDesc:
		d := &pb.FileDesc{}
		if err := image.Unmarshal(f, d); err != nil {
			return err
		}
		u.Objects = max(u.Objects, d.Object)
	}
	return nil
}

// NeedProcs refuses a stream that holds no live process.
func (u *Upstream) NeedProcs() error {
	if len(u.Procs) == 0 {
		return Hint(errors.New("input: no process records"), "the stream must start with cr-freeze --pid PID")
	}
	return nil
}

// NeedFreeze refuses a stream without a freeze record.
func (u *Upstream) NeedFreeze() error {
	if u.Freeze == nil {
		return Hint(errors.New("input: no freeze record"), "the stream must start with cr-freeze --pid PID")
	}
	return nil
}
