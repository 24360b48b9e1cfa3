package restore

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// Task state restored early, while the restorer still runs as root:
//
//	per process (processStates, in the leader before its threads exist):
//	  block every signal, personality, child subreaper, OOM score
//	  adjustment and core dump filter (both from outside; THP disable is
//	  set by mapVmas, before any page is written)
//	per thread (threadStates, after the sigactions):
//	  block every signal, name, scheduling, I/O priority, timer slack, CPU
//	  affinity, robust futex list, sigaltstack, then the pending signals
//
// Every signal stays blocked until the final registers and signal mask are
// set through ptrace: a timer restored later, or a pending signal queued
// here, must not run a handler on the restorer's stack.

func init() {
	registerProcessState(processEarly)
	registerThreadState(threadEarly)
}

const (
	sigSetmask       = 2 // SIG_SETMASK
	ioprioWhoProcess = 1 // IOPRIO_WHO_PROCESS; who 0: the calling thread
)

func blockAll(s *scratchWriter) call {
	return sc("block all signals", unix.SYS_RT_SIGPROCMASK, sigSetmask, s.putU64s(^uint64(0)), 0, 8)
}

// missingState refuses a task whose state records are not in the stream:
// restored without them, it would run with cr-restore's credentials (root)
// and without its limits, timers and pending signals.
func missingState(pid, tid uint32, what string) error {
	return stage.Hint(fmt.Errorf("pid %d tid %d: the stream has no %s", pid, tid, what),
		throughEveryStage)
}

func processEarly(rc *Ctx, t *task, s *scratchWriter) ([]call, error) {
	si := states(rc)
	pid := t.proc.Pid
	ps, err := si.processState(t)
	if err != nil {
		return nil, err
	}
	pi := si.pinside[pid]
	switch {
	case ps == nil:
		return nil, missingState(pid, pid, "process state (cr-seize)")
	case pi == nil:
		return nil, missingState(pid, pid, "process state read from inside (cr-parasite)")
	}
	calls := []call{blockAll(s)}
	calls = append(calls, sc(fmt.Sprintf("personality %#x", ps.Personality), unix.SYS_PERSONALITY, uint64(ps.Personality)))
	if pi.ChildSubreaper {
		calls = append(calls, sc("prctl PR_SET_CHILD_SUBREAPER", unix.SYS_PRCTL, unix.PR_SET_CHILD_SUBREAPER, 1))
	}
	// Inherited from cr-restore otherwise. Written by root, it also
	// becomes the floor the process may not go below without
	// CAP_SYS_RESOURCE, as when its owner's privileged setup wrote it.
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", t.pid), []byte(strconv.Itoa(int(ps.OomScoreAdj))), 0); err != nil {
		return nil, fmt.Errorf("pid %d: oom_score_adj %d: %w", pid, ps.OomScoreAdj, err)
	}
	// Inherited from the parent's restorer or from cr-restore otherwise.
	if ps.CoredumpFilter != nil {
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/coredump_filter", t.pid), []byte(fmt.Sprintf("%#x", *ps.CoredumpFilter)), 0); err != nil {
			return nil, fmt.Errorf("pid %d: coredump_filter %#x: %w", pid, *ps.CoredumpFilter, err)
		}
	}
	return calls, nil
}

// schedFlags are the SCHED_FLAG_* bits that describe the thread, not the
// call (KEEP_POLICY, KEEP_PARAMS and the utilization clamps are left out).
const schedFlags = unix.SCHED_FLAG_RESET_ON_FORK | unix.SCHED_FLAG_RECLAIM | unix.SCHED_FLAG_DL_OVERRUN

