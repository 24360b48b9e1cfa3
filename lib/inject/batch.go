package inject

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/stage"
	"crpipe/lib/sys"
	"crpipe/pie"
)

// Call is one system call of a batch. With Out > 0 it gets an output
// buffer of Out bytes, whose address replaces Args[OutArg]; after the
// batch, Ret is the raw return value (a negative errno on failure) and
// Result the Out bytes as the kernel left them (zeros before the call).
type Call struct {
	Nr     uintptr
	Args   [6]uint64
	Out    int
	OutArg int
	Ret    int64
	Result []byte
}

// RunEach runs calls one at a time, each a round trip through the
// syscall-enter stop and a stop on the way out, with their output buffers in
// scratch below the stack. It is the fallback where a Stub cannot be
// mapped. A failed call is recorded in its Ret; only a failure of the
// injection itself is an error.
func (s *Session) RunEach(calls []Call) error {
	size := 8
	for i := range calls {
		size = max(size, calls[i].Out)
	}
	scratch, err := s.Scratch(size)
	if err != nil {
		return err
	}
	zero := make([]byte, size)
	for i := range calls {
		c := &calls[i]
		a := c.Args
		if c.Out > 0 {
			if err := s.WriteMem(scratch, zero[:c.Out]); err != nil {
				return err
			}
			a[c.OutArg] = scratch
		}
		if c.Ret, err = s.Syscall(c.Nr, a[:]...); err != nil {
			return err
		}
		if c.Out > 0 {
			c.Result = make([]byte, c.Out)
			if err := s.ReadMem(scratch, c.Result); err != nil {
				return err
			}
		}
	}
	return nil
}

// A Stub runs a whole batch of system calls in one resume of the task,
// instead of two ptrace stops per call: ~0.1 ms each, 12-15 ms for the
// ~70 calls cr-parasite makes in a process (doc/performance.md).
//
// MapStub injects an mmap of one code page and data pages after it,
// read and execute only; the first batch's first call makes the data
// pages read-write (so the task never has a writable executable
// mapping, which MDWE or an LSM may refuse); the code is written
// through /proc/PID/mem, whose writes are forced. Run writes a table of
// calls into the data pages, points the thread at the code and lets it
// run with every signal still blocked; the code makes each call, stores
// each result in the table, sets a done word and parks in pause(2). The
// tracer polls the done word, interrupts the pause (a PTRACE_EVENT_STOP
// inside get_signal, where End can restore the registers and the
// syscall-restart logic as for Syscall) and reads the table back. Unmap
// injects the munmap.
//
// Why not end with int3 or another trap: a trap's SIGTRAP is forced on the
// task, and forcing a blocked signal resets its disposition to SIG_DFL
// (force_sig_info_to_task), which the task would see; ending with a signal
// it sends itself could merge with a signal someone else sends. A done
// word and pause involve no signal at all.
//
// Every thread of the process can run batches through the one Stub: the
// mapping is per process, and threads are run one after the other.
type Stub struct {
	tid  int // the thread that mapped it
	base uint64
	size uint64 // code, data and the recovery records (recover.go)
	// The data pages are writable: the first batch made them so.
	writable bool
}

