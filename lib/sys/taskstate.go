package sys

// Per-task state beyond registers (issue 4): queued signals, seccomp
// filters, the robust futex list, and the byte layouts of the structs that
// restore lays out in a task's memory for the syscalls that set them.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SiginfoSize is sizeof(siginfo_t) on x86_64.
const SiginfoSize = 128

// peeksiginfoArgs is struct ptrace_peeksiginfo_args.
type peeksiginfoArgs struct {
	Off   uint64
	Flags uint32
	Nr    int32
}

// PtracePeekSiginfo returns the signals queued for a stopped tracee, in
// queue order, each as its 128-byte siginfo: the thread's own queue, or
// with shared the queue of its whole thread group (PTRACE_PEEKSIGINFO,
// Linux 3.10).
func PtracePeekSiginfo(tid int, shared bool) ([][]byte, error) {
	const batch = 32
	buf := make([]byte, batch*SiginfoSize)
	var out [][]byte
	a := peeksiginfoArgs{Nr: batch}
	if shared {
		a.Flags = unix.PTRACE_PEEKSIGINFO_SHARED
	}
	for {
		n, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_PEEKSIGINFO, uintptr(tid),
			uintptr(unsafe.Pointer(&a)), uintptr(unsafe.Pointer(&buf[0])), 0, 0)
		if e != 0 {
			return nil, fmt.Errorf("ptrace peeksiginfo %d: %w", tid, e)
		}
		if n == 0 {
			return out, nil
		}
		if n > batch {
			return nil, fmt.Errorf("ptrace peeksiginfo %d: %d entries for %d asked", tid, n, batch)
		}
		for i := 0; i < int(n); i++ {
			out = append(out, append([]byte(nil), buf[i*SiginfoSize:(i+1)*SiginfoSize]...))
		}
		a.Off += uint64(n)
		if len(out) > 1<<20 {
			return nil, fmt.Errorf("ptrace peeksiginfo %d: more than %d queued signals", tid, 1<<20)
		}
	}
}

// SiginfoSignoCode returns si_signo and si_code of a raw siginfo.
func SiginfoSignoCode(raw []byte) (signo uint32, code int32) {
	if len(raw) < 12 {
		return 0, 0
	}
	return binary.LittleEndian.Uint32(raw), int32(binary.LittleEndian.Uint32(raw[8:]))
}

// SockFilterSize is sizeof(struct sock_filter), one classic BPF instruction.
const SockFilterSize = 8

// ErrNoFilter is returned by PtraceSeccompGetFilter past the oldest filter.
var ErrNoFilter = errors.New("no seccomp filter at this index")

// PtraceSeccompGetFilter returns the classic BPF program of a stopped
// tracee's seccomp filter number index, 0 being the first installed (the
// oldest; ptrace(2) is misleading there)
// (PTRACE_SECCOMP_GET_FILTER, Linux 4.4, CONFIG_CHECKPOINT_RESTORE; the
// tracer needs CAP_SYS_ADMIN and no seccomp of its own).
func PtraceSeccompGetFilter(tid, index int) ([]byte, error) {
	n, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(tid), uintptr(index), 0, 0, 0)
	if e == unix.ENOENT {
		return nil, ErrNoFilter
	}
	if e != 0 {
		return nil, fmt.Errorf("ptrace seccomp_get_filter %d index %d: %w", tid, index, e)
	}
	if n == 0 || n > 4096 { // BPF_MAXINSNS
		return nil, fmt.Errorf("ptrace seccomp_get_filter %d index %d: %d instructions", tid, index, n)
	}
	buf := make([]byte, int(n)*SockFilterSize)
	m, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(tid), uintptr(index), uintptr(unsafe.Pointer(&buf[0])), 0, 0)
	if e != 0 {
		return nil, fmt.Errorf("ptrace seccomp_get_filter %d index %d: %w", tid, index, e)
	}
	if m != n {
		return nil, fmt.Errorf("ptrace seccomp_get_filter %d index %d: %d instructions, then %d", tid, index, n, m)
	}
	return buf, nil
}

// seccompMetadata is struct seccomp_metadata.
type seccompMetadata struct {
	FilterOff uint64
	Flags     uint64
}

