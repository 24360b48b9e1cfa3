package files

import (
	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// /dev/tty (5:0) opens the opener's controlling terminal: the description
// is a file of that terminal, whatever /dev/tty means to others. A restore
// can make such a description again only by opening /dev/tty in a process
// whose controlling terminal is that terminal once more: the session
// leader of a pty of the dump, after it gets the pty back (TIOCSCTTY), or,
// with --shell-job, cr-restore on its own terminal, which the restored job
// inherits. So every holder must hold it on its own controlling terminal
// (TIOCGDEV against /proc/PID/stat's tty_nr), and that terminal be one of
// those two.

const devTtyMajor, devTtyMinor = 5, 0

func (d *dumper) dumpDevTty(ds *desc, rec *pb.FileDesc) error {
	e := ds.first()
	f, err := d.getfd(e)
	if err != nil {
		return err
	}
	defer f.Close()
	dev, err := sys.TtyDev(f)
	if err != nil {
		return cannot(e, "%v", err)
	}
	major, minor := unix.Major(dev), unix.Minor(dev)
	if !isPtySlave(major) {
		return stage.Hint(cannot(e, "opened on device %d:%d, a console or virtual terminal", major, minor), refuseHints["console"])
	}
	index := (major-136)<<8 | minor
	ts := &pb.TtyState{Index: index}
	rec.Tty = ts
	var sid int
	for _, o := range ds.fds {
		st, err := proc.ReadStat(o.pid)
		if err != nil {
			return procErr(o.pid, err)
		}
		switch tty := st.TtyNr; {
		case tty == 0:
			return cannot(o, "the process has no controlling terminal any more (a restore could not open /dev/tty in it); it was opened on /dev/pts/%d", index)
		case uint64(tty) != dev:
			return cannot(o, "opened on /dev/pts/%d, which is not the process's controlling terminal (device %#x)", index, tty)
		}
		sid = st.Sid // one terminal is the controlling terminal of one session
	}
	mf, err := d.ptyMaster(index)
	if err != nil {
		return err
	}
	if mf == nil {
		if !d.opts.ShellJob {
			return stage.Hint(cannot(e, "/dev/pts/%d, its controlling terminal, has its master outside the dump", index),
				"dump a job of an interactive shell with cr-files --shell-job, or start the program detached (setsid CMD </dev/null >LOG 2>&1)")
		}
		if d.inTree[sid] {
			return cannot(e, "the shell job's terminal /dev/pts/%d is the controlling terminal of session %d, whose leader is in the dump: a restored session leader cannot get cr-restore's terminal", index, sid)
		}
		ts.External = true
		return nil
	}
	mf.Close()
	// The leader gets the pty back through an fd of its slave (cttyCalls in
	// lib/restore) and opens /dev/tty after that.
	for _, o := range d.entries {
		if o.pid == sid && isPtySlave(unix.Major(o.st.Rdev)) && o.kind() == pb.FdKind_FD_TTY && o.st.Rdev == dev {
			ts.Session = uint32(sid)
			return nil
		}
	}
	if !d.inTree[sid] {
		return cannot(e, "/dev/pts/%d is the controlling terminal of session %d, whose leader is not in the dump", index, sid)
	}
	return cannot(e, "/dev/pts/%d is the controlling terminal of session %d, whose leader holds no fd of it, so cannot get it back on restore", index, sid)
}
