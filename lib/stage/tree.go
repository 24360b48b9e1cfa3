package stage

import (
	"errors"

	"crpipe/lib/image"
	"crpipe/lib/pb"
)

// Upstream collects what a dump stage needs from the records cr-freeze
// wrote: the freeze record and the live processes (a zombie has no threads,
// memory or files left to dump). Use its Observe as the Filter's.
type Upstream struct {
	Freeze *pb.Freeze
	Procs  []*pb.Process
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
		if p.State != "Z" {
			u.Procs = append(u.Procs, p)
		}
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
