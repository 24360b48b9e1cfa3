package inject

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/cpu"
	"golang.org/x/sys/unix"

	"crpipe/lib/arch"
	"crpipe/lib/internal/crc32c"
	"crpipe/lib/sys"
)

// A Lender sends a stopped process's own pages to the dumper without a
// copy: code run in one of its threads (pie/src/lend.c, kept in the Stub's
// code page) checksums runs of its memory, leaves out pages of zeros, and
// puts the pages themselves into a pipe with vmsplice(2). The dumper reads
// each frame's descriptor (Next) and passes the frame on from Pipe with
// splice, so the bytes are never copied in user space, and read once, by
// the checksum. process_vm_readv, by contrast, copies every byte and the
// dumper then reads the copy again for the checksum.
//
// The pipe refers to the process's pages, not to copies: whoever reads the
// image from a pipe downstream sees the memory as it is then. So lending is
// only for a dump after which the process is killed, or stays frozen until
// the image is read (cr-pages --lend), and only for private anonymous
// memory, which nothing outside the process can write.
//
// The memory the lender needs (its control block, the runs, the frame
// ring and a stack) is a mapping of its own, and the pipe two fds of the
// process; both are recorded with the stub's recovery records, so that a
// dumper that dies while lending leaves nothing behind either (RecoverStub).
type Lender struct {
	st       *Stub
	s        *Session
	base     uint64 // the lender's mapping
	size     uint64
	fdW, fdR int      // the pipe's ends in the process
	Pipe     *os.File // the read end, in this process
	// The thread's xsave area before the lender first folded on it: put
	// back after every run (Lending.Finish).
	xstate []byte
}

// The lender's mapping: control block, runs, frame ring, the thread's
// vector registers as they were (xsaveHead, then the xsave area: for
// RecoverStub), stack.
const (
	lendCodeOffset = 1024 // of the lender's code in the stub's code page
	lendCtlSize    = 256
	lendRunSize    = 24
	lendFrameSize  = 40
	lendRing       = 512 // frames; the pipe (at most 256 pages) bounds how far the code runs ahead
	lendStack      = 16 << 10
	// MaxLendRuns is how many runs one Lend takes.
	MaxLendRuns = 4096
	lendXsaveAt = lendCtlSize + MaxLendRuns*lendRunSize + lendRing*lendFrameSize
	xsaveHead   = 16 // the thread's tid and the area's length (0: not saved)
	lendSize    = (lendXsaveAt + xsaveHead + arch.XsaveBufSize + lendStack + 4095) &^ 4095
	lendPipe    = 1 << 20
)

// ErrNoLender is wrapped when the process refuses what the lender needs
// (an errno from its mmap or pipe2: an address-space or open-files limit):
// the caller can copy the pages instead.
var ErrNoLender = errors.New("the process cannot take the page lender")

// The fields of the lender's control block, struct lend_ctl of
// pie/src/lend.c: byte offsets of its 64-bit words.
const (
	ctlDone     = 0
	ctlFd       = 8
	ctlRuns     = 16
	ctlNRuns    = 24
	ctlRing     = 32
	ctlRingSize = 40
	ctlMaxFrame = 48
	ctlProduced = 56
	ctlZeros    = 64
	ctlErr      = 72
	ctlPipeSize = 80
	ctlFoldOK   = 88
	ctlFold     = 96 // 14 words
)

// LendUsable says whether this machine can run the lender (its checksum
// uses SSE 4.2's crc32).
func LendUsable() bool { return cpu.X86.HasSSE42 }

// LendRun is a run of whole pages to send; with Zero, pages of zeros are
// left out.
type LendRun struct {
	Addr, Len uint64
	Zero      bool
}

// LendFrame is one frame the lender put into the pipe: Len bytes from
// Addr, whose CRC-32C is that of [0,Split), [Split,2·Split) and
// [2·Split,Len) combined.
type LendFrame struct {
	Addr, Len, Split uint64
	Sums             [3]uint32
}

