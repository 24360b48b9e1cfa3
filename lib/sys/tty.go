package sys

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Unread data in a terminal's line discipline (n_tty). A tty has no peek:
// the queue is read out and put back. Putting back goes through TIOCSTI,
// which hands one byte at a time straight to the line discipline (no flip
// buffer, so no race with the kernel's worker), with the termios switched
// for the refill so that nothing is converted, echoed, signalled or
// edited a second time. TIOCSTI needs CAP_SYS_ADMIN for a tty that is not
// the caller's controlling terminal (or the dev.tty.legacy_tiocsti sysctl
// on Linux 6.2 and later).

// TtyInput is what a terminal holds for its readers.
type TtyInput struct {
	// Lines are complete lines in canonical mode, as read(2) returns them:
	// with their delimiter ('\n', VEOL or VEOL2), or without one when VEOF
	// ended the line (an empty line is a bare VEOF).
	Lines [][]byte
	// Rest is the unfinished line in canonical mode, all of the input
	// otherwise.
	Rest []byte
}

// Len is the number of bytes a reader would get.
func (q TtyInput) Len() int {
	n := len(q.Rest)
	for _, l := range q.Lines {
		n += len(l)
	}
	return n
}

// TtyBufSize is the line discipline's read buffer (N_TTY_BUF_SIZE): it
// holds at most TtyBufSize-1 bytes, line ends included.
const TtyBufSize = 4096

// ErrTtyFull means a queue may hold more than its buffer: the kernel keeps
// what does not fit in its flip buffer, unprocessed, where it cannot be read
// back as it was.
var ErrTtyFull = errors.New("the line discipline's buffer is full")

// ttyCanonical: reads return lines (EXTPROC leaves the editing to the
// other side, and reads are raw).
func ttyCanonical(t *unix.Termios) bool {
	return t.Lflag&unix.ICANON != 0 && t.Lflag&unix.EXTPROC == 0
}

// TtyLdisc is the line discipline of the tty of fd (TIOCGETD; 0 is N_TTY).
func TtyLdisc(fd int) (int, error) {
	n, err := unix.IoctlGetInt(fd, unix.TIOCGETD)
	if err != nil {
		return 0, fmt.Errorf("TIOCGETD: %w", err)
	}
	return n, nil
}

// CanTiocsti reports whether this process may put bytes into a tty's input
// with TIOCSTI, without putting any: a NULL argument faults only after the
// permission checks.
func CanTiocsti(fd int) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCSTI, 0)
	if e == unix.EFAULT {
		return nil
	}
	return fmt.Errorf("TIOCSTI (needs CAP_SYS_ADMIN, or dev.tty.legacy_tiocsti=1 on Linux 6.2+): %w", e)
}

func tiocsti(fd int, b byte) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCSTI, uintptr(unsafe.Pointer(&b)))
	if e != 0 {
		return fmt.Errorf("TIOCSTI: %w", e)
	}
	return nil
}

// nonblocking sets O_NONBLOCK on f's open file description (shared with
// whoever else holds it) and returns what puts the flags back.
func nonblocking(f *os.File) (func(), error) {
	fd := int(f.Fd())
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return nil, fmt.Errorf("F_GETFL: %w", err)
	}
	if fl&unix.O_NONBLOCK != 0 {
		return func() {}, nil
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("F_SETFL: %w", err)
	}
	return func() { unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl) }, nil
}

// readTty reads f until the line discipline has nothing more: one line per
// call in canonical mode (n_tty returns a line at a time), all of it
// otherwise. A read that finds nothing first waits for the kernel's flip
// buffer worker, so EAGAIN means empty.
func readTty(fd int, lines bool, each func([]byte)) error {
	buf := make([]byte, 2*TtyBufSize)
	for i := 0; i < 2*TtyBufSize; i++ {
		n, err := unix.Read(fd, buf)
		switch {
		case err == unix.EAGAIN:
			return nil
		case err == unix.EINTR:
			continue
		case err != nil:
			return fmt.Errorf("read: %w", err)
		case n == 0 && !lines:
			return nil
		}
		each(append([]byte(nil), buf[:n]...))
	}
	return fmt.Errorf("read: the queue does not run dry")
}

