package parasite

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"crpipe/lib/inject"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// reads is the batch of system calls injected into one thread, with what
// each one is, to name it in an error.
type reads struct {
	calls []inject.Call
	what  []string
}

// add queues a call; with out > 0 its argument outArg points to an output
// buffer of out bytes. It returns the call's index.
func (r *reads) add(what string, out, outArg int, nr uintptr, args ...uint64) int {
	c := inject.Call{Nr: nr, Out: out, OutArg: outArg}
	copy(c.Args[:], args)
	r.calls = append(r.calls, c)
	r.what = append(r.what, what)
	return len(r.calls) - 1
}

// result is call i's return value and output, or the error naming it.
func (r *reads) result(i int) (int64, []byte, error) {
	c := &r.calls[i]
	if err := inject.Errno(c.Ret); err != nil {
		return c.Ret, nil, fmt.Errorf("%s: %w", r.what[i], err)
	}
	return c.Ret, c.Result, nil
}

// optional is call i's return value, or 0 where the kernel has no such
// setting (EINVAL: an older kernel; ENODEV, ENXIO: not on this machine).
func (r *reads) optional(i int) (uint32, error) {
	ret, _, err := r.result(i)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO) {
		return 0, nil
	}
	return uint32(ret), err
}

// mempolicy is the thread's NUMA memory policy, nil for the default (and
// on a kernel without NUMA: ENOSYS).
func (r *threadReads) mempolicy() (*pb.Mempolicy, error) {
	_, mode, err := r.result(r.polMode)
	if errors.Is(err, unix.ENOSYS) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	_, nodes, err := r.result(r.polNodes)
	if err != nil {
		return nil, err
	}
	m := int32(binary.LittleEndian.Uint32(mode))
	if m == 0 { // MPOL_DEFAULT
		return nil, nil
	}
	nodes = bytes.TrimRight(nodes, "\x00")
	return &pb.Mempolicy{Mode: m, Nodes: append([]byte(nil), nodes...)}, nil
}

// threadReads plans what is read from inside one thread: its
// clear_child_tid address, alternate signal stack, parent-death signal,
// securebits and timer slack, and in the thread group leader the process's
// (processReads).
// Decoding the results gives the thread's records.
type threadReads struct {
	reads
	pid, tid                                 int
	tidAddr, altstack, pdeath, secure, slack int
	ssb, ibrs                                int
	polMode, polNodes                        int
	witness, sandbox                         int // the witness's pid (0: none), the kcmp call (landlock.go)
	proc                                     *processReads
}

// nodeMaskBits is the node mask size asked of get_mempolicy: at least the
// kernel's MAX_NUMNODES (1 << CONFIG_NODES_SHIFT, at most 1024).
const nodeMaskBits = 1024