// faultDieLenderSetUp: CRPIPE_FAULT=pages-dies-after-lender-setup makes
// the dumper exit as if killed right after the batch that maps the
// lender's memory and makes its pipe.
var faultDieLenderSetUp = os.Getenv("CRPIPE_FAULT") == "pages-dies-after-lender-setup"

// NewLender maps the lender's memory and makes its pipe in the process of
// s's thread (at an event stop), through st.
//
// The batch that does so leaves its trace in the stub before it runs: a
// record of a lender being set up (no address yet), into which pipe2
// writes the fds itself, so that a dumper that dies right after the batch
// leaves the thaw all it needs (the mapping's address is then the mmap's
// result in the batch's table: RecoverStub).
func (st *Stub) NewLender(s *Session, pid int) (l *Lender, err error) {
	record := st.base + stubSize + lendRecordAt
	calls := []Call{
		{Nr: unix.SYS_MMAP, Args: [6]uint64{0, lendSize, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS, ^uint64(0), 0}},
		{Nr: unix.SYS_PIPE2, Args: [6]uint64{record + lendFdsAt, unix.O_CLOEXEC}},
	}
	pending := &Lender{fdR: -1, fdW: -1}
	if err := st.write(s, record, pending.record()); err != nil {
		return nil, err
	}
	if err := st.Run(s, calls); err != nil {
		return nil, err
	}
	if faultDieLenderSetUp {
		os.Exit(70) // as if killed: the kernel detaches every task where it is
	}
	l = &Lender{st: st, s: s, fdR: -1, fdW: -1}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
			l = nil
		}
	}()
	if Errno(calls[0].Ret) == nil {
		l.base, l.size = uint64(calls[0].Ret), lendSize
	}
	if Errno(calls[1].Ret) == nil {
		var fds [8]byte
		if err := ReadMem(s.tid, record+lendFdsAt, fds[:]); err != nil {
			// Close needs the fds: read them where the batch put them.
			return l, err
		}
		l.fdR, l.fdW = lendFds(fds[:])
	}
	if err := WriteMem(s.tid, record, l.record()); err != nil {
		return l, err
	}
	if err := Errno(calls[0].Ret); err != nil {
		return l, fmt.Errorf("pid %d: mmap for the page lender: %w: %w", pid, err, ErrNoLender)
	}
	if err := Errno(calls[1].Ret); err != nil {
		return l, fmt.Errorf("pid %d: pipe2 for the page lender: %w: %w", pid, err, ErrNoLender)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return l, fmt.Errorf("pid %d: pidfd_open: %w", pid, err)
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, l.fdR, 0)
	if err != nil {
		return l, fmt.Errorf("pid %d: pidfd_getfd of the lender's pipe: %w", pid, err)
	}
	l.Pipe = os.NewFile(uintptr(fd), fmt.Sprintf("pid %d's page pipe", pid))
	return l, nil
}

// record is what RecoverStub needs to undo the lender: its mapping
// (address 0: none, or being set up) and the pipe's fds, as pipe2 writes
// them (-1: none). The size says there is a record.
func (l *Lender) record() []byte {
	b := make([]byte, lendRecordSize)
	le := binary.LittleEndian
	le.PutUint64(b, l.base)
	le.PutUint64(b[8:], lendSize)
	le.PutUint32(b[lendFdsAt:], uint32(int32(l.fdR)))
	le.PutUint32(b[lendFdsAt+4:], uint32(int32(l.fdW)))
	return b
}

// lendFds are the fds (read end, write end) of a lender's record.
func lendFds(b []byte) (int, int) {
	le := binary.LittleEndian
	return int(int32(le.Uint32(b))), int(int32(le.Uint32(b[4:])))
}

