package inject

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"crpipe/lib/arch"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// Recovery from a tracer that dies in the middle (killed, or a crash):
// the kernel detaches its tasks where they are. A thread running a batch
// is left parked in the stub's pause(2) with the stub's registers, for
// good; every thread with a session is left with all signals blocked.
// So MapStub writes, after the stub's data, a record per session of what
// End would put back (registers, signal mask, rseq_cs), and
// RecoverStub, which thaw runs on every process it thaws, finds a stub
// left behind and puts its threads back from the records, then unmaps it.
// Between batches and single calls a thread holds its own registers
// (holdOwn), and its mask is also kept on the frozen cgroup (masks.go),
// which also tells the thaw to look for a stub mapped but not yet
// written to (dropEmptyStub). A page lender's mapping and pipe are in
// the records from the moment its set-up batch runs (NewLender). Not
// covered: a death while one of the two single calls around the stub is
// under way, its mmap or its munmap (the thread comes back from the
// vDSO's syscall instruction with borrowed registers).

const (
	recordMagic = 0x31545350_45504952 // "RIPEPST1": the records of a stub
	recordSize  = 256                 // tid, mask, rseq_cs address and value, 27 registers, 1 word spare
	maxRecords  = 1 << 16             // bounds what a recovery believes of a record count

	recoverStopTimeout = 10 * time.Second
)

// faultDieInStub: CRPIPE_FAULT=parasite-dies-in-stub makes a tracer exit
// as if killed once a thread parks in the stub (fault injection for the
// recovery's test).
var faultDieInStub = os.Getenv("CRPIPE_FAULT") == "parasite-dies-in-stub"

// recordsHead: the magic, the number of records, and the page lender's
// mapping (address, size) and pipe fds (read, write: two int32, as pipe2
// writes them) while one is there (zeros otherwise; lend.go).
const (
	recordsHead    = 48
	lendRecordAt   = 16 // after the magic and the count
	lendRecordSize = recordsHead - lendRecordAt
	lendFdsAt      = 16 // in the lender's record
)

func recordsSize(n int) uint64 { return (recordsHead + uint64(n)*recordSize + 4095) &^ 4095 }

// records lays out the recovery records of sessions.
func records(sessions []*Session) []byte {
	le := binary.LittleEndian
	b := make([]byte, recordsHead+len(sessions)*recordSize)
	le.PutUint64(b, recordMagic)
	le.PutUint64(b[8:], uint64(len(sessions)))
	for i, s := range sessions {
		r := b[recordsHead+i*recordSize:]
		le.PutUint64(r, uint64(s.tid))
		le.PutUint64(r[8:], s.mask)
		le.PutUint64(r[16:], s.rseqCsAddr)
		le.PutUint64(r[24:], s.rseqCs)
		copy(r[32:32+unsafe.Sizeof(s.regs)], unsafe.Slice((*byte)(unsafe.Pointer(&s.regs)), unsafe.Sizeof(s.regs)))
	}
	return b
}

type record struct {
	tid                      int
	mask, rseqCsAddr, rseqCs uint64
	regs                     unix.PtraceRegs
}

// findStub looks for a stub left in pid: a page of anonymous r-x memory
// holding stubCode, followed by its data and the magic of its records.
func findStub(pid int) (base uint64, recs []record, lent lenderLeft, err error) {
	maps, err := proc.ReadMaps(pid)
	if err != nil {
		return 0, nil, lent, err
	}
	code := make([]byte, len(stubCode))
	for i, m := range maps {
		if m.Path != "" || !m.Read || !m.Exec || m.Write {
			continue
		}
		// The stub's extent: its code page and the writable data after
		// it, or one r-x mapping before its first batch made the data
		// writable (setup).
		end := m.End
		if m.End-m.Start == stubCodeSize && i+1 < len(maps) {
			if data := maps[i+1]; data.Start == m.End && data.Path == "" && data.Write {
				end = data.End
			}
		}
		if end-m.Start < stubSize+recordsHead {
			continue
		}
		if ReadMem(pid, m.Start, code) != nil || !bytes.Equal(code, stubCode) {
			continue
		}
		var head [recordsHead]byte
		le := binary.LittleEndian
		if ReadMem(pid, m.Start+stubSize, head[:]) != nil || le.Uint64(head[:]) != recordMagic {
			continue
		}
		n := le.Uint64(head[8:])
		if n > maxRecords || m.Start+stubSize+recordsHead+n*recordSize > end {
			return 0, nil, lent, fmt.Errorf("pid %d: stub at %#x: %d recovery records do not fit its mapping", pid, m.Start, n)
		}
		lr := head[lendRecordAt:]
		lent = lenderLeft{base: le.Uint64(lr), size: le.Uint64(lr[8:])}
		lent.fds[0], lent.fds[1] = lendFds(lr[lendFdsAt:])
		if lent.size != 0 && lent.base == 0 {
			// Being set up (or its mmap failed): the mapping is the
			// result of the batch's mmap, if any.
			lent.base = lenderMapped(pid, m.Start, lent.size)
		}
		b := make([]byte, n*recordSize)
		if err := ReadMem(pid, m.Start+stubSize+recordsHead, b); err != nil {
			return 0, nil, lent, err
		}
		for k := range int(n) {
			r := b[k*recordSize:]
			rec := record{tid: int(binary.LittleEndian.Uint64(r)), mask: binary.LittleEndian.Uint64(r[8:]),
				rseqCsAddr: binary.LittleEndian.Uint64(r[16:]), rseqCs: binary.LittleEndian.Uint64(r[24:])}
			copy(unsafe.Slice((*byte)(unsafe.Pointer(&rec.regs)), unsafe.Sizeof(rec.regs)), r[32:])
			recs = append(recs, rec)
		}
		return m.Start, recs, lent, nil
	}
	return 0, nil, lent, nil
}

