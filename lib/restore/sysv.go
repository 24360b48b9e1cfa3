package restore

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// System V shared memory segments (lib/pages/sysv.go). Each dumped segment
// is made again in cr-restore's IPC namespace under its dumped id, which
// the program keeps (shmdt, shmctl), through shm_next_id; where the id still
// names the same segment, unattached (a restart on the same machine: the
// segment outlived the killed tree), that one is taken again and its
// contents replaced. The pages go in by pwrite through the segment's file
// (opened through a moment's attach of our own), so that an attach with
// SHM_RDONLY needs no write access; each task attaches the segment with
// shmat where it was. A segment dumped as removed is removed (IPC_RMID)
// once every task runs; one this restore made is removed if it fails.

// sysvSeg is one segment of the dump, made or found here.
type sysvSeg struct {
	id      int
	created bool
	removed bool     // dumped removed: IPC_RMID at the end
	f       *os.File // the segment's memory
}

// sysvAttach is a VMA of a task that attaches seg: its pages are written
// through seg.f.
type sysvAttach struct {
	v   *vma
	seg *sysvSeg
}

func init() {
	registerFinisher(func(rc *Ctx) error {
		for _, s := range sysvSegs(rc) {
			if s.removed {
				if _, err := unix.SysvShmCtl(s.id, unix.IPC_RMID, nil); err != nil {
					return fmt.Errorf("System V shared memory segment %d: remove: %w", s.id, err)
				}
			}
		}
		return nil
	})
	registerAborter(func(rc *Ctx, err error) error {
		for _, s := range sysvSegs(rc) {
			if s.created {
				unix.SysvShmCtl(s.id, unix.IPC_RMID, nil)
			}
		}
		return err
	})
}

func sysvSegs(rc *Ctx) []*sysvSeg {
	var segs []*sysvSeg
	for _, x := range rc.Shared {
		if s, ok := x.(*sysvSeg); ok {
			segs = append(segs, s)
		}
	}
	return segs
}

// sysvSegment returns the segment v attaches, made (or found) on first use.
func (rc *Ctx) sysvSegment(v *vma) (*sysvSeg, error) {
	d := v.sysv()
	if d == nil || d.Id < 0 || d.Size == 0 || v.End-v.Start != (d.Size+pageSize-1)&^(pageSize-1) {
		return nil, fmt.Errorf("a System V shared memory attach whose segment record does not fit it")
	}
	key := fmt.Sprintf("sysv:%d", d.Id)
	if s, ok := rc.Shared[key].(*sysvSeg); ok {
		return s, nil
	}
	s, err := makeSysvSeg(d)
	if s != nil {
		// Registered even half made: the aborter removes what we created.
		rc.Shared[key] = s
	}
	if err != nil {
		return nil, fmt.Errorf("System V shared memory segment %d (key %#x): %w", d.Id, uint32(d.Key), err)
	}
	rc.owned = append(rc.owned, s.f)
	return s, nil
}

