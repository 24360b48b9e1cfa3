package inject

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"crpipe/lib/sys"
)

// A single injected call (Syscall) runs on borrowed registers: a tracer
// killed while it is under way lets the thread go on from there, and no
// kernel mechanism hands it back. When the thread sits in a syscall of
// its own that the kernel will restart (read, futex, nanosleep, ...: an
// idle program's threads), the call runs frozen instead, in three steps:
//
//  1. With its own registers, the thread is resumed to the syscall-enter
//     stop of its own syscall's restart: it runs nothing of its own, and a
//     tracer killed now lets it restart that syscall, as End would.
//  2. The cgroup is frozen (synchronous: every task of it is marked to
//     trap before it next returns to user space), and the enter stop's
//     syscall is swapped for the injected call, its unused fifth
//     argument a nonce. A tracer killed from here on leaves the thread
//     trapped by the freezer right after the call, never in its own code
//     with the call's result: the thaw finds it by the record below (its
//     own registers and the nonce, an xattr on the cgroup) and gives it
//     its own registers back before it thaws the cgroup (PutBackCalls).
//  3. At the call's syscall-exit stop the thread gets its own registers
//     back and stops in get_signal, as after any injected call; the
//     cgroup is thawed.
//
// Threads that are in no restartable syscall (running their own code)
// keep the vDSO route, and its hole (doc/failures.md).

// Freezer freezes one cgroup for the length of the frozen calls under way
// in it: the tracer threads of a stage share it, and the cgroup thaws
// when the last of their calls is done. The cgroup must be thawed
// otherwise, as any injection needs.
type Freezer struct {
	dir  string
	mu   sync.Mutex
	held int
	fd   int // cgroup.freeze, open while held
}

var freezers sync.Map // cgroup dir → *Freezer

// FreezeCallsIn makes the session's single calls run frozen (above) in
// cgroup, the process's cgroup, thawed while the caller injects.
func (s *Session) FreezeCallsIn(cgroup string) {
	f, _ := freezers.LoadOrStore(cgroup, &Freezer{dir: cgroup})
	s.freezer = f.(*Freezer)
}

// hold freezes the cgroup unless a call holds it frozen already. The
// file is opened with open(2) itself: os.OpenFile's poller registration
// made the two writes of a call cost ~45 µs more.
func (f *Freezer) hold() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.held == 0 {
		fd, err := unix.Open(filepath.Join(f.dir, "cgroup.freeze"), unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			if _, err = unix.Write(fd, []byte("1")); err != nil {
				unix.Close(fd)
			}
		}
		if err != nil {
			return fmt.Errorf("freeze %s for an injected call: %w", f.dir, err)
		}
		f.fd = fd
	}
	f.held++
	return nil
}

// release thaws the cgroup when the last call that holds it is done.
func (f *Freezer) release() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.held--; f.held > 0 {
		return nil
	}
	_, err := unix.Write(f.fd, []byte("0"))
	unix.Close(f.fd)
	if err != nil {
		return fmt.Errorf("thaw %s after an injected call: %w", f.dir, err)
	}
	return nil
}

// Restart codes of an interrupted syscall (include/linux/errno.h).
const (
	errRestartSys     = -512
	errRestartNoIntr  = -513
	errRestartNoHand  = -514
	errRestartBlock   = -516 // restarted as restart_syscall
	sysRestartSyscall = 219
)

const (
	callXattr       = "user.crpipe.call." // + tid
	callRecordWords = 10
)

// frozenRoute says whether nr with n arguments a can run frozen in s's
// thread: the thread can carry frozen calls, and the call leaves r8, the
// nonce's place, unused (at most four arguments, or an anonymous mmap,
// whose fd the kernel ignores).
func (s *Session) frozenRoute(nr uintptr, n int, a [6]uint64) bool {
	if n > 4 && !(nr == unix.SYS_MMAP && a[3]&unix.MAP_ANONYMOUS != 0) {
		return false
	}
	return s.carriesFrozen()
}

// carriesFrozen says whether the thread's own registers are those of a
// 64-bit syscall the kernel restarts, in a cgroup to freeze.
func (s *Session) carriesFrozen() bool {
	if s.freezer == nil || s.groupStop {
		return false
	}
	if s.ownInsn == 0 { // not looked at yet
		s.ownInsn = -1
		if restarts(s.tid, &s.regs) {
			s.ownInsn = 1
		}
	}
	return s.ownInsn == 1
}

