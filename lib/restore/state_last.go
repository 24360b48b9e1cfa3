package restore

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// Task state restored last, when every thread exists. The tasks are
// already seized with PTRACE_O_SUSPEND_SECCOMP (final.go), so the filters
// installed here do not apply to the restorer's own calls that follow.
//
//	per process (lastStates, in the leader):
//	  mlockall(MCL_FUTURE), memory-deny-write-execute and process-wide
//	  KSM (after the restore's own mappings, which they would lock and
//	  populate, refuse, or merge), POSIX timers, interval timers, resource
//	  limits, seccomp filters
//	  (SECCOMP_FILTER_FLAG_TSYNC: one chain shared by every thread; installed
//	  while the task still has CAP_SYS_ADMIN, as a task without
//	  no_new_privs needs it)
//	per thread (lastThreadStates, the leader last):
//	  credentials, no_new_privs, parent-death signal, speculation
//	  mitigations (prctl), NUMA memory policy, seccomp strict mode;
//	  in the leader also dumpable, which every credential change resets
//
// Timers come late so that little of their remaining time passes during
// the restore, and before the resource limits (timer_create counts against
// RLIMIT_SIGPENDING).

func init() {
	registerLastState(processLast)
	registerLastThreadState(threadLast)
}

func processLast(rc *Ctx, t *task, s *scratchWriter) ([]call, error) {
	si := states(rc)
	pid := t.proc.Pid
	var calls []call
	if pi := si.pinside[pid]; pi != nil && pi.Mlockall != 0 {
		if pi.Mlockall&^(unix.MCL_FUTURE|unix.MCL_ONFAULT) != 0 || pi.Mlockall&unix.MCL_FUTURE == 0 {
			return nil, fmt.Errorf("pid %d: mlockall flags %#x in the image", pid, pi.Mlockall)
		}
		calls = append(calls, sc(fmt.Sprintf("mlockall %#x", pi.Mlockall), unix.SYS_MLOCKALL, uint64(pi.Mlockall)))
	}
	// Memory-deny-write-execute, once the restorer maps nothing more (it
	// would refuse the restorer's own writable executable memory).
	if pi := si.pinside[pid]; pi != nil && pi.Mdwe != 0 {
		if pi.Mdwe&^(unix.PR_MDWE_REFUSE_EXEC_GAIN|unix.PR_MDWE_NO_INHERIT) != 0 {
			return nil, fmt.Errorf("pid %d: memory-deny-write-execute flags %#x in the image", pid, pi.Mdwe)
		}
		calls = append(calls, sc(fmt.Sprintf("prctl PR_SET_MDWE %#x", pi.Mdwe), unix.SYS_PRCTL, unix.PR_SET_MDWE, uint64(pi.Mdwe), 0, 0, 0))
	}
	// KSM for every mapping, the restore's own included: they are gone by
	// the time the process runs.
	if pi := si.pinside[pid]; pi != nil && pi.MemoryMerge {
		calls = append(calls, sc("prctl PR_SET_MEMORY_MERGE 1", unix.SYS_PRCTL, unix.PR_SET_MEMORY_MERGE, 1, 0, 0, 0))
	}
	if pi := si.pinside[pid]; pi != nil {
		c, err := timerCalls(s, pid, pi)
		if err != nil {
			return nil, err
		}
		calls = append(calls, c...)
	}
	ps, err := si.processState(t)
	if err != nil {
		return nil, err
	}
	if ps != nil {
		c, err := rlimitCalls(s, pid, ps.Rlimits)
		if err != nil {
			return nil, err
		}
		calls = append(calls, c...)
	}
	ts, err := si.threadState(t, pid)
	if err != nil {
		return nil, err
	}
	if ts != nil && ts.SeccompMode == 2 {
		for i, f := range ts.SeccompFilters {
			n := len(f.Prog) / sys.SockFilterSize
			if n == 0 || len(f.Prog)%sys.SockFilterSize != 0 || n > 4096 {
				return nil, fmt.Errorf("pid %d: seccomp filter %d of %d bytes in the image", pid, i, len(f.Prog))
			}
			prog := s.put(f.Prog)
			flags := uint64(sys.SeccompFlagTsync|sys.SeccompFlagTsyncEsrch) | f.Flags&sys.SeccompFlagLog
			calls = append(calls, sc(fmt.Sprintf("seccomp filter %d of %d", i+1, len(ts.SeccompFilters)),
				unix.SYS_SECCOMP, sys.SeccompSetModeFilter, flags, s.put(sys.SockFprog(n, prog))))
		}
	}
	return calls, nil
}