// TakeTtyInput reads out the unread input of the tty that f (a terminal,
// or a pty slave) reads, leaving the tty empty and its termios as it was.
// O_NONBLOCK is set on f's description meanwhile. In canonical mode the
// complete lines come one per read; the unfinished line is only readable
// once ICANON is off, and the kernel keeps it when ICANON is switched off
// (n_tty_set_termios makes the whole buffer readable).
func TakeTtyInput(f *os.File) (TtyInput, error) {
	var q TtyInput
	fd := int(f.Fd())
	tio, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return q, fmt.Errorf("TCGETS: %w", err)
	}
	back, err := nonblocking(f)
	if err != nil {
		return q, err
	}
	defer back()
	rest := func(b []byte) { q.Rest = append(q.Rest, b...) }
	if !ttyCanonical(tio) {
		return q, readTty(fd, false, rest)
	}
	if err := readTty(fd, true, func(b []byte) { q.Lines = append(q.Lines, b) }); err != nil {
		return q, err
	}
	raw := *tio
	raw.Lflag &^= unix.ICANON | unix.ECHO | unix.ECHONL | unix.ISIG
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return q, fmt.Errorf("TCSETS: %w", err)
	}
	err = readTty(fd, false, rest)
	// Back to canonical with an empty buffer: no line end is made up.
	if e := unix.IoctlSetTermios(fd, unix.TCSETS, tio); e != nil && err == nil {
		err = fmt.Errorf("TCSETS: %w", e)
	}
	return q, err
}

// fillTermios is the termios to put input back under: nothing converted
// (ISTRIP, IUCLC, INLCR, IGNCR, ICRNL, PARMRK), echoed or signalled, the
// flow control characters disabled (IXON itself stays: clearing it would
// restart a stopped tty); in canonical mode IEXTEN for VLNEXT, which
// queues the next byte as it is, VEOF and VEOL/VEOL2 to end lines, and
// the editing characters disabled. It returns the VLNEXT and VEOF bytes.
func fillTermios(tio *unix.Termios) (fill unix.Termios, lnext, eof byte) {
	fill = *tio
	fill.Iflag &^= unix.ISTRIP | unix.IUCLC | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.PARMRK | unix.IXANY
	fill.Lflag &^= unix.ECHO | unix.ECHONL | unix.ISIG
	fill.Cc[unix.VSTART], fill.Cc[unix.VSTOP] = 0, 0
	if !ttyCanonical(tio) {
		return fill, 0, 0
	}
	fill.Lflag |= unix.IEXTEN
	for _, c := range []int{unix.VERASE, unix.VKILL, unix.VWERASE, unix.VREPRINT, unix.VINTR, unix.VQUIT, unix.VSUSP} {
		fill.Cc[c] = 0 // 0 is _POSIX_VDISABLE: never special
	}
	if tio.Lflag&unix.IEXTEN == 0 {
		fill.Cc[unix.VEOL2] = 0 // not a line end for this termios
	}
	taken := map[byte]bool{0: true, '\n': true, fill.Cc[unix.VEOL]: true, fill.Cc[unix.VEOL2]: true}
	pick := func(want byte) byte {
		for c := want; ; c++ {
			if !taken[c] {
				taken[c] = true
				return c
			}
		}
	}
	lnext, eof = pick(0x16), pick(0x04) // ^V and ^D when free
	fill.Cc[unix.VLNEXT], fill.Cc[unix.VEOF] = lnext, eof
	return fill, lnext, eof
}

// lineEnd is the delimiter of a line read in canonical mode under tio, or
// false when the line ended with VEOF (which read(2) drops).
func lineEnd(tio *unix.Termios, l []byte) (byte, bool) {
	if len(l) == 0 {
		return 0, false
	}
	c := l[len(l)-1]
	switch {
	case c == '\n', c != 0 && c == tio.Cc[unix.VEOL]:
		return c, true
	case c != 0 && c == tio.Cc[unix.VEOL2] && tio.Lflag&unix.IEXTEN != 0:
		return c, true
	}
	return 0, false
}