// Close closes the pipe and unmaps the lender's memory, through the
// stub's thread (at an event stop; Lending.Finish leaves it there).
func (l *Lender) Close() error {
	var errs []error
	if l.Pipe != nil {
		l.Pipe.Close()
		l.Pipe = nil
	}
	var calls []Call
	for _, fd := range []int{l.fdR, l.fdW} {
		if fd >= 0 {
			calls = append(calls, Call{Nr: unix.SYS_CLOSE, Args: [6]uint64{uint64(fd)}})
		}
	}
	if l.size != 0 {
		calls = append(calls, Call{Nr: unix.SYS_MUNMAP, Args: [6]uint64{l.base, l.size}})
	}
	if len(calls) == 0 {
		return nil
	}
	if err := l.s.toEventStop(); err != nil {
		return err
	}
	if err := l.st.Run(l.s, calls); err != nil {
		return err
	}
	for _, c := range calls {
		if err := Errno(c.Ret); err != nil {
			errs = append(errs, fmt.Errorf("tid %d: undoing the page lender (syscall %d): %w", l.s.tid, c.Nr, err))
		}
	}
	l.fdR, l.fdW, l.size = -1, -1, 0
	if err := WriteMem(l.s.tid, l.st.base+stubSize+lendRecordAt, make([]byte, lendRecordSize)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Lending is one run of the lender, started by Lend.
type Lending struct {
	l        *Lender
	read     uint64 // frames taken by Next
	produced uint64
	done     bool
	zeros    uint64
	stop     *sys.Stop        // an unexpected stop Next met, for Finish
	ctl      [ctlErr + 8]byte // the words Next reads
	frame    [lendFrameSize]byte
}

// Lend starts the lender on runs (at most MaxLendRuns), cutting frames of
// at most maxFrame bytes. The caller takes the frames with Next, moves
// each one's bytes out of Pipe, and ends with Finish. Lend and Finish are
// ptrace requests: they must come from the thread that seized the task;
// Next may come from any thread.
func (l *Lender) Lend(runs []LendRun, maxFrame uint64) (*Lending, error) {
	s := l.s
	if len(runs) > MaxLendRuns {
		return nil, fmt.Errorf("inject: %d runs to lend, at most %d", len(runs), MaxLendRuns)
	}
	if maxFrame == 0 || maxFrame%4096 != 0 {
		return nil, fmt.Errorf("inject: frames of %d bytes", maxFrame)
	}
	if s.state != atEventStop {
		return nil, fmt.Errorf("inject: tid %d is not at a stop where the lender can start", s.tid)
	}
	le := binary.LittleEndian
	ctl := l.base
	runsAt := ctl + lendCtlSize
	ring := runsAt + MaxLendRuns*lendRunSize
	b := make([]byte, lendCtlSize+len(runs)*lendRunSize)
	le.PutUint64(b[ctlFd:], uint64(l.fdW))
	le.PutUint64(b[ctlRuns:], runsAt)
	le.PutUint64(b[ctlNRuns:], uint64(len(runs)))
	le.PutUint64(b[ctlRing:], ring)
	le.PutUint64(b[ctlRingSize:], lendRing)
	le.PutUint64(b[ctlMaxFrame:], maxFrame)
	// Fewer, larger moves (the lender asks; a process under a smaller
	// pipe-max-size keeps the default).
	le.PutUint64(b[ctlPipeSize:], lendPipe)
	if k, ok := crc32c.FoldConstants(); ok && !lendNoFold {
		if err := l.saveXstate(); err != nil {
			return nil, err
		}
		le.PutUint64(b[ctlFoldOK:], 1)
		for i, c := range k {
			le.PutUint64(b[ctlFold+8*i:], c)
		}
	}
	for i, r := range runs {
		e := b[lendCtlSize+i*lendRunSize:]
		le.PutUint64(e, r.Addr)
		le.PutUint64(e[8:], r.Len)
		if r.Zero {
			le.PutUint64(e[16:], 1)
		}
	}
	if err := WriteMem(s.tid, ctl, b); err != nil {
		return nil, err
	}
	r := s.regs
	r.Rip = l.st.base + lendCodeOffset
	r.Rdi = ctl
	r.Rsp = l.base + l.size // the top of the lender's stack, 16-byte aligned
	r.Eflags &^= 1 << 10    // DF clear, as compiled C code assumes
	r.Orig_rax = ^uint64(0)
	if err := sys.PtraceSetRegs(s.tid, &r); err != nil {
		return nil, err
	}
	if err := sys.PtraceCont(s.tid, 0); err != nil {
		s.state = elsewhere
		return nil, err
	}
	s.state = running
	return &Lending{l: l}, nil
}

// lendNoFold: CRPIPE_LEND_FOLD=0 has the lender checksum with the crc32
// instruction alone, as where the CPU cannot fold (for comparisons).
var lendNoFold = os.Getenv("CRPIPE_LEND_FOLD") == "0"

// saveXstate keeps the thread's xsave area, which the lender's fold
// overwrites in part (its vector registers), here and in the lender's
// mapping, where RecoverStub finds it if this tracer dies.
func (l *Lender) saveXstate() error {
	if l.xstate != nil {
		return nil
	}
	rec := make([]byte, xsaveHead+arch.XsaveBufSize)
	xs, err := sys.PtraceGetXstate(l.s.tid, rec[xsaveHead:])
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(rec, uint64(l.s.tid))
	binary.LittleEndian.PutUint64(rec[8:], uint64(len(xs)))
	if err := WriteMem(l.s.tid, l.base+lendXsaveAt, rec[:xsaveHead+len(xs)]); err != nil {
		return err
	}
	l.xstate = xs
	return nil
}

// Next waits for the next frame; false when the lender is done.
func (g *Lending) Next() (LendFrame, bool, error) {
	le := binary.LittleEndian
	s := g.l.s
	for i := 0; ; i++ {
		if g.read < g.produced {
			ring := g.l.base + lendCtlSize + MaxLendRuns*lendRunSize
			at := ring + (g.read%lendRing)*lendFrameSize
			if err := ReadMem(s.tid, at, g.frame[:]); err != nil {
				return LendFrame{}, false, err
			}
			g.read++
			f := LendFrame{Addr: le.Uint64(g.frame[:]), Len: le.Uint64(g.frame[8:]), Split: le.Uint64(g.frame[16:])}
			for k := range f.Sums {
				f.Sums[k] = le.Uint32(g.frame[24+4*k:])
			}
			return f, true, nil
		}
		if g.done {
			return LendFrame{}, false, nil
		}
		if err := ReadMem(s.tid, g.l.base, g.ctl[:]); err != nil {
			return LendFrame{}, false, err
		}
		g.produced = le.Uint64(g.ctl[ctlProduced:])
		g.zeros = le.Uint64(g.ctl[ctlZeros:])
		if g.produced-g.read > lendRing {
			return LendFrame{}, false, fmt.Errorf("tid %d: the page lender ran %d frames ahead of its ring", s.tid, g.produced-g.read)
		}
		if g.read < g.produced {
			continue
		}
		if le.Uint64(g.ctl[ctlDone:]) == 1 {
			g.done = true
			if e := int64(le.Uint64(g.ctl[ctlErr:])); e != 0 {
				return LendFrame{}, false, fmt.Errorf("tid %d: the page lender's vmsplice: %w", s.tid, Errno(e))
			}
			continue
		}
		if st, ok, err := sys.PtracePoll(s.tid); err != nil || ok {
			if ok {
				g.stop = &st
				err = fmt.Errorf("tid %d: %v while lending pages: %w", s.tid, st, ErrUnexpectedStop)
			}
			return LendFrame{}, false, err
		}
		// The next frame's bytes follow its descriptor into the pipe;
		// the first calls spin, as a frame's checksum takes well under
		// a millisecond.
		if i > 16 {
			fds := []unix.PollFd{{Fd: int32(g.l.Pipe.Fd()), Events: unix.POLLIN}}
			unix.Poll(fds, 1)
		}
	}
}

// Zeros is how many pages of zeros the lender left out so far.
func (g *Lending) Zeros() uint64 { return g.zeros }

// Finish brings the lender's thread back to an event stop: parked in
// pause(2) after the last frame, or, when the caller gives up early,
// wherever it is (a vmsplice waiting for room in the pipe included).
func (g *Lending) Finish() error {
	s := g.l.s
	if g.stop != nil {
		if err := s.stopped(*g.stop); s.state == gone {
			return err
		}
	}
	if err := s.toEventStop(); err != nil {
		return err
	}
	if g.l.xstate != nil {
		return sys.PtraceSetRegset(s.tid, sys.NT_X86_XSTATE, g.l.xstate)
	}
	return nil
}
