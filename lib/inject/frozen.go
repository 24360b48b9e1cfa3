package inject

import (
	"bytes"
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
// kernel mechanism hands it back. A session told its cgroup runs its
// single calls frozen instead: a tracer killed from the moment the call
// is set up at a syscall-enter stop to the moment the thread has its own
// registers back leaves the thread trapped by the freezer, never in user
// space, and the thaw puts its registers back before it thaws the cgroup
// (PutBackCalls), by a record of them on the cgroup and a nonce the call
// carries in r8, an argument register it leaves unused.
//
// The enter stop is reached one of two ways, with the cgroup thawed (a
// frozen thread cannot leave get_signal):
//
//   - A thread asleep in a syscall the kernel restarts (read, futex,
//     nanosleep, ...: an idle program's threads) is resumed with its own
//     registers to the enter stop of that syscall's restart. It runs
//     none of its own code on the way, and a tracer killed then lets it
//     restart the syscall, as End would. Then the cgroup is frozen and
//     the enter stop's syscall is swapped for the call. Nothing borrowed
//     is ever in the thread while the cgroup is thawed.
//   - A thread running its own code goes to the vDSO's syscall
//     instruction on borrowed registers, as before, and the cgroup is
//     frozen at the enter stop: the moment a tracer killed lets it run
//     on borrowed registers shrinks from the whole call and two round
//     trips to the way to that stop.
//
// From the enter stop the call runs and the thread stops in get_signal
// (the interrupt), where it gets its own registers back; then the cgroup
// is thawed.

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
	callRecordWords = 2 + 27              // nonce, rip after the call, user_regs_struct
)

// frozenRoute says whether nr with n arguments a can run frozen in s's
// thread: the session knows its cgroup, the process is not in a group
// stop, and the call leaves r8, the nonce's place, unused (at most four
// arguments, or an anonymous mmap, whose fd the kernel ignores).
func (s *Session) frozenRoute(nr uintptr, n int, a [6]uint64) bool {
	if s.freezer == nil || s.groupStop {
		return false
	}
	return n <= 4 || nr == unix.SYS_MMAP && a[3]&unix.MAP_ANONYMOUS != 0
}

// carriesFrozen says whether the thread's own registers are those of a
// 64-bit syscall the kernel restarts, in a cgroup to freeze: its calls
// then never borrow registers while the cgroup is thawed.
func (s *Session) carriesFrozen() bool {
	if s.freezer == nil || s.groupStop {
		return false
	}
	if s.restartable == 0 { // not looked at yet
		s.restartable = -1
		if restarts(s.tid, &s.regs) {
			s.restartable = 1
		}
	}
	return s.restartable == 1
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
// carry frozen calls without borrowing registers.
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
	r, restart := s.regs, s.carriesFrozen()
	if restart { // the restart of its own syscall
		if err := s.keepCall(s.regs.Rip); err != nil {
			return 0, err
		}
		if err := s.step(atSyscallEnter); err != nil {
			return 0, fmt.Errorf("inject syscall %d: to the restart of its own syscall: %w", nr, err)
		}
		own := int64(s.regs.Orig_rax)
		if int64(s.regs.Rax) == errRestartBlock {
			own = sysRestartSyscall
		}
		if r, err = sys.PtraceGetRegs(s.tid); err != nil {
			return 0, err
		}
		if int64(r.Orig_rax) != own || r.Rip != s.regs.Rip {
			s.state = elsewhere
			return 0, fmt.Errorf("inject syscall %d: tid %d entered syscall %d at %#x, not its own %d at %#x: %w",
				nr, s.tid, int64(r.Orig_rax), r.Rip-2, own, s.regs.Rip-2, ErrUnexpectedStop)
		}
	} else if err := s.keepCall(s.insn + 2); err != nil {
		return 0, err
	}
	// The call, its nonce in r8: swapped in at the enter stop reached,
	// or on borrowed registers at the vDSO's instruction.
	r.Orig_rax = uint64(nr)
	a[4] = s.nonce
	r.Rdi, r.Rsi, r.Rdx, r.R10, r.R8, r.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
	if !restart {
		if err := s.enterAtInsn(nr, a); err != nil {
			return 0, err
		}
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
				err = errors.Join(err, perr, fmt.Errorf("tid %d may hold the call's registers: its cgroup %s is left frozen for `cr-freeze thaw`, which puts them back", s.tid, s.freezer.dir))
				return
			}
		}
		err = errors.Join(err, s.freezer.release())
	}()
	if restart {
		if err := sys.PtraceSetRegs(s.tid, &r); err != nil {
			return 0, err
		}
	}
	if faultDieFrozen {
		os.Exit(70) // as if killed: the call runs, the freezer holds the thread
	}
	if frozenSwapped != nil {
		frozenSwapped()
	}
	return s.runFromEnter(nr)
}

func callName(tid int) string { return callXattr + strconv.Itoa(tid) }

// keepCall records the thread's own registers on the cgroup, for the
// thaw, before its first frozen call: the nonce, where rip stands once
// the call has run (after), and the registers.
func (s *Session) keepCall(after uint64) error {
	if s.callKept == after {
		return nil
	}
	if s.nonce == 0 {
		s.nonce = rand.Uint64() | 1
	}
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, [2]uint64{s.nonce, after})
	binary.Write(&b, binary.LittleEndian, &s.regs)
	if err := unix.Setxattr(s.freezer.dir, callName(s.tid), b.Bytes(), 0); err != nil {
		return fmt.Errorf("tid %d: record its registers on %s: %w", s.tid, s.freezer.dir, err)
	}
	s.callKept = after
	return nil
}

// dropCall removes the session's record, once the thread has its own
// registers for good (End).
func (s *Session) dropCall() error {
	if s.callKept == 0 {
		return nil
	}
	if err := removeRecord(s.freezer.dir, callName(s.tid)); err != nil {
		return fmt.Errorf("tid %d: %w", s.tid, err)
	}
	s.callKept = 0
	return nil
}

// PutBackCalls gives each thread that a dead tracer left frozen right
// after a frozen call (its rip where the call leaves it, its fifth
// argument register the nonce of its record on cgroup) its own registers
// back, and removes the
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
		if tid, _ := strconv.Atoi(strings.TrimPrefix(name, callXattr)); tid > 0 {
			put, err := putBackCall(cgroup, name, tid)
			if put {
				fixed = append(fixed, tid)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("tid %d: %w", tid, err))
			}
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
	var head [2]uint64 // nonce, rip after the call
	var own unix.PtraceRegs
	rd := bytes.NewReader(b)
	binary.Read(rd, binary.LittleEndian, &head)
	binary.Read(rd, binary.LittleEndian, &own)
	if seizeStopped(tid, 0) != nil {
		return false, nil // gone, or held by a tracer alive
	}
	defer sys.PtraceDetach(tid, 0)
	r, err := sys.PtraceGetRegs(tid)
	if err != nil || r.Rip != head[1] || r.R8 != head[0] {
		return false, err // its own registers: the call did not run, or ran its course
	}
	return true, sys.PtraceSetRegs(tid, &own)
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