const ptraceGetSeccompMetadata = 0x420d

// PtraceSeccompFlags returns the SECCOMP_FILTER_FLAG_* bits recorded for
// filter number index (only SECCOMP_FILTER_FLAG_LOG is reported;
// PTRACE_GET_SECCOMP_METADATA, Linux 4.16).
func PtraceSeccompFlags(tid, index int) (uint64, error) {
	m := seccompMetadata{FilterOff: uint64(index)}
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, ptraceGetSeccompMetadata, uintptr(tid), unsafe.Sizeof(m), uintptr(unsafe.Pointer(&m)), 0, 0)
	if e != 0 {
		return 0, fmt.Errorf("ptrace get_seccomp_metadata %d index %d: %w", tid, index, e)
	}
	return m.Flags, nil
}

// Seccomp operations and filter flags (seccomp(2)).
const (
	SeccompSetModeStrict  = 0
	SeccompSetModeFilter  = 1
	SeccompFlagTsync      = 1
	SeccompFlagLog        = 2
	SeccompFlagTsyncEsrch = 16 // TSYNC fails with ESRCH instead of returning a tid (Linux 5.7)
)

// SockFprog lays out struct sock_fprog for a program of n instructions at
// addr in the task.
func SockFprog(n int, addr uint64) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint16(b, uint16(n))
	binary.LittleEndian.PutUint64(b[8:], addr)
	return b
}

// RobustListHeadSize is sizeof(struct robust_list_head): set_robust_list(2)
// refuses any other length.
const RobustListHeadSize = 24

// GetRobustList returns the robust futex list head a thread registered
// (get_robust_list(2); the caller needs ptrace access to tid).
func GetRobustList(tid int) (head, size uint64, err error) {
	_, _, e := unix.Syscall(unix.SYS_GET_ROBUST_LIST, uintptr(tid), uintptr(unsafe.Pointer(&head)), uintptr(unsafe.Pointer(&size)))
	if e != 0 {
		return 0, 0, fmt.Errorf("get_robust_list %d: %w", tid, e)
	}
	return head, size, nil
}

// Timevals and timespecs, as nanoseconds.

func putTimeval(b []byte, ns uint64) {
	binary.LittleEndian.PutUint64(b, ns/1e9)
	binary.LittleEndian.PutUint64(b[8:], ns%1e9/1e3)
}

func timeval(b []byte) uint64 {
	return binary.LittleEndian.Uint64(b)*1e9 + binary.LittleEndian.Uint64(b[8:])*1e3
}

func putTimespec(b []byte, ns uint64) {
	binary.LittleEndian.PutUint64(b, ns/1e9)
	binary.LittleEndian.PutUint64(b[8:], ns%1e9)
}

func timespec(b []byte) uint64 {
	return binary.LittleEndian.Uint64(b)*1e9 + binary.LittleEndian.Uint64(b[8:])
}

// ItimervalSize is sizeof(struct itimerval); ItimerspecSize of struct itimerspec.
const (
	ItimervalSize  = 32
	ItimerspecSize = 32
)

// Itimerval lays out struct itimerval (microseconds; a value below one
// microsecond is rounded up, so an armed timer stays armed).
func Itimerval(intervalNs, valueNs uint64) []byte {
	b := make([]byte, ItimervalSize)
	if valueNs > 0 && valueNs < 1e3 {
		valueNs = 1e3
	}
	if intervalNs > 0 && intervalNs < 1e3 {
		intervalNs = 1e3
	}
	putTimeval(b, intervalNs)
	putTimeval(b[16:], valueNs)
	return b
}

// ParseItimerval reads struct itimerval.
func ParseItimerval(b []byte) (intervalNs, valueNs uint64) {
	return timeval(b), timeval(b[16:])
}

// Itimerspec lays out struct itimerspec.
func Itimerspec(intervalNs, valueNs uint64) []byte {
	b := make([]byte, ItimerspecSize)
	putTimespec(b, intervalNs)
	putTimespec(b[16:], valueNs)
	return b
}

// ParseItimerspec reads struct itimerspec.
func ParseItimerspec(b []byte) (intervalNs, valueNs uint64) {
	return timespec(b), timespec(b[16:])
}