// restarts says whether r, the registers of tid at an event stop, are
// those of a 64-bit syscall the kernel restarts on the thread's resume:
// a restart code in rax, and the `syscall` instruction before rip (not
// int 0x80, whose numbers are the 32-bit ones).
func restarts(tid int, r *unix.PtraceRegs) bool {
	if int64(r.Orig_rax) < 0 {
		return false
	}
	switch int64(r.Rax) {
	case errRestartSys, errRestartNoIntr, errRestartNoHand, errRestartBlock:
	default:
		return false
	}
	var b [2]byte
	return ReadMem(tid, r.Rip-2, b[:]) == nil && b == [2]byte{0x0f, 0x05}
}

// Restarts says whether tid, which the calling OS thread holds at an
// event stop, sits in a syscall the kernel restarts: a thread that can
// carry frozen calls once a session begins on it.
func Restarts(tid int) bool {
	r, err := sys.PtraceGetRegs(tid)
	return err == nil && restarts(tid, &r)
}

// Carrier is the session to inject a process's single calls through:
// preferred, or else the first of sessions whose calls can run frozen.
func Carrier(sessions []*Session, preferred *Session) *Session {
	if preferred.carriesFrozen() {
		return preferred
	}
	for _, s := range sessions {
		if s.carriesFrozen() {
			return s
		}
	}
	return preferred
}

// frozenSyscall runs nr in the thread frozen (above).
func (s *Session) frozenSyscall(nr uintptr, a [6]uint64) (ret int64, err error) {
	if err := s.keepCall(); err != nil {
		return 0, err
	}
	if err := s.step(atSyscallEnter); err != nil {
		return 0, fmt.Errorf("inject syscall %d: to the restart of its own syscall: %w", nr, err)
	}
	own := int64(s.regs.Orig_rax)
	if int64(s.regs.Rax) == errRestartBlock {
		own = sysRestartSyscall
	}
	got, err := sys.PtraceGetRegs(s.tid)
	if err != nil {
		return 0, err
	}
	if int64(got.Orig_rax) != own || got.Rip != s.regs.Rip {
		s.state = elsewhere
		return 0, fmt.Errorf("inject syscall %d: tid %d entered syscall %d at %#x, not its own %d at %#x: %w",
			nr, s.tid, int64(got.Orig_rax), got.Rip-2, own, s.regs.Rip-2, ErrUnexpectedStop)
	}
	if err := s.freezer.hold(); err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			// Its own registers before the thaw, whatever stop it is at;
			// if that fails too, the cgroup stays frozen for the thaw to
			// put them back (PutBackCalls).
			if perr := errors.Join(s.toEventStop(), s.holdOwn()); perr != nil {
				err = errors.Join(err, perr, fmt.Errorf("tid %d may hold the call's registers: its cgroup %s is left frozen", s.tid, s.freezer.dir))
				return
			}
		}
		err = errors.Join(err, s.freezer.release())
	}()
	r := got
	r.Orig_rax = uint64(nr)
	r.Rdi, r.Rsi, r.Rdx, r.R10, r.R8, r.R9 = a[0], a[1], a[2], a[3], s.nonce, a[5]
	if err := sys.PtraceSetRegs(s.tid, &r); err != nil {
		return 0, err
	}
	if faultDieFrozen {
		os.Exit(70) // as if killed: the swapped call runs, the freezer holds the thread
	}
	if frozenSwapped != nil {
		frozenSwapped()
	}
	if err := s.step(atSyscallExit); err != nil {
		return 0, fmt.Errorf("inject syscall %d: %w", nr, err)
	}
	if got, err = sys.PtraceGetRegs(s.tid); err != nil {
		return 0, err
	}
	if got.Orig_rax != uint64(nr) || got.Rip != s.regs.Rip {
		s.state = elsewhere
		return 0, fmt.Errorf("inject syscall %d: tid %d left syscall %d at %#x: %w", nr, s.tid, int64(got.Orig_rax), got.Rip-2, ErrUnexpectedStop)
	}
	// Its own registers at the exit stop: the restart logic, on the way
	// out past the interrupt's stop, sees its own interrupted syscall.
	if err := sys.PtraceSetRegs(s.tid, &s.regs); err != nil {
		return 0, err
	}
	if err := sys.PtraceInterrupt(s.tid); err != nil {
		s.state = elsewhere
		return 0, err
	}
	if err := s.step(atEventStop); err != nil {
		return 0, fmt.Errorf("inject syscall %d: %w", nr, err)
	}
	return int64(got.Rax), s.holdOwn()
}

