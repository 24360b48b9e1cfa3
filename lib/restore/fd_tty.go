package restore

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// Pseudo-terminals. The coordinator opens /dev/ptmx until it gets a pty
// with the dumped index (the kernel hands out the lowest free index, so the
// ones below are held open meanwhile and closed after), gives the pair its
// termios, window size, packet mode and lock, puts its unread data back
// (lib/sys/tty.go), and opens each slave description with TIOCGPTPEER. A session leader gets its controlling
// terminal from inside (TIOCSCTTY, then TIOCSPGRP for the foreground group).

func init() {
	registerFdKind(pb.FdKind_FD_TTY, openTty)
	registerProcessState(cttyCalls)
}

// maxPtyTries bounds the ptmx opens looking for one index.
const maxPtyTries = 4096

type ptyObj struct {
	master     *os.File
	masterUsed bool
	configured bool // has its dumped state (a session leader's is created before its state is known: earlyCtty)
}

func (p *ptyObj) closeShared() { p.master.Close() }

func ptyKey(index uint32) string { return fmt.Sprintf("pty:%d", index) }

func openTty(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	d, err := fileDesc(rc, t, fd)
	if err != nil {
		return nil, err
	}
	where := fmt.Sprintf("pid %d fd %d", t.pid, fd.Fd)
	ts := d.Tty
	if ts == nil {
		return nil, fmt.Errorf("%s: terminal description without its state", where)
	}
	if ts.External {
		return openCallerTerminal(where, d)
	}
	p, ok := rc.Shared[ptyKey(ts.Index)].(*ptyObj)
	if !ok {
		if p, err = allocPty(ts.Index); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		rc.Shared[ptyKey(ts.Index)] = p
	}
	if !p.configured {
		if err := p.configure(ts); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
	}
	// The pair's unread data comes with one of its descriptions.
	if err := p.fill(ts); err != nil {
		return nil, fmt.Errorf("%s: /dev/pts/%d: unread data: %w", where, ts.Index, err)
	}
	var f *os.File
	if ts.Master {
		if p.masterUsed {
			return nil, fmt.Errorf("%s: a second open file description of the master of /dev/pts/%d cannot be made", where, ts.Index)
		}
		p.masterUsed = true
		f, err = sys.Dup(p.master)
	} else {
		m := int(p.master.Fd())
		if ts.Locked {
			unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0)
		}
		f, err = sys.PtyPeer(m, int(d.Flags)&^(unix.O_NONBLOCK|creationFlags)|unix.O_NOCTTY|unix.O_CLOEXEC)
		if ts.Locked {
			unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 1)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: /dev/pts/%d: %w", where, ts.Index, err)
	}
	if err := setStatusFlags(f, d.Flags); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return f, nil
}

// allocPty creates the pty with the dumped index, unlocked.
func allocPty(index uint32) (*ptyObj, error) {
	var below []*os.File
	defer func() {
		for _, f := range below {
			f.Close()
		}
	}()
	var m *os.File
	for tries := 0; m == nil; tries++ {
		n, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open /dev/ptmx: %w", err)
		}
		f := os.NewFile(uintptr(n), "ptmx")
		idx, err := unix.IoctlGetUint32(n, unix.TIOCGPTN)
		switch {
		case err != nil:
			f.Close()
			return nil, fmt.Errorf("TIOCGPTN: %w", err)
		case idx == index:
			m = f
		case idx > index || tries > maxPtyTries:
			f.Close()
			return nil, fmt.Errorf("/dev/pts/%d is in use (got /dev/pts/%d)", index, idx)
		default:
			below = append(below, f)
		}
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		return nil, fmt.Errorf("/dev/pts/%d: unlock: %w", index, err)
	}
	return &ptyObj{master: m}, nil
}

// configure gives the pair its dumped termios, window size, packet mode
// and lock.
func (p *ptyObj) configure(ts *pb.TtyState) error {
	fail := func(what string, err error) error {
		return fmt.Errorf("/dev/pts/%d: %s: %w", ts.Index, what, err)
	}
	mfd := int(p.master.Fd())
	slave, err := sys.PtyPeer(mfd, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
	if err != nil {
		return fail("open the slave", err)
	}
	defer slave.Close()
	tio := unix.Termios{Iflag: ts.Iflag, Oflag: ts.Oflag, Cflag: ts.Cflag, Lflag: ts.Lflag, Line: uint8(ts.Line), Ispeed: ts.Ispeed, Ospeed: ts.Ospeed}
	copy(tio.Cc[:], ts.Cc)
	if err := unix.IoctlSetTermios(int(slave.Fd()), unix.TCSETS, &tio); err != nil {
		return fail("termios", err)
	}
	ws := unix.Winsize{Row: uint16(ts.Rows), Col: uint16(ts.Cols), Xpixel: uint16(ts.Xpixel), Ypixel: uint16(ts.Ypixel)}
	if err := unix.IoctlSetWinsize(int(slave.Fd()), unix.TIOCSWINSZ, &ws); err != nil {
		return fail("window size", err)
	}
	if ts.Packet {
		if err := unix.IoctlSetPointerInt(mfd, unix.TIOCPKT, 1); err != nil {
			return fail("packet mode", err)
		}
	}
	if ts.Locked {
		if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 1); err != nil {
			return fail("lock", err)
		}
	}
	p.configured = true
	return nil
}

