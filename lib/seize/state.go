package seize

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// rlimitCount is RLIM_NLIMITS: RLIMIT_CPU (0) to RLIMIT_RTTIME (15).
const rlimitCount = 16

// checkTracer refuses a thread that another tracer holds: PTRACE_SEIZE
// would fail with a bare EPERM, and restore could not rebuild the tracing.
// It returns the thread's credentials, which it reads for that.
func checkTracer(pid, tid int) (*proc.Security, error) {
	sec, err := proc.ReadSecurity(pid, tid)
	if err != nil {
		return nil, fmt.Errorf("pid %d tid %d: %w", pid, tid, err)
	}
	if sec.TracerPid != 0 {
		// TracerPid is the tracing thread; name its process.
		tracer, comm := sec.TracerPid, ""
		if st, err := proc.ReadStatus(tracer); err == nil {
			tracer, comm = st.Tgid, " ("+st.Name+")"
		}
		return nil, stage.Hint(fmt.Errorf("pid %d tid %d is traced by pid %d%s: a traced task cannot be checkpointed", pid, tid, tracer, comm),
			"detach the debugger or tracer (gdb, strace) first")
	}
	return sec, nil
}

// CheckShared refuses processes that share with another process what a
// restore gives each one of its own: an address space (a vfork parent
// waiting for its child, or clone(CLONE_VM) without CLONE_THREAD), an fd
// table (CLONE_FILES), or a working directory, root and umask (CLONE_FS).
// kcmp(2) orders the objects, so sorting finds every pair in n log n calls.
func CheckShared(procs []*pb.Process) error {
	var live []int
	order := map[int]int{} // the stream's order: the parent comes first
	for i, p := range procs {
		if p.State != "Z" {
			live = append(live, int(p.Pid))
			order[int(p.Pid)] = i
		}
	}
	for _, c := range []struct {
		typ             int
		what, how, hint string
	}{
		{sys.KcmpVM, "its address space", "a vfork in progress, or clone with CLONE_VM", "checkpoint once the child has called exec or exited"},
		{sys.KcmpFdTable, "its fd table", "clone with CLONE_FILES", ""},
		{sys.KcmpFs, "its working directory, root and umask", "clone with CLONE_FS", ""},
	} {
		var err error
		sort.SliceStable(live, func(i, j int) bool {
			r, e := sys.Kcmp(live[i], live[j], c.typ, 0, 0)
			if e != nil && err == nil {
				err = fmt.Errorf("pids %d and %d: %w", live[i], live[j], e)
			}
			return r == 1
		})
		if err != nil {
			return err
		}
		for i := 1; i < len(live); i++ {
			r, err := sys.Kcmp(live[i-1], live[i], c.typ, 0, 0)
			if err != nil {
				return fmt.Errorf("pids %d and %d: %w", live[i-1], live[i], err)
			}
			if r == 0 {
				a, b := live[i-1], live[i]
				if order[b] < order[a] {
					a, b = b, a
				}
				return stage.Hint(fmt.Errorf("pid %d shares %s with pid %d (%s): not supported", a, c.what, b, c.how), c.hint)
			}
		}
	}
	return nil
}

// ReadThreadState reads the per-thread state that can be read from
// outside: name, scheduling, affinity, I/O priority, robust futex list, credentials and
// seccomp filters. The thread must sit in a ptrace stop of the caller (the
// seccomp filters can only be read then). sec, when not nil, is its
// credentials, read already.
func ReadThreadState(pid, tid int, sec *proc.Security) (*pb.ThreadState, error) {
	where := func(err error) error { return fmt.Errorf("pid %d tid %d: %w", pid, tid, err) }
	ts := &pb.ThreadState{Pid: uint32(pid), Tid: uint32(tid)}
	var err error
	if ts.Comm, err = proc.ReadTaskComm(pid, tid); err != nil {
		return nil, where(err)
	}
	attr, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return nil, where(fmt.Errorf("sched_getattr: %w", err))
	}
	ts.Sched = &pb.SchedAttr{Policy: attr.Policy, Flags: attr.Flags, Nice: attr.Nice, Priority: attr.Priority,
		Runtime: attr.Runtime, Deadline: attr.Deadline, Period: attr.Period}
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(tid, &cpus); err != nil {
		return nil, where(fmt.Errorf("sched_getaffinity: %w", err))
	}
	ts.Affinity = cpuMask(&cpus)
	if ts.Ioprio, err = sys.IoprioGet(tid); err != nil {
		return nil, where(err)
	}
	if ts.RobustList, ts.RobustListLen, err = sys.GetRobustList(tid); err != nil {
		return nil, where(err)
	}
	if sec == nil {
		if sec, err = proc.ReadSecurity(pid, tid); err != nil {
			return nil, where(err)
		}
	}
	ts.Creds = &pb.Creds{
		Uids:   []uint32{uint32(sec.Uid[0]), uint32(sec.Uid[1]), uint32(sec.Uid[2]), uint32(sec.Uid[3])},
		Gids:   []uint32{uint32(sec.Gid[0]), uint32(sec.Gid[1]), uint32(sec.Gid[2]), uint32(sec.Gid[3])},
		Groups: sec.Groups,
		CapInh: sec.CapInh, CapPrm: sec.CapPrm, CapEff: sec.CapEff, CapBnd: sec.CapBnd, CapAmb: sec.CapAmb,
		NoNewPrivs: sec.NoNewPrivs,
	}
	ts.SeccompMode = uint32(sec.Seccomp)
	if sec.Seccomp == 2 {
		if ts.SeccompFilters, err = readFilters(tid); err != nil {
			return nil, where(err)
		}
		if len(ts.SeccompFilters) != sec.SeccompFilters {
			return nil, where(fmt.Errorf("read %d seccomp filters, /proc says %d", len(ts.SeccompFilters), sec.SeccompFilters))
		}
	}
	return ts, nil
}