// timerCalls recreates POSIX timers with their ids (PR_TIMER_CREATE_RESTORE_IDS
// makes timer_create take the id from *timer_id), then arms them and the
// interval timers with the time they had left.
func timerCalls(s *scratchWriter, pid uint32, pi *pb.ProcessInside) ([]call, error) {
	var calls []call
	if len(pi.PosixTimers) > 0 {
		timers := append([]*pb.PosixTimer(nil), pi.PosixTimers...)
		sort.Slice(timers, func(i, j int) bool { return timers[i].Id < timers[j].Id })
		calls = append(calls, sc("prctl PR_TIMER_CREATE_RESTORE_IDS on (needs Linux 6.15)", unix.SYS_PRCTL, sys.PrTimerCreateRestoreIDs, 1))
		for _, tm := range timers {
			if tm.Id < 0 {
				return nil, fmt.Errorf("pid %d: POSIX timer id %d in the image", pid, tm.Id)
			}
			ev := sys.Sigevent(tm.Notify, tm.Signo, tm.Sigval, tm.Tid)
			id := s.put(sys.Uint32s([]uint32{uint32(tm.Id)}))
			calls = append(calls, sc(fmt.Sprintf("timer_create id %d clock %d", tm.Id, tm.Clock),
				unix.SYS_TIMER_CREATE, uint64(uint32(tm.Clock)), s.put(ev), id))
		}
		calls = append(calls, sc("prctl PR_TIMER_CREATE_RESTORE_IDS off", unix.SYS_PRCTL, sys.PrTimerCreateRestoreIDs, 0))
		for _, tm := range timers {
			if tm.ValueNs == 0 {
				continue
			}
			calls = append(calls, sc(fmt.Sprintf("timer_settime id %d", tm.Id),
				unix.SYS_TIMER_SETTIME, uint64(uint32(tm.Id)), 0, s.put(sys.Itimerspec(tm.IntervalNs, tm.ValueNs)), 0))
		}
	}
	for _, it := range pi.Itimers {
		if it.Which > 2 {
			return nil, fmt.Errorf("pid %d: interval timer %d in the image", pid, it.Which)
		}
		value := it.ValueNs
		if value == 0 {
			// An ITIMER_REAL that expired with its SIGALRM still pending:
			// the kernel would have re-armed it on dequeue, to its next
			// period. setitimer cannot keep an interval without a value,
			// so the next expiry is one interval away.
			value = it.IntervalNs
		}
		if value == 0 {
			continue
		}
		calls = append(calls, sc(fmt.Sprintf("setitimer %d", it.Which),
			unix.SYS_SETITIMER, uint64(it.Which), s.put(sys.Itimerval(it.IntervalNs, value)), 0))
	}
	return calls, nil
}

var rlimitNames = []string{"RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS",
	"RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS", "RLIMIT_SIGPENDING",
	"RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME"}

