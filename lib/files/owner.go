package files

import (
	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/sys"
)

// Signal-driven I/O. A description with O_ASYNC sends SIGIO (or the signal
// F_SETSIG chose) to its owner (F_SETOWN, F_SETOWN_EX): a thread, a process
// or a process group; nginx's master hears its workers on a socketpair this
// way. The owner and signal belong to the description, and fcntl on a copy
// of an fd reads them. The owner must be in the dump: a restore names it by
// its dumped pid (lib/restore/fd_owner.go). Descriptions reopened by path
// (files, directories, devices) and TCP sockets keep no record of their
// own, so O_ASYNC on them is still refused.

// noOwnerKinds are the descriptions whose O_ASYNC is not dumped.
var noOwnerKinds = map[pb.FdKind]bool{
	pb.FdKind_FD_REGULAR: true, pb.FdKind_FD_DIRECTORY: true, pb.FdKind_FD_CHARDEV: true,
	pb.FdKind_FD_GHOST: true, pb.FdKind_FD_TCP: true,
}

// dumpOwner records the owner of ds, which has O_ASYNC, in rec.
func (d *dumper) dumpOwner(ds *desc, rec *pb.FileDesc) error {
	e := ds.first()
	if noOwnerKinds[e.kind()] {
		return cannot(e, "signal-driven I/O (O_ASYNC) on a %s is not supported yet", e.kindName())
	}
	if e.flight != "" { // the restored tasks set it, through their fds
		return cannot(e, "signal-driven I/O (O_ASYNC) on a file in flight is not supported yet")
	}
	f, err := d.getfd(e)
	if err != nil {
		return err
	}
	defer f.Close()
	o, err := sys.GetFileOwner(int(f.Fd()))
	if err != nil {
		return cannot(e, "F_GETOWN_EX: %v", err)
	}
	sig, err := unix.FcntlInt(f.Fd(), unix.F_GETSIG, 0)
	if err != nil {
		return cannot(e, "F_GETSIG: %v", err)
	}
	if o.Pid != 0 && !d.ownerInDump(o) {
		return cannot(e, "signal-driven I/O (O_ASYNC) signals %s %d, which is not in the dump", ownerTypeName(o.Type), o.Pid)
	}
	rec.Owner = &pb.FdOwner{Type: uint32(o.Type), Pid: o.Pid, Signal: int32(sig)}
	return nil
}

// ownerInDump: the thread, process or group o names is in the dump.
func (d *dumper) ownerInDump(o sys.FileOwner) bool {
	for _, p := range d.procs {
		switch o.Type {
		case sys.OwnerPID:
			if p.Pid == uint32(o.Pid) {
				return true
			}
		case sys.OwnerPGRP:
			if p.Pgid == uint32(o.Pid) {
				return true
			}
		case sys.OwnerTID:
			for _, t := range p.Threads {
				if t == uint32(o.Pid) {
					return true
				}
			}
		}
	}
	return false
}

func ownerTypeName(t int32) string {
	switch t {
	case sys.OwnerTID:
		return "thread"
	case sys.OwnerPGRP:
		return "process group"
	}
	return "process"
}