func threadEarly(rc *Ctx, t *task, tid uint32, s *scratchWriter) ([]call, error) {
	si := states(rc)
	pid := t.proc.Pid
	where := fmt.Sprintf("tid %d: ", tid)
	ts, err := si.threadState(t, tid)
	if err != nil {
		return nil, err
	}
	switch {
	case ts == nil:
		return nil, missingState(pid, tid, "thread state (cr-seize)")
	case si.inside[tid] == nil:
		return nil, missingState(pid, tid, "thread state read from inside (cr-parasite)")
	}
	calls := []call{blockAll(s)}
	if ts.Comm != "" {
		calls = append(calls, sc(where+"set name", unix.SYS_PRCTL, unix.PR_SET_NAME, s.putString(ts.Comm)))
	}
	if a := ts.Sched; a != nil {
		attr := sys.SchedAttr(a.Policy, a.Flags&schedFlags, a.Nice, a.Priority, a.Runtime, a.Deadline, a.Period)
		calls = append(calls, sc(fmt.Sprintf("%ssched_setattr policy %d nice %d priority %d", where, a.Policy, a.Nice, a.Priority),
			unix.SYS_SCHED_SETATTR, 0, s.put(attr), 0))
	}
	// Always: 0 (never set) must not stay what cr-restore had.
	calls = append(calls, sc(fmt.Sprintf("%sioprio_set %#x", where, ts.Ioprio), unix.SYS_IOPRIO_SET, ioprioWhoProcess, 0, uint64(ts.Ioprio)))
	if mask := affinity(pid, tid, ts.Affinity); mask != nil {
		calls = append(calls, sc(where+"sched_setaffinity", unix.SYS_SCHED_SETAFFINITY, 0, uint64(len(mask)), s.put(mask)))
	}
	if ts.RobustList != 0 {
		calls = append(calls, sc(where+"set_robust_list", unix.SYS_SET_ROBUST_LIST, ts.RobustList, ts.RobustListLen))
	}
	ti := si.inside[tid]
	if ti != nil {
		if ti.TimerslackNs != 0 { // 0: a real-time thread, which has none
			calls = append(calls, sc(fmt.Sprintf("%sprctl PR_SET_TIMERSLACK %d", where, ti.TimerslackNs), unix.SYS_PRCTL, unix.PR_SET_TIMERSLACK, ti.TimerslackNs))
		}
		if ss := ti.Sigaltstack; ss != nil && ss.Flags&sys.SsDisable == 0 {
			st := sys.StackT(ss.Sp, ss.Flags&sys.SsAutodisarm, ss.Size)
			calls = append(calls, sc(where+"sigaltstack", unix.SYS_SIGALTSTACK, s.put(st), 0))
		}
		// A task may queue any siginfo to itself (rt_tgsigqueueinfo(2)
		// refuses si_code >= 0 only towards others): the signals come back
		// with their sender, code and value.
		for _, sig := range ti.Pending {
			c, err := queueSignal(s, where, pid, tid, sig, false)
			if err != nil {
				return nil, err
			}
			calls = append(calls, c)
		}
	}
	if tid == pid {
		if pi := si.pinside[pid]; pi != nil {
			for _, sig := range pi.SharedPending {
				c, err := queueSignal(s, where, pid, tid, sig, true)
				if err != nil {
					return nil, err
				}
				calls = append(calls, c)
			}
		}
	}
	return calls, nil
}

// queueSignal queues a pending signal again, for the thread or (shared)
// for the whole process; the caller is the thread itself, or the leader.
func queueSignal(s *scratchWriter, where string, pid, tid uint32, sig *pb.Siginfo, shared bool) (call, error) {
	if len(sig.Raw) != sys.SiginfoSize {
		return call{}, fmt.Errorf("pid %d %ssiginfo of %d bytes in the image, want %d", pid, where, len(sig.Raw), sys.SiginfoSize)
	}
	signo, _ := sys.SiginfoSignoCode(sig.Raw)
	if signo == 0 || signo > 64 || signo != sig.Signo || signo == uint32(unix.SIGKILL) || signo == uint32(unix.SIGSTOP) {
		return call{}, fmt.Errorf("pid %d %spending signal %d (siginfo says %d) in the image", pid, where, sig.Signo, signo)
	}
	info := s.put(sig.Raw)
	if shared {
		return sc(fmt.Sprintf("%squeue shared signal %d (code %d)", where, signo, sig.Code), unix.SYS_RT_SIGQUEUEINFO, uint64(pid), uint64(signo), info), nil
	}
	return sc(fmt.Sprintf("%squeue signal %d (code %d)", where, signo, sig.Code), unix.SYS_RT_TGSIGQUEUEINFO, uint64(pid), uint64(tid), uint64(signo), info), nil
}

// affinity returns the mask to set, or nil when none of its CPUs is one
// this restore may use (say, restored on a smaller machine): the thread
// then keeps cr-restore's CPUs.
func affinity(pid, tid uint32, mask []byte) []byte {
	if len(mask) == 0 || len(mask)%8 != 0 || len(mask) > 1<<16 {
		return nil
	}
	var ours unix.CPUSet
	if err := unix.SchedGetaffinity(0, &ours); err != nil {
		return mask
	}
	for i := 0; i+8 <= len(mask) && i/8 < len(ours); i += 8 {
		if binary.LittleEndian.Uint64(mask[i:])&uint64(ours[i/8]) != 0 {
			return mask
		}
	}
	stage.Logf("pid %d tid %d: none of the dumped CPUs is available: affinity not restored", pid, tid)
	return nil
}
