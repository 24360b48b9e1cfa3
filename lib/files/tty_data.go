package files

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// Unread data of a pty pair whose both ends are in the dump: input the
// slave has not read, output the master has not read. A tty cannot be
// peeked at, so both queues are read out through cr-files' copies of the
// fds and put straight back (sys.PutTtyInput, TIOCSTI under a termios that
// converts nothing), before anything else: the live pair is then as it was
// whatever becomes of the dump (a later stage failing, --leave-running),
// and cr-files never has to learn how the dump ended.

// dumpPtyData records the pair's unread data in ts.
func dumpPtyData(e *entry, ts *pb.TtyState, tio *unix.Termios, mf, sf *os.File) error {
	canonical := tio.Lflag&unix.ICANON != 0 && tio.Lflag&unix.EXTPROC == 0
	in, err := unix.IoctlGetInt(int(sf.Fd()), unix.TIOCINQ) // canonical: complete lines only
	if err != nil {
		return cannot(e, "TIOCINQ: %v", err)
	}
	out, err := unix.IoctlGetInt(int(mf.Fd()), unix.TIOCINQ)
	if err != nil {
		return cannot(e, "TIOCINQ: %v", err)
	}
	if in == 0 && out == 0 && !canonical {
		return nil
	}
	// Only an empty pair can go as it is where its queues cannot be read
	// and put back exactly.
	why := ""
	ldisc, err := sys.TtyLdisc(int(sf.Fd()))
	switch {
	case err != nil:
		why = err.Error()
	case ldisc != 0:
		why = fmt.Sprintf("line discipline %d is not N_TTY", ldisc)
	case ts.Packet:
		why = "packet mode (TIOCPKT) mixes status bytes into the master's reads"
	case tio.Lflag&unix.EXTPROC != 0:
		why = "EXTPROC"
	default:
		if err := sys.CanTiocsti(int(sf.Fd())); err != nil {
			why = err.Error()
		}
	}
	if why != "" {
		if in > 0 || out > 0 {
			return stage.Hint(cannot(e, "/dev/pts/%d holds %d bytes of unread input and %d of output, which cannot be kept: %s", ts.Index, in, out, why),
				"checkpoint again when the terminal is idle")
		}
		stage.Logf("pid %d fd %d: /dev/pts/%d: an unfinished input line, if any, is not kept: %s", e.pid, e.fd, ts.Index, why)
		return nil
	}
	// Past the line discipline's buffer the kernel keeps input in its flip
	// buffer, unprocessed, where it cannot be read back as it was.
	if !canonical && in >= sys.TtyBufSize-3 || out >= sys.TtyBufSize-1 {
		return stage.Hint(cannot(e, "/dev/pts/%d: %d bytes of unread input, %d of output: %v, and more may wait behind it", ts.Index, in, out, sys.ErrTtyFull),
			"checkpoint again when the terminal's reader has caught up")
	}

	// From here a signal (cr-dump stopping its stages) waits until the data
	// is back.
	sigs := make(chan os.Signal, 1)
	stage.NotifyInterrupt(sigs)
	defer stage.StopInterrupt(sigs)
	q, takeIn := sys.TakeTtyInput(sf)
	o, takeOut := sys.TakePtyOutput(mf)
	putIn := sys.PutTtyInput(sf, q)
	if errors.Is(putIn, sys.ErrTtyFull) {
		// More than the buffer holds came out (the rest had waited in the
		// flip buffer): it goes back through the master and the line
		// discipline, and the dump is refused.
		putIn = fmt.Errorf("%w; written back through the master, to be processed again", putIn)
		if _, err := mf.Write(joinInput(q)); err != nil {
			putIn = fmt.Errorf("%w: %v: %d bytes of input are lost", putIn, err, q.Len())
		}
	}
	putOut := sys.PutPtyOutput(mf, o)
	if err := errors.Join(takeIn, takeOut, putIn, putOut); err != nil {
		return cannot(e, "/dev/pts/%d: unread data: %v", ts.Index, err)
	}
	select {
	case sig := <-sigs:
		return stage.Interrupted(sig, "")
	default:
	}
	ts.InputLines, ts.Input, ts.Output = q.Lines, q.Rest, o
	if q.Len() > 0 || len(q.Lines) > 0 || len(o) > 0 {
		stage.Logf("pid %d fd %d: /dev/pts/%d: %d lines and %d bytes of unread input, %d bytes of output", e.pid, e.fd, ts.Index, len(q.Lines), len(q.Rest), len(o))
	}
	return nil
}

func joinInput(q sys.TtyInput) []byte {
	var b []byte
	for _, l := range q.Lines {
		b = append(b, l...)
	}
	return append(b, q.Rest...)
}