// stubCode is the batch runner. On entry rbx points at the first table
// entry, r12 just past the last and r13 at the done word. An entry is
// eight words: nr, six arguments, and the return value the code stores.
// r14 points at an entry that must succeed (the first batch's mprotect
// of the data pages, which the stores need): if it fails, the code stores
// nothing, puts its negative errno in the done word and parks (0: none).
// The kernel preserves rbx, r12, r13 and r14 across syscall (it clobbers
// only rax, rcx and r11). Position independent, no stack, no memory but
// the table and the done word.
var stubCode = []byte{
	0x4c, 0x39, 0xe3, // loop: cmp rbx, r12
	0x73, 0x37, //         jae done
	0x48, 0x8b, 0x03, //   mov rax, [rbx]       ; nr
	0x48, 0x8b, 0x7b, 0x08, // mov rdi, [rbx+8]
	0x48, 0x8b, 0x73, 0x10, // mov rsi, [rbx+16]
	0x48, 0x8b, 0x53, 0x18, // mov rdx, [rbx+24]
	0x4c, 0x8b, 0x53, 0x20, // mov r10, [rbx+32]
	0x4c, 0x8b, 0x43, 0x28, // mov r8, [rbx+40]
	0x4c, 0x8b, 0x4b, 0x30, // mov r9, [rbx+48]
	0x0f, 0x05, //         syscall
	0x4c, 0x39, 0xf3, //   cmp rbx, r14         ; the entry that must succeed?
	0x75, 0x05, //         jne store
	0x48, 0x85, 0xc0, //   test rax, rax
	0x78, 0x0a, //         js fail
	0x48, 0x89, 0x43, 0x38, // store: mov [rbx+56], rax ; the result
	0x48, 0x83, 0xc3, 0x40, // add rbx, 64       ; next entry
	0xeb, 0xca, //         jmp loop
	0x49, 0x89, 0x45, 0x00, // fail: mov [r13], rax ; its errno
	0xeb, 0x08, //         jmp park
	0x49, 0xc7, 0x45, 0x00, 0x01, 0x00, 0x00, 0x00, // done: mov qword [r13], 1
	0xb8, 0x22, 0x00, 0x00, 0x00, // park: mov eax, 34 (pause)
	0x0f, 0x05, //         syscall
	0xeb, 0xf7, //         jmp park
}

const (
	stubCodeSize = 4096
	stubDataSize = 60 << 10 // a batch that does not fit runs in pieces
	stubSize     = stubCodeSize + stubDataSize
	entrySize    = 64
	stubSyscall  = 32 // offset of the batch loop's syscall instruction in stubCode
)

// ErrNoStub is wrapped when the process refuses the stub's mapping (an
// errno from mmap or mprotect): the caller can fall back to RunEach.
var ErrNoStub = errors.New("the process cannot map the batch stub")

// StubTimeout bounds one batch: the calls are quick and never block.
var StubTimeout = 10 * time.Second

// faultDumpDiesMapping: CRPIPE_FAULT=dump-dies-while-mapping-stub makes
// the tracer kill cr-dump (its parent, or its own process when the stages
// run in cr-dump's) right after the stub's mmap, the one injected call no
// recovery record covers yet (fault injection for the test of cr-dump's
// death).
var faultDumpDiesMapping = os.Getenv("CRPIPE_FAULT") == "dump-dies-while-mapping-stub"

// MapStub maps a Stub into the process of s's thread, with a recovery
// record for each of sessions, the sessions on its threads (recover.go).
// On failure nothing is left mapped.
//
// The mapping is not writable at first: the code and the records are
// written as a debugger writes, and the first batch makes the data pages
// writable, as its first call. An mprotect injected alone would be one
// more call during which a killed tracer leaves the thread to run on with
// borrowed registers (holdOwn covers only the stops between calls), and a
// batch of its own one more round trip. A process that refuses it fails
// that first Run with ErrNoStub: the caller runs its calls one at a time
// then (RunEach), and unmaps the stub.
func MapStub(s *Session, sessions []*Session) (*Stub, error) {
	size := uint64(stubSize) + recordsSize(len(sessions))
	ret, err := s.Syscall(unix.SYS_MMAP, 0, size, unix.PROT_READ|unix.PROT_EXEC,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		return nil, err
	}
	if err := Errno(ret); err != nil {
		return nil, fmt.Errorf("tid %d: mmap: %w: %w", s.tid, err, ErrNoStub)
	}
	st := &Stub{tid: s.tid, base: uint64(ret), size: size}
	if faultDieMapped {
		os.Exit(70) // as if killed: a stub with nothing in it yet
	}
	if faultDumpDiesMapping {
		// The stub has no records yet, and every signal of the thread is
		// blocked.
		dump := os.Getppid()
		if stage.InDump() {
			dump = os.Getpid()
		}
		unix.Kill(dump, unix.SIGKILL)
		time.Sleep(200 * time.Millisecond) // for the parent-death signal
	}
	err = forceWrite(s.tid, st.base, codePage())
	if err == nil {
		err = forceWrite(s.tid, st.base+stubSize, records(sessions))
	}
	if err != nil {
		if uerr := st.Unmap(s); uerr != nil {
			err = errors.Join(err, uerr)
		}
		return nil, err
	}
	return st, nil
}