// fill puts the pair's unread input and output back into its queues
// (sys.PutTtyInput: as the reader will get them, not processed again).
func (p *ptyObj) fill(ts *pb.TtyState) error {
	in := sys.TtyInput{Lines: ts.InputLines, Rest: ts.Input}
	if in.Len() > 0 || len(in.Lines) > 0 {
		m := int(p.master.Fd())
		if ts.Locked {
			unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0)
		}
		s, err := sys.PtyPeer(m, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
		if ts.Locked {
			unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 1)
		}
		if err != nil {
			return err
		}
		err = sys.PutTtyInput(s, in)
		s.Close()
		if err != nil {
			return fmt.Errorf("input: %w", err)
		}
	}
	if err := sys.PutPtyOutput(p.master, ts.Output); err != nil {
		return fmt.Errorf("output: %w", err)
	}
	return nil
}

// cttyCalls make a session leader's pty slave its controlling terminal
// again, with its foreground process group.
func cttyCalls(rc *Ctx, t *task, s *scratchWriter) ([]call, error) {
	if c, ok := rc.Shared[cttyKey(t.proc.Pid)].(earlyTty); ok && !c.p.configured {
		return nil, fmt.Errorf("pid %d: its controlling terminal /dev/pts/%d is open in no process of the dump", t.proc.Pid, t.proc.CttyPty-1)
	}
	var calls []call
	for _, fd := range t.files.Fds {
		if pb.FdKind(fd.Kind) != pb.FdKind_FD_TTY {
			continue
		}
		d, err := fileDesc(rc, t, fd)
		if err != nil {
			return nil, err
		}
		ts := d.Tty
		if ts == nil || ts.Master || ts.External || ts.Session != t.proc.Pid {
			continue
		}
		calls = append(calls, sc(fmt.Sprintf("controlling terminal /dev/pts/%d", ts.Index), unix.SYS_IOCTL, uint64(fd.Fd), unix.TIOCSCTTY, 0))
		if ts.FgPgrp != 0 {
			pg := make([]byte, 4)
			binary.LittleEndian.PutUint32(pg, ts.FgPgrp)
			calls = append(calls, sc(fmt.Sprintf("foreground group %d of /dev/pts/%d", ts.FgPgrp, ts.Index), unix.SYS_IOCTL, uint64(fd.Fd), unix.TIOCSPGRP, s.put(pg)))
		}
		break
	}
	return calls, nil
}

func cttyKey(pid uint32) string { return fmt.Sprintf("ctty:%d", pid) }

// earlyTty is the pty a session leader got as its controlling terminal
// when it was created (earlyCtty); rc.Shared closes it under its ptyKey.
type earlyTty struct{ p *ptyObj }

// earlyCtty gives a session leader, right after its setsid and before its
// children exist, the pty that was its controlling terminal. A fork passes
// the controlling terminal on, and a process that does not lead a session
// can never get one later: set at the end (cttyCalls) it would reach the
// leader alone. The pty is made here with its dumped index; its state
// comes with its file descriptions (openTty), and cttyCalls refuses a
// controlling terminal that no fd of the dump held. (Process.ctty_pty is
// set only when the pty's master is in the dump: a shell job's terminal is
// cr-restore's own, openCallerTerminal.)
func (rc *Ctx) earlyCtty(t *task) error {
	if t.proc.CttyPty == 0 || t.zombie() {
		return nil
	}
	index := t.proc.CttyPty - 1
	key := ptyKey(index)
	p, ok := rc.Shared[key].(*ptyObj)
	if !ok {
		var err error
		if p, err = allocPty(index); err != nil {
			return fmt.Errorf("pid %d: controlling terminal: %w", t.proc.Pid, err)
		}
		rc.Shared[key] = p
	}
	slave, err := sys.PtyPeer(int(p.master.Fd()), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
	if err != nil {
		return fmt.Errorf("pid %d: controlling terminal /dev/pts/%d: %w", t.proc.Pid, index, err)
	}
	defer slave.Close()
	n, err := t.r.sendFds([]*os.File{slave})
	if err != nil {
		return err
	}
	if _, err := t.r.run(sc(fmt.Sprintf("controlling terminal /dev/pts/%d", index), unix.SYS_IOCTL, uint64(n[0]), unix.TIOCSCTTY, 0),
		sc("close", unix.SYS_CLOSE, uint64(n[0]))); err != nil {
		return err
	}
	rc.Shared[cttyKey(t.proc.Pid)] = earlyTty{p}
	return nil
}

// openCallerTerminal opens, for a shell job's terminal (cr-files
// --shell-job), a new description of cr-restore's own terminal: the first
// of its stdin, stdout and stderr that is one. The restored tree joins
// cr-restore's process group, which the shell runs in the foreground.
func openCallerTerminal(where string, d *pb.FileDesc) (*os.File, error) {
	for fd := 0; fd <= 2; fd++ {
		if _, err := unix.IoctlGetTermios(fd, unix.TCGETS); err != nil {
			continue
		}
		n, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), int(d.Flags)&^(unix.O_NONBLOCK|creationFlags)|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("%s: open the terminal of cr-restore: %w", where, err)
		}
		f := os.NewFile(uintptr(n), "tty")
		if err := setStatusFlags(f, d.Flags); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		return f, nil
	}
	return nil, stage.Hint(fmt.Errorf("%s: the image holds a shell job's terminal (/dev/pts/%d), and cr-restore runs on none", where, d.Tty.Index),
		"run cr-restore from the terminal the job should come back to")
}