// readFilters returns a thread's seccomp filters, oldest first: the
// kernel's index 0 is the first filter installed (get_nth_filter walks back
// from the newest).
func readFilters(tid int) ([]*pb.SeccompFilter, error) {
	var fs []*pb.SeccompFilter
	for i := 0; ; i++ {
		prog, err := sys.PtraceSeccompGetFilter(tid, i)
		if errors.Is(err, sys.ErrNoFilter) {
			break
		}
		if err != nil {
			if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
				return nil, stage.Hint(err, "reading seccomp filters needs CAP_SYS_ADMIN, and cr-seize must not run under seccomp itself")
			}
			return nil, err
		}
		flags, err := sys.PtraceSeccompFlags(tid, i)
		if err != nil {
			return nil, err
		}
		if notifies(prog) {
			return nil, stage.Hint(fmt.Errorf("seccomp filter %d returns SECCOMP_RET_USER_NOTIF: its supervisor's listener cannot be restored", i),
				"run the process without the user-notification filter to checkpoint it")
		}
		fs = append(fs, &pb.SeccompFilter{Prog: prog, Flags: flags})
		if i > 1024 {
			return nil, errors.New("more than 1024 seccomp filters")
		}
	}
	return fs, nil
}

// notifies says whether a classic BPF seccomp program can return
// SECCOMP_RET_USER_NOTIF (as a constant: BPF_RET|BPF_K).
func notifies(prog []byte) bool {
	const (
		bpfRetK    = 0x06
		actionMask = 0xffff0000
		userNotif  = 0x7fc00000
	)
	for i := 0; i+sys.SockFilterSize <= len(prog); i += sys.SockFilterSize {
		code := binary.LittleEndian.Uint16(prog[i:])
		k := binary.LittleEndian.Uint32(prog[i+4:])
		if code == bpfRetK && k&actionMask == userNotif {
			return true
		}
	}
	return false
}

// cpuMask is a CPU set as bytes, without trailing zero words.
func cpuMask(s *unix.CPUSet) []byte {
	var b []byte
	for _, w := range s {
		b = binary.LittleEndian.AppendUint64(b, uint64(w))
	}
	for len(b) > 8 && bytes.Equal(b[len(b)-8:], make([]byte, 8)) {
		b = b[:len(b)-8]
	}
	return b
}

// CheckThreads refuses per-thread state that restore cannot rebuild as it
// was: seccomp filter chains that differ between the threads of a process
// (restore installs one chain with SECCOMP_FILTER_FLAG_TSYNC, shared by all
// threads, as a process that filtered itself with TSYNC had it).
func CheckThreads(pid int, states []*pb.ThreadState) error {
	if len(states) < 2 {
		return nil
	}
	lead := states[0]
	for _, ts := range states[1:] {
		if ts.SeccompMode != lead.SeccompMode || !sameFilters(ts.SeccompFilters, lead.SeccompFilters) {
			return stage.Hint(fmt.Errorf("pid %d: threads %d and %d have different seccomp state (mode %d with %d filters, mode %d with %d): not supported",
				pid, lead.Tid, ts.Tid, lead.SeccompMode, len(lead.SeccompFilters), ts.SeccompMode, len(ts.SeccompFilters)),
				"crpipe restores one seccomp filter chain shared by all threads of a process (as SECCOMP_FILTER_FLAG_TSYNC installs it)")
		}
	}
	return nil
}

func sameFilters(a, b []*pb.SeccompFilter) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Flags != b[i].Flags || !bytes.Equal(a[i].Prog, b[i].Prog) {
			return false
		}
	}
	return true
}

// ReadProcessState reads the per-process state that can be read from
// outside: personality, OOM score adjustment, core dump filter and resource
// limits.
func ReadProcessState(pid int) (*pb.ProcessState, error) {
	ps := &pb.ProcessState{Pid: uint32(pid)}
	var err error
	if ps.Personality, err = proc.ReadPersonality(pid); err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	if ps.OomScoreAdj, err = proc.ReadOomScoreAdj(pid); err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	filter, err := proc.ReadCoredumpFilter(pid)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	ps.CoredumpFilter = &filter
	for r := 0; r < rlimitCount; r++ {
		var lim unix.Rlimit
		err := unix.Prlimit(pid, r, nil, &lim)
		if errors.Is(err, unix.EPERM) {
			// prlimit(2) on a process with other uids needs
			// CAP_SYS_RESOURCE, which root may lack; procfs shows them.
			return limitsFromProc(ps)
		}
		if err != nil {
			return nil, fmt.Errorf("pid %d: prlimit %d: %w", pid, r, err)
		}
		ps.Rlimits = append(ps.Rlimits, &pb.Rlimit{Resource: uint32(r), Cur: lim.Cur, Max: lim.Max})
	}
	return ps, nil
}

func limitsFromProc(ps *pb.ProcessState) (*pb.ProcessState, error) {
	ls, err := proc.ReadLimits(int(ps.Pid))
	if err != nil {
		return nil, err
	}
	if len(ls) != rlimitCount {
		return nil, fmt.Errorf("pid %d: /proc/%d/limits lists %d limits, want %d", ps.Pid, ps.Pid, len(ls), rlimitCount)
	}
	ps.Rlimits = nil
	for r, l := range ls {
		ps.Rlimits = append(ps.Rlimits, &pb.Rlimit{Resource: uint32(r), Cur: l.Cur, Max: l.Max})
	}
	return ps, nil
}