func planThread(pid, tid int, leader bool, witness int) (*threadReads, error) {
	r := &threadReads{pid: pid, tid: tid, witness: witness}
	if witness != 0 {
		r.sandbox = r.add("kcmp(KCMP_VM) of the witness", 0, 0, unix.SYS_KCMP, uint64(pid), uint64(witness), sys.KcmpVM, 0, 0)
	}
	r.tidAddr = r.add("prctl(PR_GET_TID_ADDRESS)", 8, 1, unix.SYS_PRCTL, unix.PR_GET_TID_ADDRESS)
	r.altstack = r.add("sigaltstack", sys.StackTSize, 1, unix.SYS_SIGALTSTACK, 0)
	r.pdeath = r.add("prctl(PR_GET_PDEATHSIG)", 4, 1, unix.SYS_PRCTL, unix.PR_GET_PDEATHSIG)
	r.secure = r.add("prctl(PR_GET_SECUREBITS)", 0, 0, unix.SYS_PRCTL, unix.PR_GET_SECUREBITS)
	r.slack = r.add("prctl(PR_GET_TIMERSLACK)", 0, 0, unix.SYS_PRCTL, unix.PR_GET_TIMERSLACK)
	r.ssb = r.add("prctl(PR_GET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS)", 0, 0, unix.SYS_PRCTL, unix.PR_GET_SPECULATION_CTRL, unix.PR_SPEC_STORE_BYPASS)
	r.ibrs = r.add("prctl(PR_GET_SPECULATION_CTRL, PR_SPEC_INDIRECT_BRANCH)", 0, 0, unix.SYS_PRCTL, unix.PR_GET_SPECULATION_CTRL, unix.PR_SPEC_INDIRECT_BRANCH)
	r.polMode = r.add("get_mempolicy(mode)", 4, 0, unix.SYS_GET_MEMPOLICY)
	r.polNodes = r.add("get_mempolicy(nodes)", nodeMaskBits/8, 1, unix.SYS_GET_MEMPOLICY, 0, 0, nodeMaskBits)
	if leader {
		var err error
		if r.proc, err = planProcess(&r.reads, pid); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// decode turns the results into the thread's records.
func (r *threadReads) decode() (*ThreadResult, error) {
	st := &pb.TaskState{Pid: uint32(r.pid), Tid: uint32(r.tid)}
	ti := &pb.ThreadInside{Pid: uint32(r.pid), Tid: uint32(r.tid)}
	res := &ThreadResult{State: st, Inside: ti}
	if r.witness != 0 {
		if err := sandboxed(r.calls[r.sandbox].Ret); err != nil {
			return nil, err
		}
	}
	_, b, err := r.result(r.tidAddr)
	if err != nil {
		return nil, err
	}
	st.ClearChildTid = binary.LittleEndian.Uint64(b)
	if _, b, err = r.result(r.altstack); err != nil {
		return nil, err
	}
	sp, flags, size := sys.ParseStackT(b)
	ti.Sigaltstack = &pb.Sigaltstack{Sp: sp, Flags: flags, Size: size}
	if _, b, err = r.result(r.pdeath); err != nil {
		return nil, err
	}
	ti.PdeathSignal = binary.LittleEndian.Uint32(b)
	bits, _, err := r.result(r.secure)
	if err != nil {
		return nil, err
	}
	ti.Securebits = uint32(bits)
	slack, _, err := r.result(r.slack)
	if err != nil {
		return nil, err
	}
	ti.TimerslackNs = uint64(slack)
	if ti.SpecStoreBypass, err = r.optional(r.ssb); err != nil {
		return nil, err
	}
	if ti.SpecIndirectBranch, err = r.optional(r.ibrs); err != nil {
		return nil, err
	}
	if ti.Mempolicy, err = r.mempolicy(); err != nil {
		return nil, err
	}
	if r.proc == nil {
		return res, nil
	}
	if res.Process, err = r.proc.decode(&r.reads, st); err != nil {
		return nil, err
	}
	return res, nil
}

// processReads plans what is read from inside the thread group leader for
// its process: interval timers, POSIX timers (listed in /proc/PID/timers),
// dumpable, child-subreaper, THP disable, memory-deny-write-execute,
// process-wide KSM and the signal dispositions.
type processReads struct {
	pid                      int
	itimers                  [3]int
	timers                   []proc.Timer
	timerCalls               []int
	dumpable, subreaper, thp int
	mdwe, merge              int
	sigactions, signos       []int
}

func planProcess(r *reads, pid int) (*processReads, error) {
	p := &processReads{pid: pid}
	for which := range p.itimers {
		p.itimers[which] = r.add(fmt.Sprintf("getitimer(%d)", which), sys.ItimervalSize, 1, unix.SYS_GETITIMER, uint64(which))
	}
	var err error
	if p.timers, err = proc.ReadTimers(pid); err != nil {
		return nil, err
	}
	for _, tm := range p.timers {
		p.timerCalls = append(p.timerCalls, r.add(fmt.Sprintf("timer_gettime(%d)", tm.ID), sys.ItimerspecSize, 1, unix.SYS_TIMER_GETTIME, uint64(uint32(tm.ID))))
	}
	p.dumpable = r.add("prctl(PR_GET_DUMPABLE)", 0, 0, unix.SYS_PRCTL, unix.PR_GET_DUMPABLE)
	p.subreaper = r.add("prctl(PR_GET_CHILD_SUBREAPER)", 4, 1, unix.SYS_PRCTL, unix.PR_GET_CHILD_SUBREAPER)
	p.thp = r.add("prctl(PR_GET_THP_DISABLE)", 0, 0, unix.SYS_PRCTL, unix.PR_GET_THP_DISABLE)
	p.mdwe = r.add("prctl(PR_GET_MDWE)", 0, 0, unix.SYS_PRCTL, unix.PR_GET_MDWE)
	p.merge = r.add("prctl(PR_GET_MEMORY_MERGE)", 0, 0, unix.SYS_PRCTL, unix.PR_GET_MEMORY_MERGE)
	for sig := 1; sig <= 64; sig++ {
		if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) {
			continue
		}
		// struct kernel_sigaction: handler, flags, restorer, mask (8 bytes).
		p.sigactions = append(p.sigactions, r.add(fmt.Sprintf("rt_sigaction(%d)", sig), 32, 2, unix.SYS_RT_SIGACTION, uint64(sig), 0, 0, 8))
		p.signos = append(p.signos, sig)
	}
	return p, nil
}

// decode gives the ProcessInside record and the sigactions, which go into
// the leader's TaskState st.
func (p *processReads) decode(r *reads, st *pb.TaskState) (*pb.ProcessInside, error) {
	pi := &pb.ProcessInside{Pid: uint32(p.pid)}
	for which, i := range p.itimers {
		_, b, err := r.result(i)
		if err != nil {
			return nil, err
		}
		interval, value := sys.ParseItimerval(b)
		// An ITIMER_REAL that expired while the task was frozen reads 0
		// with its interval: the kernel re-arms it only when the task
		// dequeues the SIGALRM, which is then pending.
		if value != 0 || interval != 0 {
			pi.Itimers = append(pi.Itimers, &pb.Itimer{Which: uint32(which), IntervalNs: interval, ValueNs: value})
		}
	}
	for k, tm := range p.timers {
		_, b, err := r.result(p.timerCalls[k])
		if err != nil {
			return nil, err
		}
		interval, value := sys.ParseItimerspec(b)
		pt := &pb.PosixTimer{Id: tm.ID, Clock: tm.Clock, Notify: tm.Notify, Signo: tm.Signo, Sigval: tm.Sigval,
			IntervalNs: interval, ValueNs: value}
		if tm.Notify&sys.SigevThreadID != 0 {
			pt.Tid = uint32(tm.Target)
		}
		pi.PosixTimers = append(pi.PosixTimers, pt)
	}
	d, _, err := r.result(p.dumpable)
	if err != nil {
		return nil, err
	}
	pi.Dumpable = uint32(d)
	_, b, err := r.result(p.subreaper)
	if err != nil {
		return nil, err
	}
	pi.ChildSubreaper = binary.LittleEndian.Uint32(b) != 0
	thp, _, err := r.result(p.thp)
	if err != nil {
		return nil, err
	}
	pi.ThpDisable = uint32(thp)
	if pi.Mdwe, err = r.optional(p.mdwe); err != nil {
		return nil, err
	}
	merge, err := r.optional(p.merge)
	if err != nil {
		return nil, err
	}
	pi.MemoryMerge = merge != 0
	le := binary.LittleEndian
	for k, i := range p.sigactions {
		_, b, err := r.result(i)
		if err == nil {
			a := &pb.Sigaction{
				Signo:    uint32(p.signos[k]),
				Handler:  le.Uint64(b[0:]),
				Flags:    le.Uint64(b[8:]),
				Restorer: le.Uint64(b[16:]),
				Mask:     le.Uint64(b[24:]),
			}
			if a.Handler != 0 || a.Flags != 0 || a.Mask != 0 {
				st.Sigactions = append(st.Sigactions, a)
			}
			continue
		}
		if inject.Errno(r.calls[i].Ret) != unix.EINVAL { // EINVAL: not a valid signal number on this kernel
			return nil, err
		}
	}
	return pi, nil
}

// pendingSignals reads a stopped thread's queued signals (shared: its
// process's). Read after the timers, so that a timer expiring between the
// two reads shows up as a pending signal rather than being lost.
// stopped: the process is in a group stop, where a queued SIGSTOP can
// only be discarded (by the SIGCONT that ends the stop): left out.
func pendingSignals(pid, tid int, shared, stopped bool) ([]*pb.Siginfo, error) {
	raws, err := sys.PtracePeekSiginfo(tid, shared)
	if err != nil {
		return nil, fmt.Errorf("pid %d tid %d: %w", pid, tid, err)
	}
	var out []*pb.Siginfo
	for _, raw := range raws {
		signo, code := sys.SiginfoSignoCode(raw)
		switch unix.Signal(signo) {
		case unix.SIGKILL:
			return nil, fmt.Errorf("pid %d tid %d: SIGKILL is pending: the process is being killed", pid, tid)
		case unix.SIGSTOP:
			if stopped {
				continue
			}
			return nil, stage.Hint(fmt.Errorf("pid %d tid %d: SIGSTOP is pending: not supported", pid, tid),
				"checkpoint after the process stopped and was continued, or before the signal is sent")
		}
		out = append(out, &pb.Siginfo{Signo: signo, Code: code, Raw: raw})
	}
	return out, nil
}