func callName(tid int) string { return callXattr + strconv.Itoa(tid) }

// keepCall records the thread's own registers on the cgroup, for the
// thaw, before its first frozen call: the nonce, rip, then rax, orig_rax
// and the six argument registers.
func (s *Session) keepCall() error {
	if s.callKept {
		return nil
	}
	s.nonce = rand.Uint64() | 1
	le := binary.LittleEndian
	b := make([]byte, 0, callRecordWords*8)
	for _, w := range []uint64{s.nonce, s.regs.Rip, s.regs.Rax, s.regs.Orig_rax,
		s.regs.Rdi, s.regs.Rsi, s.regs.Rdx, s.regs.R10, s.regs.R8, s.regs.R9} {
		b = le.AppendUint64(b, w)
	}
	if err := unix.Setxattr(s.freezer.dir, callName(s.tid), b, 0); err != nil {
		return fmt.Errorf("tid %d: record its registers on %s: %w", s.tid, s.freezer.dir, err)
	}
	s.callKept = true
	return nil
}

// dropCall removes the session's record, once the thread has its own
// registers for good (End).
func (s *Session) dropCall() error {
	if !s.callKept {
		return nil
	}
	if err := removeRecord(s.freezer.dir, callName(s.tid)); err != nil {
		return fmt.Errorf("tid %d: %w", s.tid, err)
	}
	s.callKept = false
	return nil
}

// PutBackCalls gives each thread that a dead tracer left frozen right
// after a frozen call (its rip its own, its fifth argument register the
// nonce of its record on cgroup) its own registers back, and removes the
// records. The cgroup must still be frozen. It returns the tids put back.
func PutBackCalls(cgroup string) (fixed []int, err error) {
	names, err := recordNames(cgroup, callXattr)
	if err != nil {
		return nil, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var errs []error
	for _, name := range names {
		tid, _ := strconv.Atoi(strings.TrimPrefix(name, callXattr))
		put, err := false, error(nil)
		if tid > 0 {
			put, err = putBackCall(cgroup, name, tid)
		}
		if put {
			fixed = append(fixed, tid)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("tid %d: %w", tid, err))
		}
		errs = append(errs, removeRecord(cgroup, name))
	}
	return fixed, errors.Join(errs...)
}

func putBackCall(cgroup, name string, tid int) (bool, error) {
	b := make([]byte, callRecordWords*8)
	n, err := unix.Getxattr(cgroup, name, b)
	if err != nil {
		return false, fmt.Errorf("read %s on %s: %w", name, cgroup, err)
	}
	if n != len(b) {
		return false, fmt.Errorf("malformed %s on %s (%d bytes)", name, cgroup, n)
	}
	var w [callRecordWords]uint64
	for i := range w {
		w[i] = binary.LittleEndian.Uint64(b[i*8:])
	}
	if seizeStopped(tid, 0) != nil {
		return false, nil // gone, or held by a tracer alive
	}
	defer sys.PtraceDetach(tid, 0)
	r, err := sys.PtraceGetRegs(tid)
	if err != nil || r.Rip != w[1] || r.R8 != w[0] {
		return false, err // its own registers: the call did not run, or ran its course
	}
	r.Rax, r.Orig_rax, r.Rdi, r.Rsi, r.Rdx, r.R10, r.R8, r.R9 = w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9]
	return true, sys.PtraceSetRegs(tid, &r)
}

// faultDieFrozen: CRPIPE_FAULT=inject-dies-in-frozen-call makes a tracer
// exit as if killed right after it swapped a thread's own syscall for a
// frozen call (fault injection for the test of PutBackCalls).
var faultDieFrozen = os.Getenv("CRPIPE_FAULT") == "inject-dies-in-frozen-call"

// frozenSwapped, set by a test, runs where faultDieFrozen exits.
var frozenSwapped func()

// ForgetCalls removes every record of a frozen call from cgroup.
func ForgetCalls(cgroup string) error {
	names, err := recordNames(cgroup, callXattr)
	for _, name := range names {
		err = errors.Join(err, removeRecord(cgroup, name))
	}
	return err
}