// TtyInputSlots is how much of the line discipline's buffer q takes under
// tio: a line ended by VEOF keeps a hidden end byte.
func TtyInputSlots(tio *unix.Termios, q TtyInput) int {
	n := q.Len()
	if ttyCanonical(tio) {
		for _, l := range q.Lines {
			if _, ok := lineEnd(tio, l); !ok {
				n++
			}
		}
	}
	return n
}

// PutTtyInput puts q into the input queue of the tty that f reads, as a
// reader will get it, under the tty's termios as it is now (which it
// leaves as it was). Lines keep their boundaries: each byte goes in after
// VLNEXT, each line end as itself (or VEOF for a line read without one).
func PutTtyInput(f *os.File, q TtyInput) error {
	if q.Len() == 0 && len(q.Lines) == 0 {
		return nil
	}
	fd := int(f.Fd())
	tio, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return fmt.Errorf("TCGETS: %w", err)
	}
	if n := TtyInputSlots(tio, q); n >= TtyBufSize {
		return fmt.Errorf("%d bytes of input: %w (%d)", n, ErrTtyFull, TtyBufSize-1)
	}
	if err := CanTiocsti(fd); err != nil {
		return err
	}
	fill, lnext, eof := fillTermios(tio)
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &fill); err != nil {
		return fmt.Errorf("TCSETS: %w", err)
	}
	err = putInput(fd, tio, q, lnext, eof)
	if e := unix.IoctlSetTermios(fd, unix.TCSETS, tio); e != nil && err == nil {
		err = fmt.Errorf("TCSETS: %w", e)
	}
	return err
}

func putInput(fd int, tio *unix.Termios, q TtyInput, lnext, eof byte) error {
	if !ttyCanonical(tio) {
		for _, l := range append(q.Lines, q.Rest) {
			for _, c := range l {
				if err := tiocsti(fd, c); err != nil {
					return err
				}
			}
		}
		return nil
	}
	literal := func(b []byte) error {
		for _, c := range b {
			if err := tiocsti(fd, lnext); err != nil {
				return err
			}
			if err := tiocsti(fd, c); err != nil {
				return err
			}
		}
		return nil
	}
	for _, l := range q.Lines {
		end, ok := lineEnd(tio, l)
		if ok {
			l = l[:len(l)-1]
		} else {
			end = eof
		}
		if err := literal(l); err != nil {
			return err
		}
		if err := tiocsti(fd, end); err != nil {
			return err
		}
	}
	return literal(q.Rest)
}

// TakePtyOutput reads out what the slave of pty master m wrote and the
// master has not read. The master's own termios is always raw (TCSETS on a
// master sets the slave's), so the bytes are as the master would read them.
func TakePtyOutput(m *os.File) ([]byte, error) {
	back, err := nonblocking(m)
	if err != nil {
		return nil, err
	}
	defer back()
	var out []byte
	err = readTty(int(m.Fd()), false, func(b []byte) { out = append(out, b...) })
	return out, err
}

// PutPtyOutput puts b back into the queue the master of a pty reads.
func PutPtyOutput(m *os.File, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if len(b) >= TtyBufSize {
		return fmt.Errorf("%d bytes of output: %w (%d)", len(b), ErrTtyFull, TtyBufSize-1)
	}
	fd := int(m.Fd())
	if err := CanTiocsti(fd); err != nil {
		return err
	}
	for _, c := range b {
		if err := tiocsti(fd, c); err != nil {
			return err
		}
	}
	return nil
}

// TtyDev is the device of the terminal f refers to (TIOCGDEV, encoded as
// stat's st_rdev): for /dev/tty, the controlling terminal it was opened on.
func TtyDev(f *os.File) (uint64, error) {
	n, err := unix.IoctlGetUint32(int(f.Fd()), unix.TIOCGDEV)
	if err != nil {
		return 0, fmt.Errorf("TIOCGDEV: %w", err)
	}
	return uint64(n), nil
}