// write writes b at addr of the stub's mapping: through /proc/PID/mem
// (forceWrite) until its first batch has made the data writable.
func (st *Stub) write(s *Session, addr uint64, b []byte) error {
	if !st.writable {
		return forceWrite(s.tid, addr, b)
	}
	return WriteMem(s.tid, addr, b)
}

// forceWrite writes b at addr of tid's memory through /proc/PID/mem,
// whose writes are forced, as a debugger writes: into memory the task
// itself may not write.
func forceWrite(tid int, addr uint64, b []byte) error {
	f, err := sys.Open(fmt.Sprintf("/proc/%d/mem", tid), unix.O_RDWR)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(b, int64(addr)); err != nil {
		return fmt.Errorf("tid %d: write %d bytes of the batch stub at %#x: %w", tid, len(b), addr, err)
	}
	return nil
}

// codePage is what the stub's code page holds: the batch runner, and the
// page lender (lend.go) at lendCodeOffset.
func codePage() []byte {
	b := make([]byte, lendCodeOffset+len(pie.Lend()))
	copy(b, stubCode)
	copy(b[lendCodeOffset:], pie.Lend())
	return b
}

// Mapping is the stub's mapping [base, base+size), and a page of it that
// nothing has written or read yet: the first of its data area, until the
// first Run.
func (st *Stub) Mapping() (base, size, untouched uint64) {
	return st.base, st.size, st.base + stubCodeSize
}

// Unmap removes the stub from its process, through s, a session on any
// thread of it (left at an event stop, whatever a failed Run did).
func (st *Stub) Unmap(s *Session) error {
	if err := s.toEventStop(); err != nil {
		return err
	}
	ret, err := s.Syscall(unix.SYS_MUNMAP, st.base, st.size)
	if err != nil {
		return err
	}
	if err := Errno(ret); err != nil {
		return fmt.Errorf("tid %d: munmap of the batch stub at %#x: %w", s.tid, st.base, err)
	}
	if faultDieUnmapped {
		os.Exit(70) // as if killed: no stub, no record in the process
	}
	return nil
}

// faultDieMapped: CRPIPE_FAULT=parasite-dies-after-mmap makes a tracer
// exit as if killed right after the stub's mmap (fault injection for the
// test of dropEmptyStub).
var faultDieMapped = os.Getenv("CRPIPE_FAULT") == "parasite-dies-after-mmap"

// faultDieUnmapped: CRPIPE_FAULT=parasite-dies-after-unmap makes a tracer
// exit as if killed right after the stub's munmap, its sessions not ended:
// every thread with all signals blocked, one just back from the munmap
// (fault injection for the test of KeepMasks and holdOwn).
var faultDieUnmapped = os.Getenv("CRPIPE_FAULT") == "parasite-dies-after-unmap"

// Run runs calls in s's thread (of the stub's process) through the stub,
// in pieces that fit its data pages. A failed call is recorded in its Ret;
// only a failure of the injection itself is an error, after which the
// thread is left for End to bring back. The stub's first Run makes its
// data pages writable (MapStub), or fails with ErrNoStub.
func (st *Stub) Run(s *Session, calls []Call) error {
	if !st.writable {
		unlock := Call{Nr: unix.SYS_MPROTECT, Args: [6]uint64{st.base + stubCodeSize, st.size - stubCodeSize, unix.PROT_READ | unix.PROT_WRITE}}
		all := append([]Call{unlock}, calls...)
		n, size, err := fit(all)
		if err != nil {
			return err
		}
		if err := st.run(s, all[:n], size); err != nil {
			return err
		}
		st.writable = true
		copy(calls, all[1:n])
		calls = calls[n-1:]
	}
	for len(calls) > 0 {
		n, size, err := fit(calls)
		if err != nil {
			return err
		}
		if err := st.run(s, calls[:n], size); err != nil {
			return err
		}
		calls = calls[n:]
	}
	return nil
}

// fit is how many of calls fit the stub's data pages, and the bytes their
// table and output buffers take.
func fit(calls []Call) (n, size int, err error) {
	size = 8
	for n < len(calls) && size+entrySize+outSize(calls[n]) <= stubDataSize {
		size += entrySize + outSize(calls[n])
		n++
	}
	if n == 0 {
		return 0, 0, fmt.Errorf("inject: a call with %d bytes of output does not fit the stub", calls[0].Out)
	}
	return n, size, nil
}