// lenderLeft is a page lender's mapping and pipe fds, as recorded (size 0:
// none; base 0: no mapping).
type lenderLeft struct {
	base, size uint64
	fds        [2]int
}

// lenderMapped is the address the stub at base mapped a lender's memory of
// size bytes at, as its table says (NewLender's batch): 0 if that mmap has
// not run, or failed.
func lenderMapped(pid int, base, size uint64) uint64 {
	const look = 4 // entries: the batch is the stub's first (mprotect, mmap, pipe2)
	b := make([]byte, look*entrySize)
	if ReadMem(pid, base+stubCodeSize+8, b) != nil {
		return 0
	}
	le := binary.LittleEndian
	for e := range look {
		c := b[e*entrySize:]
		ret := le.Uint64(c[56:])
		if le.Uint64(c) == unix.SYS_MMAP && le.Uint64(c[8:]) == 0 && le.Uint64(c[16:]) == size && ret != 0 && Errno(int64(ret)) == nil {
			return ret
		}
	}
	return 0
}

// allBlocked is a signal mask with every signal blocked, as the kernel
// keeps it (SIGKILL and SIGSTOP cannot be).
const allBlocked = ^uint64(0) &^ (1<<(unix.SIGKILL-1) | 1<<(unix.SIGSTOP-1))

// RecoverStub puts back the threads of pid that a dead tracer left with a
// stub, and unmaps the stub. It reports whether there was one. pid must
// not be frozen (the unmap runs in it), nor traced.
func RecoverStub(pid int) (bool, error) {
	base, recs, lent, err := findStub(pid)
	if err != nil || base == 0 {
		return false, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var sessions []*Session
	var errs []error
	defer func() {
		for _, s := range sessions {
			sys.PtraceDetach(s.tid, 0)
		}
	}()
	for _, rec := range recs {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d", pid, rec.tid)); err != nil {
			continue // the thread is gone
		}
		s, err := seizeForRecovery(rec.tid, base+stubSyscall)
		if err != nil {
			errs = append(errs, fmt.Errorf("pid %d tid %d: %w", pid, rec.tid, err))
			continue
		}
		sessions = append(sessions, s)
		if s.regs.Rip >= base && s.regs.Rip < base+stubCodeSize {
			// In the stub: everything back as End would have put it.
			s.regs, s.mask, s.rseqCsAddr, s.rseqCs = rec.regs, rec.mask, rec.rseqCsAddr, rec.rseqCs
		} else if s.mask == allBlocked {
			// Its own code, with the signals the session blocked.
			s.mask = rec.mask
		}
	}
	if len(sessions) > 0 && lent.size != 0 {
		// The lender's pipe and mapping go first, like its stub.
		for _, fd := range lent.fds {
			if fd >= 0 {
				sessions[0].Syscall(unix.SYS_CLOSE, uint64(fd))
			}
		}
	}
	if len(sessions) > 0 && lent.size != 0 && lent.base != 0 {
		if err := putXstateBack(pid, lent.base, sessions); err != nil {
			errs = append(errs, err)
		}
		ret, err := sessions[0].Syscall(unix.SYS_MUNMAP, lent.base, lent.size)
		if err == nil {
			err = Errno(ret)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("pid %d: munmap of the page lender left at %#x: %w", pid, lent.base, err))
		}
	}
	if len(sessions) > 0 {
		ret, err := sessions[0].Syscall(unix.SYS_MUNMAP, base, stubSize+recordsSize(len(recs)))
		if err == nil {
			err = Errno(ret)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("pid %d: munmap of the stub left at %#x: %w", pid, base, err))
		}
	}
	for _, s := range sessions {
		if err := s.End(nil); err != nil {
			errs = append(errs, fmt.Errorf("pid %d tid %d: %w", pid, s.tid, err))
		}
	}
	return true, errors.Join(errs...)
}