func makeSysvSeg(d *pb.SysvShm) (*sysvSeg, error) {
	s := &sysvSeg{id: int(d.Id), removed: d.Removed}
	var ds unix.SysvShmDesc
	_, err := unix.SysvShmCtl(s.id, unix.IPC_STAT, &ds)
	switch {
	case err == nil:
		if ds.Perm.Key != d.Key || ds.Segsz != d.Size {
			return nil, fmt.Errorf("the id names another segment here (key %#x, %d bytes; dumped %d bytes)", uint32(ds.Perm.Key), ds.Segsz, d.Size)
		}
		if ds.Nattch > 0 {
			return nil, stage.Hint(fmt.Errorf("in use here (nattch %d)", ds.Nattch),
				"restore once the dumped processes are gone (cr-freeze kill), or where the segment is free")
		}
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EIDRM):
		if err := createSysvSeg(s, d); err != nil {
			return nil, err
		}
	default:
		return nil, err
	}
	// Owner, permissions and lock as dumped; the creator ids stay ours.
	if _, err := unix.SysvShmCtl(s.id, unix.IPC_STAT, &ds); err != nil {
		return s, err
	}
	ds.Perm.Uid, ds.Perm.Gid, ds.Perm.Mode = d.Uid, d.Gid, d.Mode&0o777
	if _, err := unix.SysvShmCtl(s.id, unix.IPC_SET, &ds); err != nil {
		return s, fmt.Errorf("owner and mode: %w", err)
	}
	if err := sys.ShmSetLocked(s.id, d.Locked); err != nil {
		return s, fmt.Errorf("SHM_LOCK %v: %w", d.Locked, err)
	}
	mem, err := unix.SysvShmAttach(s.id, 0, 0)
	if err != nil {
		return s, fmt.Errorf("attach: %w", err)
	}
	s.f, err = mappedFile(mem)
	unix.SysvShmDetach(mem)
	if err != nil {
		return s, err
	}
	if !s.created {
		// What the segment holds since the dump goes: the pages the image
		// does not hold were holes.
		if err := unix.Fallocate(int(s.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, int64(d.Size)); err != nil {
			s.f.Close()
			return s, fmt.Errorf("clear: %w", err)
		}
	}
	return s, nil
}

// createSysvSeg makes segment d under its dumped id: shm_next_id, then
// shmget. The id's slot may hold another segment (another sequence number),
// and another program may make a segment in between: both are errors.
func createSysvSeg(s *sysvSeg, d *pb.SysvShm) error {
	if d.Key != 0 {
		if other, err := unix.SysvShmGet(int(d.Key), 0, 0); err == nil {
			return fmt.Errorf("its key names segment %d here", other)
		}
	}
	if err := sys.SetShmNextID(s.id); err != nil {
		return fmt.Errorf("shm_next_id: %w", err)
	}
	id, err := unix.SysvShmGet(int(d.Key), int(d.Size), unix.IPC_CREAT|unix.IPC_EXCL|int(d.Mode&0o777))
	if err != nil {
		sys.SetShmNextID(-1)
		if errors.Is(err, unix.ENOSPC) {
			return fmt.Errorf("its slot holds another segment here")
		}
		return fmt.Errorf("shmget: %w", err)
	}
	if id != s.id {
		unix.SysvShmCtl(id, unix.IPC_RMID, nil)
		return fmt.Errorf("shmget gave id %d: another program made a segment meanwhile", id)
	}
	s.created = true
	return nil
}

// attachCalls attach v's segment in the task where it was, with the dumped
// protection.
func attachCalls(v *vma) []call {
	flags, prot := uint64(0), uint64(unix.PROT_READ|unix.PROT_WRITE)
	if v.sysv().ReadOnly {
		flags, prot = unix.SHM_RDONLY, unix.PROT_READ
	}
	calls := []call{sc(fmt.Sprintf("shmat %d at %#x", v.sysv().Id, v.Start), unix.SYS_SHMAT, uint64(v.sysv().Id), v.Start, flags)}
	if uint64(v.Prot) != prot {
		calls = append(calls, sc(fmt.Sprintf("protect %#x-%#x", v.Start, v.End), unix.SYS_MPROTECT, v.Start, v.End-v.Start, uint64(v.Prot)))
	}
	return calls
}

// sysvWriter returns what writes pages between addr and end into the
// segment t attaches there; nil if no attach of t holds them.
func (t *task) sysvWriter(addr, end uint64) func(addr uint64, data []byte) error {
	for _, a := range t.sysv {
		if addr < a.v.Start || end > a.v.End {
			continue
		}
		return func(addr uint64, data []byte) error {
			if _, err := a.seg.f.WriteAt(data, int64(addr-a.v.Start)); err != nil {
				return fmt.Errorf("System V shared memory segment %d: %w", a.seg.id, err)
			}
			return nil
		}
	}
	return nil
}