// outSize is the room a call's output buffer takes in the stub's data:
// Out bytes, 8-byte aligned.
func outSize(c Call) int { return (c.Out + 7) &^ 7 }

// run runs calls whose table and output buffers take size bytes. Until
// the data pages are writable, the first of calls makes them so, and
// must succeed.
func (st *Stub) run(s *Session, calls []Call, size int) error {
	if s.ended {
		return errors.New("inject: session already ended")
	}
	if s.state != atEventStop {
		return fmt.Errorf("inject: tid %d is not at a stop where the stub can start", s.tid)
	}
	// The data: the done word, the table, the output buffers.
	data := st.base + stubCodeSize
	table := data + 8
	le := binary.LittleEndian
	buf := make([]byte, size)
	out := 8 + entrySize*len(calls)
	outAt := make([]int, len(calls))
	for i := range calls {
		c := &calls[i]
		e := buf[8+entrySize*i:]
		a := c.Args
		if c.Out > 0 {
			outAt[i] = out
			a[c.OutArg] = data + uint64(out)
			out += outSize(*c)
		}
		le.PutUint64(e, uint64(c.Nr))
		for j, v := range a {
			le.PutUint64(e[8+8*j:], v)
		}
	}
	doneAt, mustSucceed := data, uint64(0)
	if !st.writable {
		// The table is read only until its first call has run; the
		// done word, written whatever that call does, lies in scratch.
		mustSucceed = table
		var err error
		if doneAt, err = s.Scratch(8); err != nil {
			return err
		}
		if err := WriteMem(s.tid, doneAt, make([]byte, 8)); err != nil {
			return err
		}
	}
	if err := st.write(s, data, buf); err != nil {
		return err
	}
	r := s.regs
	r.Rip = st.base
	r.Rbx = table
	r.R12 = table + uint64(entrySize*len(calls))
	r.R13 = doneAt
	r.R14 = mustSucceed
	r.Orig_rax = ^uint64(0) // no syscall restart on the way out (see Syscall)
	if err := sys.PtraceSetRegs(s.tid, &r); err != nil {
		return err
	}
	if err := sys.PtraceCont(s.tid, 0); err != nil {
		s.state = elsewhere
		return err
	}
	s.state = running
	done, err := s.awaitDone(doneAt)
	if err != nil {
		return err
	}
	if faultDieInStub {
		os.Exit(70) // as if killed: the kernel detaches every task where it is
	}
	if err := s.toEventStop(); err != nil {
		return err
	}
	if err := s.holdOwn(); err != nil {
		return err
	}
	if done != 1 {
		return fmt.Errorf("tid %d: mprotect of the stub's data pages: %w: %w", s.tid, Errno(done), ErrNoStub)
	}
	if err := ReadMem(s.tid, data, buf); err != nil {
		return err
	}
	for i := range calls {
		c := &calls[i]
		c.Ret = int64(le.Uint64(buf[8+entrySize*i+56:]))
		if c.Out > 0 {
			c.Result = append([]byte(nil), buf[outAt[i]:outAt[i]+c.Out]...)
		}
	}
	return nil
}

// awaitDone polls the done word of a running stub until it is set: 1,
// or the negative errno of an entry that had to succeed. The task is
// watched meanwhile: an exit or a stop the stub did not lead to ends the
// wait.
func (s *Session) awaitDone(done uint64) (int64, error) {
	deadline := time.Now().Add(StubTimeout)
	var w [8]byte
	for i := 0; ; i++ {
		if err := ReadMem(s.tid, done, w[:]); err != nil {
			return 0, err
		}
		if v := int64(binary.LittleEndian.Uint64(w[:])); v != 0 {
			return v, nil
		}
		st, ok, err := sys.PtracePoll(s.tid)
		if err != nil {
			return 0, err
		}
		if ok {
			return 0, s.stopped(st)
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("tid %d: the batch stub did not finish within %v", s.tid, StubTimeout)
		}
		// The stub needs tens of microseconds once the task has a CPU.
		sys.Backoff(i)
	}
}