// rlimitCalls sets the dumped limits. Raising a hard limit needs
// CAP_SYS_RESOURCE: without it the restored task cannot get a hard limit
// above the one it inherited from cr-restore, and that is said up front.
func rlimitCalls(s *scratchWriter, pid uint32, lims []*pb.Rlimit) ([]call, error) {
	canRaise := ownCap(unix.CAP_SYS_RESOURCE)
	var calls []call
	var seen uint32 // a limit given twice would leave another unset
	for _, l := range lims {
		if int(l.Resource) >= len(rlimitNames) {
			return nil, fmt.Errorf("pid %d: resource limit %d, which no kernel knows, in the image: %w", pid, l.Resource, image.ErrCorrupt)
		}
		if l.Cur > l.Max {
			return nil, fmt.Errorf("pid %d: resource limit %s with its soft limit %s above its hard limit %s in the image: %w",
				pid, rlimitNames[l.Resource], rlimString(l.Cur), rlimString(l.Max), image.ErrCorrupt)
		}
		if seen&(1<<l.Resource) != 0 {
			return nil, fmt.Errorf("pid %d: resource limit %s given twice in the image: %w", pid, rlimitNames[l.Resource], image.ErrCorrupt)
		}
		seen |= 1 << l.Resource
		name := rlimitNames[l.Resource]
		var ours unix.Rlimit
		if err := unix.Getrlimit(int(l.Resource), &ours); err == nil && l.Max > ours.Max && !canRaise {
			return nil, stage.Hint(fmt.Errorf("pid %d: hard limit %s is %s, above cr-restore's %s, and cr-restore lacks CAP_SYS_RESOURCE to raise it",
				pid, name, rlimString(l.Max), rlimString(ours.Max)), fmt.Sprintf("run cr-restore with that hard limit (prlimit or ulimit -H) or with CAP_SYS_RESOURCE"))
		}
		calls = append(calls, sc(fmt.Sprintf("prlimit %s %s/%s", name, rlimString(l.Cur), rlimString(l.Max)),
			unix.SYS_PRLIMIT64, 0, uint64(l.Resource), s.put(sys.Rlimit64(l.Cur, l.Max)), 0))
	}
	return calls, nil
}

func rlimString(v uint64) string {
	if v == unix.RLIM_INFINITY {
		return "unlimited"
	}
	return strconv.FormatUint(v, 10)
}

// ownCap says whether cr-restore has capability c in its effective set.
func ownCap(c int) bool {
	sec, err := proc.ReadSecurity(os.Getpid(), os.Getpid())
	return err == nil && sec.CapEff&(1<<uint(c)) != 0
}

// Securebits and prctl values golang.org/x/sys does not spell.
const (
	secbitKeepCaps = 1 << 4 // SECBIT_KEEP_CAPS
	suidDumpUser   = 1      // SUID_DUMP_USER, the highest value PR_SET_DUMPABLE takes
)