// sigevent notification kinds.
const (
	SigevSignal   = 0
	SigevNone     = 1
	SigevThread   = 2
	SigevThreadID = 4
)

// Sigevent lays out struct sigevent (64 bytes) for timer_create(2).
func Sigevent(notify, signo uint32, value uint64, tid uint32) []byte {
	b := make([]byte, 64)
	binary.LittleEndian.PutUint64(b, value)
	binary.LittleEndian.PutUint32(b[8:], signo)
	binary.LittleEndian.PutUint32(b[12:], notify)
	binary.LittleEndian.PutUint32(b[16:], tid)
	return b
}

// Stack flags of sigaltstack(2).
const (
	SsOnstack    = 1
	SsDisable    = 2
	SsAutodisarm = 1 << 31
)

// StackTSize is sizeof(stack_t).
const StackTSize = 24

// StackT lays out stack_t.
func StackT(sp uint64, flags uint32, size uint64) []byte {
	b := make([]byte, StackTSize)
	binary.LittleEndian.PutUint64(b, sp)
	binary.LittleEndian.PutUint32(b[8:], flags)
	binary.LittleEndian.PutUint64(b[16:], size)
	return b
}

// ParseStackT reads stack_t.
func ParseStackT(b []byte) (sp uint64, flags uint32, size uint64) {
	return binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint32(b[8:]), binary.LittleEndian.Uint64(b[16:])
}

// SchedAttr lays out struct sched_attr in its first version (48 bytes,
// without the utilization clamps) for sched_setattr(2).
func SchedAttr(policy uint32, flags uint64, nice int32, prio uint32, runtime, deadline, period uint64) []byte {
	b := make([]byte, 48)
	le := binary.LittleEndian
	le.PutUint32(b, 48)
	le.PutUint32(b[4:], policy)
	le.PutUint64(b[8:], flags)
	le.PutUint32(b[16:], uint32(nice))
	le.PutUint32(b[20:], prio)
	le.PutUint64(b[24:], runtime)
	le.PutUint64(b[32:], deadline)
	le.PutUint64(b[40:], period)
	return b
}

// Capability sets for capset(2), version 3 (64-bit sets).

// CapHeader lays out struct __user_cap_header_struct for the calling task.
func CapHeader() []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint32(b, unix.LINUX_CAPABILITY_VERSION_3)
	return b
}

// CapData lays out the two struct __user_cap_data_struct of version 3.
func CapData(eff, prm, inh uint64) []byte {
	b := make([]byte, 24)
	le := binary.LittleEndian
	le.PutUint32(b[0:], uint32(eff))
	le.PutUint32(b[4:], uint32(prm))
	le.PutUint32(b[8:], uint32(inh))
	le.PutUint32(b[12:], uint32(eff>>32))
	le.PutUint32(b[16:], uint32(prm>>32))
	le.PutUint32(b[20:], uint32(inh>>32))
	return b
}

// Rlimit64 lays out struct rlimit64 for prlimit64(2).
func Rlimit64(cur, max uint64) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b, cur)
	binary.LittleEndian.PutUint64(b[8:], max)
	return b
}

// Uint32s lays out an array of 32-bit values (gid_t[] for setgroups(2)).
func Uint32s(v []uint32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], x)
	}
	return b
}

// Prctl options newer than golang.org/x/sys knows.
const (
	PrTimerCreateRestoreIDs = 77 // Linux 6.15: timer_create takes the id from *timer_id
)

// RtSigqueueinfo queues signal sig with the 128-byte siginfo info for the
// process pid (rt_sigqueueinfo(2); towards another process si_code must be
// negative, e.g. SI_QUEUE).
func RtSigqueueinfo(pid int, sig unix.Signal, info []byte) error {
	if len(info) != SiginfoSize {
		return fmt.Errorf("rt_sigqueueinfo: siginfo of %d bytes", len(info))
	}
	_, _, e := unix.Syscall(unix.SYS_RT_SIGQUEUEINFO, uintptr(pid), uintptr(sig), uintptr(unsafe.Pointer(&info[0])))
	if e != 0 {
		return fmt.Errorf("rt_sigqueueinfo %d %v: %w", pid, sig, e)
	}
	return nil
}