// putXstateBack gives the lender's thread back the vector registers its
// fold overwrote, from the copy in the lender's mapping at base (Lend's
// saveXstate; none if the lender never folded).
func putXstateBack(pid int, base uint64, sessions []*Session) error {
	var head [xsaveHead]byte
	if err := ReadMem(pid, base+lendXsaveAt, head[:]); err != nil {
		return err
	}
	tid, n := int(binary.LittleEndian.Uint64(head[:])), binary.LittleEndian.Uint64(head[8:])
	if tid == 0 {
		return nil
	}
	if n == 0 || n > arch.XsaveBufSize {
		return fmt.Errorf("pid %d: the page lender's copy of tid %d's xsave area says %d bytes", pid, tid, n)
	}
	for _, s := range sessions {
		if s.tid != tid {
			continue
		}
		buf := make([]byte, n)
		if err := ReadMem(pid, base+lendXsaveAt+xsaveHead, buf); err != nil {
			return err
		}
		if err := sys.PtraceSetRegset(tid, sys.NT_X86_XSTATE, buf); err != nil {
			return fmt.Errorf("pid %d: the vector registers of the page lender's thread: %w", pid, err)
		}
	}
	return nil
}

// seizeForRecovery seizes tid, stops it and begins a session on it,
// injecting at insn (the stub's own syscall instruction, for its unmap).
func seizeForRecovery(tid int, insn uint64) (*Session, error) {
	if err := seizeStopped(tid, unix.PTRACE_O_TRACESYSGOOD|unix.PTRACE_O_SUSPEND_SECCOMP); err != nil {
		return nil, err
	}
	s, err := Begin(tid, insn)
	if err != nil {
		sys.PtraceDetach(tid, 0)
		return nil, err
	}
	return s, nil
}

// seizeStopped seizes tid with opts and waits for its interrupt stop; on
// failure it is left untraced.
func seizeStopped(tid, opts int) error {
	if err := sys.PtraceSeizeStop(tid, opts); err != nil {
		return err
	}
	st, ok, err := sys.PtraceWaitSeized(tid, recoverStopTimeout)
	switch {
	case err != nil:
	case !ok:
		err = fmt.Errorf("no ptrace stop within %v", recoverStopTimeout)
	case !st.IsEventStop():
		err = fmt.Errorf("%v instead of an interrupt stop", st)
	}
	if err != nil {
		sys.PtraceDetach(tid, 0)
	}
	return err
}

// dropEmptyStub unmaps a stub that a tracer which died mapped into pid
// before it wrote the records findStub knows a stub by: an anonymous r-x
// mapping of the size MapStub gives sessions sessions, its code page
// empty or the stub's code. Only a process with a record of its masks
// (KeepMasks: a stage died while it injected) is looked at. It says
// whether there was one; tids are threads of pid, one of which runs
// the munmap.
func dropEmptyStub(pid, sessions int, tids []int) (bool, error) {
	maps, err := proc.ReadMaps(pid)
	if errors.Is(err, proc.ErrNoProcess) || errors.Is(err, os.ErrNotExist) {
		return false, nil // gone since
	}
	if err != nil {
		return false, err
	}
	size := stubSize + recordsSize(sessions)
	page := make([]byte, stubCodeSize)
	for _, m := range maps {
		if m.Path != "" || !m.Read || !m.Exec || m.Write || m.End-m.Start != size {
			continue
		}
		if ReadMem(pid, m.Start, page) != nil || !(bytes.Equal(page[:len(stubCode)], stubCode) || stage.AllZero(page)) {
			continue
		}
		insn, err := FindSyscallInsn(pid)
		if err != nil {
			return false, err
		}
		return true, unmapThrough(pid, tids, insn, m.Start, size)
	}
	return false, nil
}

// unmapThrough unmaps [addr, addr+size) in pid through a session on the
// first of tids that takes one.
func unmapThrough(pid int, tids []int, insn, addr, size uint64) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var errs []error
	for _, tid := range tids {
		s, err := seizeForRecovery(tid, insn)
		if err != nil {
			errs = append(errs, fmt.Errorf("tid %d: %w", tid, err))
			continue
		}
		ret, err := s.Syscall(unix.SYS_MUNMAP, addr, size)
		if err == nil {
			err = Errno(ret)
		}
		err = errors.Join(err, s.End(nil))
		sys.PtraceDetach(tid, 0)
		if err != nil {
			return fmt.Errorf("pid %d: munmap of the empty stub at %#x: %w", pid, addr, err)
		}
		return nil
	}
	return fmt.Errorf("pid %d: no thread to unmap the empty stub at %#x through: %w", pid, addr, errors.Join(errs...))
}