func threadLast(rc *Ctx, t *task, tid uint32, s *scratchWriter) ([]call, error) {
	si := states(rc)
	pid := t.proc.Pid
	ts, err := si.threadState(t, tid)
	if err != nil {
		return nil, err
	}
	ti := si.inside[tid]
	var calls []call
	if ts != nil && ts.Creds != nil {
		var securebits uint32
		if ti != nil {
			securebits = ti.Securebits
		}
		c, err := credCalls(s, t, tid, ts.Creds, securebits)
		if err != nil {
			return nil, err
		}
		calls = append(calls, c...)
		if ts.Creds.NoNewPrivs {
			calls = append(calls, sc(fmt.Sprintf("tid %d: prctl PR_SET_NO_NEW_PRIVS", tid), unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		}
	}
	// A new credential resets the parent-death signal, so it comes after.
	// The root's parent is cr-restore, not its dumped parent: a signal when
	// cr-restore exits would be wrong, so the root does not get it back.
	if ti != nil && ti.PdeathSignal != 0 {
		if ti.PdeathSignal > 64 {
			return nil, fmt.Errorf("pid %d tid %d: parent-death signal %d in the image", pid, tid, ti.PdeathSignal)
		}
		if t.parent != nil {
			calls = append(calls, sc(fmt.Sprintf("tid %d: prctl PR_SET_PDEATHSIG %d", tid, ti.PdeathSignal), unix.SYS_PRCTL, unix.PR_SET_PDEATHSIG, uint64(ti.PdeathSignal)))
		} else {
			stage.Logf("pid %d tid %d: parent-death signal %d not restored on the root of the tree", pid, tid, ti.PdeathSignal)
		}
	}
	// Every thread's new credentials reset the process's dumpable flag;
	// the leader runs last.
	if tid == pid {
		if pi := si.pinside[pid]; pi != nil {
			if pi.Dumpable <= suidDumpUser {
				calls = append(calls, sc(fmt.Sprintf("prctl PR_SET_DUMPABLE %d", pi.Dumpable), unix.SYS_PRCTL, unix.PR_SET_DUMPABLE, uint64(pi.Dumpable)))
			} else {
				stage.Logf("pid %d: dumpable %d (suid_dumpable) cannot be set by prctl: left to the kernel", pid, pi.Dumpable)
			}
		}
	}
	if ti != nil {
		calls = append(calls, speculationCalls(tid, ti)...)
		if ti.Mempolicy != nil {
			calls = append(calls, mempolicyCall(s, tid, ti.Mempolicy))
		}
	}
	if ts != nil && ts.SeccompMode == 1 {
		calls = append(calls, sc(fmt.Sprintf("tid %d: seccomp strict mode", tid), unix.SYS_SECCOMP, sys.SeccompSetModeStrict, 0, 0))
	}
	return calls, nil
}

// mempolicyCall gives the thread its NUMA memory policy back, last: the
// restore's own allocations in the thread are not bound by it. A node the
// machine lacks makes set_mempolicy fail, and the restore with it.
func mempolicyCall(s *scratchWriter, tid uint32, p *pb.Mempolicy) call {
	var mask, maxnode uint64
	if len(p.Nodes) > 0 {
		mask, maxnode = nodeMask(s, p.Nodes)
	}
	return sc(fmt.Sprintf("tid %d: set_mempolicy %#x", tid, p.Mode), unix.SYS_SET_MEMPOLICY, uint64(uint32(p.Mode)), mask, maxnode)
}

// speculationCalls give the thread back the speculation mitigations it
// asked for with prctl (a fresh thread has none). A state set by the
// machine rather than by prctl (no PR_SPEC_PRCTL) is the restoring
// machine's business. Force-disable cannot be undone, which is what it
// was for; seccomp filters may force it again (spec_store_bypass_disable=
// seccomp), to the same effect.
func speculationCalls(tid uint32, ti *pb.ThreadInside) []call {
	var calls []call
	for _, c := range []struct {
		name  string
		which uint64
		got   uint32
	}{
		{"PR_SPEC_STORE_BYPASS", unix.PR_SPEC_STORE_BYPASS, ti.SpecStoreBypass},
		{"PR_SPEC_INDIRECT_BRANCH", unix.PR_SPEC_INDIRECT_BRANCH, ti.SpecIndirectBranch},
	} {
		mode := c.got & (unix.PR_SPEC_DISABLE | unix.PR_SPEC_FORCE_DISABLE | unix.PR_SPEC_DISABLE_NOEXEC)
		if c.got&unix.PR_SPEC_PRCTL == 0 || mode == 0 {
			continue
		}
		calls = append(calls, sc(fmt.Sprintf("tid %d: prctl PR_SET_SPECULATION_CTRL %s %#x", tid, c.name, mode),
			unix.SYS_PRCTL, unix.PR_SET_SPECULATION_CTRL, c.which, uint64(mode), 0, 0))
	}
	return calls
}

// credCalls give a thread, which runs as root with the capabilities it got
// from cr-restore, its dumped credentials. The order matters:
//
//	capset   inheritable set (before the bounding set shrinks under it)
//	bounding set drops (need CAP_SETPCAP)
//	groups, gids, then PR_SET_KEEPCAPS and uids: the permitted set survives
//	capset   effective = all permitted again, for what follows
//	fsgid, fsuid, ambient raises (need the cap in permitted and inheritable)
//	securebits (need CAP_SETPCAP)
//	capset   the dumped sets
func credCalls(s *scratchWriter, t *task, tid uint32, c *pb.Creds, securebits uint32) ([]call, error) {
	pid := t.proc.Pid
	if len(c.Uids) != 4 || len(c.Gids) != 4 {
		return nil, fmt.Errorf("pid %d tid %d: credentials with %d uids and %d gids in the image", pid, tid, len(c.Uids), len(c.Gids))
	}
	cur, err := t.restorerSecurity()
	if err != nil {
		return nil, err
	}
	lacking := (c.CapPrm | c.CapInh) &^ cur.CapPrm
	if extra := c.CapBnd &^ cur.CapBnd; extra != 0 {
		lacking |= extra
	}
	if lacking != 0 {
		return nil, stage.Hint(fmt.Errorf("pid %d tid %d: capabilities %#x are not cr-restore's to give (it has %#x)", pid, tid, lacking, cur.CapPrm),
			"run cr-restore with every capability the dumped process holds")
	}
	lastCap, err := lastCapability()
	if err != nil {
		return nil, err
	}
	where := fmt.Sprintf("tid %d: ", tid)
	var calls []call
	hdr := s.put(sys.CapHeader())
	capset := func(what string, eff, prm, inh uint64) {
		calls = append(calls, sc(fmt.Sprintf("%scapset %s (eff %#x prm %#x inh %#x)", where, what, eff, prm, inh),
			unix.SYS_CAPSET, hdr, s.put(sys.CapData(eff, prm, inh))))
	}
	capset("inheritable", cur.CapPrm, cur.CapPrm, c.CapInh)
	for cp := 0; cp <= lastCap; cp++ {
		bit := uint64(1) << uint(cp)
		if cur.CapBnd&bit != 0 && c.CapBnd&bit == 0 {
			calls = append(calls, sc(fmt.Sprintf("%sprctl PR_CAPBSET_DROP %d", where, cp), unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uint64(cp)))
		}
	}
	groups := uint64(0)
	if len(c.Groups) > 0 {
		groups = s.put(sys.Uint32s(c.Groups))
	}
	calls = append(calls,
		sc(fmt.Sprintf("%ssetgroups %v", where, c.Groups), unix.SYS_SETGROUPS, uint64(len(c.Groups)), groups),
		sc(fmt.Sprintf("%ssetresgid %d %d %d", where, c.Gids[0], c.Gids[1], c.Gids[2]), unix.SYS_SETRESGID, uint64(c.Gids[0]), uint64(c.Gids[1]), uint64(c.Gids[2])),
		sc(where+"prctl PR_SET_KEEPCAPS 1", unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, 1),
		sc(fmt.Sprintf("%ssetresuid %d %d %d", where, c.Uids[0], c.Uids[1], c.Uids[2]), unix.SYS_SETRESUID, uint64(c.Uids[0]), uint64(c.Uids[1]), uint64(c.Uids[2])))
	capset("all effective", cur.CapPrm, cur.CapPrm, c.CapInh)
	// setfsgid and setfsuid return the previous id, never an error.
	calls = append(calls,
		sc(fmt.Sprintf("%ssetfsgid %d", where, c.Gids[3]), unix.SYS_SETFSGID, uint64(c.Gids[3])),
		sc(fmt.Sprintf("%ssetfsuid %d", where, c.Uids[3]), unix.SYS_SETFSUID, uint64(c.Uids[3])))
	for cp := 0; cp <= lastCap; cp++ {
		if c.CapAmb&(1<<uint(cp)) != 0 {
			calls = append(calls, sc(fmt.Sprintf("%sraise ambient capability %d", where, cp), unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uint64(cp), 0, 0))
		}
	}
	if securebits&^secbitKeepCaps == 0 {
		// Only keep-caps, which needs no privilege to clear.
		calls = append(calls, sc(fmt.Sprintf("%sprctl PR_SET_KEEPCAPS %d", where, securebits>>4), unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, uint64(securebits>>4)))
	} else {
		calls = append(calls, sc(fmt.Sprintf("%sprctl PR_SET_SECUREBITS %#x", where, securebits), unix.SYS_PRCTL, unix.PR_SET_SECUREBITS, uint64(securebits)))
	}
	capset("as dumped", c.CapEff, c.CapPrm, c.CapInh)
	return calls, nil
}

var lastCapability = sync.OnceValues(func() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 || n > 63 {
		return 0, fmt.Errorf("/proc/sys/kernel/cap_last_cap: %q", b)
	}
	return n, nil
})

// restorerSecurity is the credentials t's restorer started with
// (cr-restore's), read once for all its threads: each thread changes only
// its own, and the leader's come last. Under rc.mu.
func (t *task) restorerSecurity() (*proc.Security, error) {
	if t.restorerSec == nil {
		sec, err := proc.ReadSecurity(t.pid, t.pid)
		if err != nil {
			return nil, err
		}
		t.restorerSec = sec
	}
	return t.restorerSec, nil
}
