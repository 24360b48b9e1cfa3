package files

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// Pseudo-terminals whose master and slave are both in the dump. The pair
// (index, termios, window size, packet mode, lock) is read from its master
// and from a slave opened with TIOCGPTPEER, and comes with each of its
// descriptions; a restore recreates it with the same index. Unread input
// and output go with the first description of the pair (tty_data.go).

const ptmxMajor, ptmxMinor = 5, 2

// isPtySlave: Unix98 pty slaves (/dev/pts/N) have majors 136-143.
func isPtySlave(major uint32) bool { return major >= 136 && major <= 143 }

// ptyIndex is the index of a pty slave from its /dev/pts/N path.
func ptyIndex(link string) (uint32, bool) {
	n, ok := strings.CutPrefix(link, "/dev/pts/")
	if !ok {
		return 0, false
	}
	i, err := strconv.ParseUint(n, 10, 32)
	return uint32(i), err == nil
}

func (d *dumper) dumpTty(ds *desc, rec *pb.FileDesc) error {
	e := ds.first()
	f, err := d.getfd(e)
	if err != nil {
		return err
	}
	defer f.Close()
	master := unix.Major(e.st.Rdev) == ptmxMajor && unix.Minor(e.st.Rdev) == ptmxMinor
	ts := &pb.TtyState{Master: master}
	rec.Tty = ts
	var mf, sf *os.File // master and slave to read the pair's state from
	if master {
		n, err := unix.IoctlGetUint32(int(f.Fd()), unix.TIOCGPTN)
		if err != nil {
			return cannot(e, "TIOCGPTN: %v", err)
		}
		ts.Index = n
		mf = f
	} else {
		n, ok := ptyIndex(e.link)
		if !ok {
			return refuse(e.pid, e.fd, "terminal", e.link)
		}
		ts.Index = n
		sf = f
	}
	// The pair must be whole in the dump: find its master.
	if !master {
		if mf, err = d.ptyMaster(ts.Index); err != nil {
			return err
		}
		if mf != nil {
			defer mf.Close()
		}
	}
	if mf == nil && !master && d.opts.ShellJob {
		// The terminal of the shell that started the job: only its
		// identity is kept; a restore gives the job its own terminal.
		ts.External = true
		if n, err := unix.IoctlGetInt(int(sf.Fd()), unix.TIOCINQ); err == nil && n > 0 {
			stage.Logf("pid %d fd %d: /dev/pts/%d: %d bytes of unread input stay with the terminal", e.pid, e.fd, ts.Index, n)
		}
		return nil
	}
	if mf == nil {
		return stage.Hint(cannot(e, "the master of /dev/pts/%d is not in the dump (a terminal of a shell or terminal emulator outside it)", ts.Index),
			"start the program detached (setsid CMD </dev/null >LOG 2>&1), or dump a job of an interactive shell with cr-files --shell-job")
	}
	if sf == nil {
		if sf, err = sys.PtyPeer(int(mf.Fd()), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
			return cannot(e, "%v", err)
		}
		defer sf.Close()
	}
	tio, err := unix.IoctlGetTermios(int(sf.Fd()), unix.TCGETS)
	if err != nil {
		return cannot(e, "TCGETS: %v", err)
	}
	ts.Iflag, ts.Oflag, ts.Cflag, ts.Lflag, ts.Line = tio.Iflag, tio.Oflag, tio.Cflag, tio.Lflag, uint32(tio.Line)
	ts.Cc = append([]byte(nil), tio.Cc[:]...)
	ts.Ispeed, ts.Ospeed = tio.Ispeed, tio.Ospeed
	ws, err := unix.IoctlGetWinsize(int(sf.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return cannot(e, "TIOCGWINSZ: %v", err)
	}
	ts.Rows, ts.Cols, ts.Xpixel, ts.Ypixel = uint32(ws.Row), uint32(ws.Col), uint32(ws.Xpixel), uint32(ws.Ypixel)
	if v, err := unix.IoctlGetInt(int(mf.Fd()), unix.TIOCGPKT); err == nil {
		ts.Packet = v != 0
	}
	if v, err := unix.IoctlGetInt(int(mf.Fd()), unix.TIOCGPTLCK); err == nil {
		ts.Locked = v != 0
	}
	if _, first := d.object(ptyKey(ts.Index)); first {
		if err := dumpPtyData(e, ts, tio, mf, sf); err != nil {
			return err
		}
	}
	// Whose controlling terminal it is: a session leader of the dump whose
	// tty_nr is this slave.
	for _, fs := range d.files {
		st, err := proc.ReadStat(int(fs.Pid))
		if err != nil {
			return procErr(int(fs.Pid), err)
		}
		if proc.PtyIndex(st.TtyNr) == int(ts.Index) && st.Sid == int(fs.Pid) {
			ts.Session, ts.FgPgrp = uint32(st.Sid), uint32(max(st.Tpgid, 0))
		}
	}
	return nil
}

// ptyMaster returns a copy of the master of /dev/pts/index when a process
// of the dump holds it, nil otherwise.
func (d *dumper) ptyMaster(index uint32) (*os.File, error) {
	for _, o := range d.descs {
		oe := o.first()
		if oe.kind() != pb.FdKind_FD_TTY || unix.Major(oe.st.Rdev) != ptmxMajor || unix.Minor(oe.st.Rdev) != ptmxMinor {
			continue
		}
		of, err := d.getfd(oe)
		if err != nil {
			return nil, err
		}
		if n, err := unix.IoctlGetUint32(int(of.Fd()), unix.TIOCGPTN); err == nil && n == index {
			return of, nil
		}
		of.Close()
	}
	return nil, nil
}

func ptyKey(index uint32) string { return fmt.Sprintf("pty:%d", index) }
