package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/proc"
)

// Issue 4: per-process and per-thread task state. Each test program
// (test/progs/{sigstate,timers,procstate,creds,seccomp-*}.c) sets up one
// kind of state, ticks, and on SIGTERM checks it itself; the test dumps it
// through the real pipeline into a file, kills it, restores it and asks for
// its verdict.

// startStateProg starts test program name with PROGRESS, VERDICT and args.
func startStateProg(t *testing.T, name string, args ...string) *target {
	t.Helper()
	need(t, append(pipelineCmds, "cr-restore", "crit")...)
	return start(t, name, func(p *target) []string {
		return append([]string{p.progress, p.verdict}, args...)
	})
}

// dumpKillRestore dumps p through the explicit pipeline into a file,
// checks it with crit, kills the original and restores it (-d). It returns
// the image and the progress at the dump.
func dumpKillRestore(t *testing.T, p *target) (img string, at uint64) {
	t.Helper()
	return dumpKillRestoreWith(t, p, dumpStages)
}

// dumpKillRestoreWith is dumpKillRestore through the given stages.
func dumpKillRestoreWith(t *testing.T, p *target, stages string) (img string, at uint64) {
	t.Helper()
	img = filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d | %s > %s", p.pid, stages, img))
	mustShell(t, 30*time.Second, "crit check "+img)
	mustShell(t, 30*time.Second, "cr-freeze kill < "+img)
	p.waitKilled()
	p.checkNoCgroup()
	at = p.mustProgress()
	p.restoreDetached(img)
	p.checkProgressFrom(at)
	return img, at
}

// TestStateSignals: handlers, blocked signals, signals pending for the
// process and for the thread (with their siginfo: code, value, queue order
// of a real-time signal), delivered exactly once after the restore; the
// alternate signal stack.
func TestStateSignals(t *testing.T) {
	p := startStateProg(t, "sigstate")
	// Seen from outside before the dump: the queues the program built.
	st, err := proc.ReadStatus(p.pid)
	if err != nil {
		t.Fatal(err)
	}
	_, at := dumpKillRestore(t, p)
	after, err := proc.ReadStatus(p.pid)
	if err != nil {
		t.Fatal(err)
	}
	if after.SigPnd != st.SigPnd || after.ShdPnd != st.ShdPnd || after.SigBlk != st.SigBlk || after.SigCgt != st.SigCgt {
		t.Errorf("pending/blocked/caught after restore %#x/%#x/%#x/%#x, before %#x/%#x/%#x/%#x",
			after.SigPnd, after.ShdPnd, after.SigBlk, after.SigCgt, st.SigPnd, st.ShdPnd, st.SigBlk, st.SigCgt)
	}
	p.terminate(at)
}

// TestStateTimers: ITIMER_REAL/VIRTUAL/PROF and POSIX timers (ids with a
// gap, clocks, SIGEV_SIGNAL/THREAD_ID/NONE, intervals, time left) fire at
// the right times after the restore: the program checks the rates against
// its own running time, and a one-shot timer that expires after the
// restore.
func TestStateTimers(t *testing.T) {
	p := startStateProg(t, "timers")
	before, err := proc.ReadTimers(p.pid)
	if err != nil {
		t.Fatal(err)
	}
	_, at := dumpKillRestore(t, p)
	after, err := proc.ReadTimers(p.pid)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("/proc/%d/timers after restore:\n%v\nbefore:\n%v", p.pid, after, before)
	}
	// The one-shot timer fires at 2 s of the program's running time; ticks
	// are 12 ms of it.
	p.waitProgress(280, 20*time.Second)
	p.terminate(at)
}

// TestStateProcess: resource limits, SCHED_BATCH with nice and
// reset-on-fork (or SCHED_RR), CPU affinity, personality, name, dumpable,
// child subreaper, umask and the robust futex list.
func TestStateProcess(t *testing.T) {
	for _, mode := range []string{"batch", "rr"} {
		t.Run(mode, func(t *testing.T) {
			p := startStateProg(t, "procstate", mode)
			_, at := dumpKillRestore(t, p)
			p.terminate(at)
		})
	}
}

// TestStateCreds: a process that left root for other uids and gids, with
// supplementary groups, reduced capability sets (ambient too), a smaller
// bounding set, securebits and no_new_privs, comes back with exactly those,
// and with dumpable as it set it.
func TestStateCreds(t *testing.T) {
	p := startStateProg(t, "creds")
	before, err := proc.ReadSecurity(p.pid, p.pid)
	if err != nil {
		t.Fatal(err)
	}
	_, at := dumpKillRestore(t, p)
	after, err := proc.ReadSecurity(p.pid, p.pid)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprintf("%+v", after) != fmt.Sprintf("%+v", before) {
		t.Errorf("credentials after restore:\n%+v\nbefore:\n%+v", after, before)
	}
	p.terminate(at)
}

// TestStateSeccompFilter: two filters, in order and with their flags, on a
// process that then left root (with and without no_new_privs): restore
// installs them while it may, and they filter after it.
func TestStateSeccompFilter(t *testing.T) {
	for _, mode := range []string{"", "nnp"} {
		name := mode
		if name == "" {
			name = "root-installed"
		}
		t.Run(name, func(t *testing.T) {
			var args []string
			if mode != "" {
				args = append(args, mode)
			}
			p := startStateProg(t, "seccomp-filter", args...)
			_, at := dumpKillRestore(t, p)
			p.terminate(at)
		})
	}
}

// TestStateSeccompStrict: a process in seccomp strict mode, where any
// syscall but read, write, _exit and sigreturn kills it, is dumped (the
// injected calls pass with PTRACE_O_SUSPEND_SECCOMP), restored, and is in
// strict mode again.
func TestStateSeccompStrict(t *testing.T) {
	p := startStateProg(t, "seccomp-strict")
	_, at := dumpKillRestore(t, p)
	sec, err := proc.ReadSecurity(p.pid, p.pid)
	if err != nil {
		t.Fatal(err)
	}
	if sec.Seccomp != 1 {
		t.Errorf("pid %d: seccomp mode %d after restore, want 1 (strict)", p.pid, sec.Seccomp)
	}
	p.terminate(at)
}

// TestStateThreads: per-thread state of 4 workers (names, nice, affinity,
// alternate stacks, robust lists, a signal pending for each), a POSIX timer
// signalling one worker, a seccomp filter synchronized to every thread and
// credentials changed in every thread.
func TestStateThreads(t *testing.T) {
	p := startStateProg(t, "threadstate")
	before := taskUids(t, p.pid)
	_, at := dumpKillRestore(t, p)
	if after := taskUids(t, p.pid); after != before {
		t.Errorf("thread credentials after restore:\n%s\nbefore:\n%s", after, before)
	}
	p.terminate(at)
}

// taskUids lists every thread's Uid and Gid lines.
func taskUids(t *testing.T, pid int) string {
	t.Helper()
	tids, err := proc.Threads(pid)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, tid := range tids {
		sec, err := proc.ReadSecurity(pid, tid)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "tid %d: uid %v gid %v caps %#x/%#x seccomp %d/%d\n", tid, sec.Uid, sec.Gid, sec.CapEff, sec.CapPrm, sec.Seccomp, sec.SeccompFilters)
	}
	return b.String()
}

// TestStateTree: a child with its own credentials, limit, interval timer
// and parent-death signal, under a root parent with a pending signal.
func TestStateTree(t *testing.T) {
	p := startStateProg(t, "treestate")
	t.Cleanup(func() { killDescendants(t, p) })
	_, at := dumpKillRestore(t, p)
	p.terminate(at)
}

// TestStateMissingRecords: an image without cr-seize's thread state (here
// taken out with crit) is refused: restored without it, the process would
// run with cr-restore's credentials.
func TestStateMissingRecords(t *testing.T) {
	p := startStateProg(t, "creds")
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d | %s > %s", p.pid, dumpStages, img))
	mustShell(t, 30*time.Second, fmt.Sprintf("crit decode < %s | grep -v '\"thread-state\"' | crit encode > %s.cut", img, img))
	mustShell(t, 30*time.Second, "cr-freeze kill < "+img)
	p.waitKilled()
	r := shell(t, 60*time.Second, fmt.Sprintf("cr-restore -d -i %s.cut", img))
	if r.err == nil {
		t.Fatal("an image without thread state was restored")
	}
	checkErrorLine(t, "cr-restore", r.stderr, regexp.MustCompile(`pid `+strconv.Itoa(p.pid)+` .*no thread state \(cr-seize\)`))
	p.checkPidFree()
}

// TestStateRefuseTraced: a process traced by someone else (test/progs/
// ptracer) is refused, by cr-freeze or by cr-seize, with a message naming
// the tracer, and runs on, untouched, once the tracer is gone.
func TestStateRefuseTraced(t *testing.T) {
	p := startStateProg(t, "procstate")
	// Not this test: the harness's reaper would take the tracee's stops.
	ready := filepath.Join(p.dir, "traced")
	tracer := exec.Command(prog("ptracer"), strconv.Itoa(p.pid), ready)
	if err := tracer.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			tracer.Process.Kill()
			tracer.Wait()
		}
	}
	defer stop()
	for i := 0; ; i++ {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if i > 1000 {
			t.Fatal("ptracer did not attach within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	img := filepath.Join(p.dir, "img")
	r := shell(t, 30*time.Second, fmt.Sprintf("cr-freeze --pid %d | %s > %s", p.pid, dumpStages, img))
	if r.err == nil {
		t.Fatal("a traced process was dumped")
	}
	want := regexp.MustCompile(`^cr-(freeze|seize): error: pid ` + strconv.Itoa(p.pid) + `\b.* traced by (pid )?` + strconv.Itoa(tracer.Process.Pid) + `\b`)
	if first := firstLine(r.stderr); !want.MatchString(first) {
		t.Errorf("first error %q does not match %q", first, want)
	}
	shell(t, 30*time.Second, fmt.Sprintf("cr-freeze thaw --pid %d", p.pid)) // in case a stage froze it
	stop()
	p.checkRunning()
	p.terminate(0)
}

// TestStateRefuseVfork: a vfork in progress (parent and child share one
// address space) is refused by cr-seize with a message naming both, and
// both run on after a thaw.
func TestStateRefuseVfork(t *testing.T) {
	p := startStateProg(t, "vforker")
	t.Cleanup(func() { killDescendants(t, p) })
	img := filepath.Join(p.dir, "img")
	r := shell(t, 30*time.Second, fmt.Sprintf("cr-freeze --pid %d | %s > %s", p.pid, dumpStages, img))
	if r.err == nil {
		t.Fatal("a vfork in progress was dumped")
	}
	want := regexp.MustCompile(`^cr-seize: error: pid ` + strconv.Itoa(p.pid) + ` shares its address space with pid \d+ \(a vfork in progress`)
	if first := firstLine(r.stderr); !want.MatchString(first) {
		t.Errorf("first error %q does not match %q", first, want)
	}
	mustShell(t, 30*time.Second, fmt.Sprintf("cr-freeze thaw --pid %d", p.pid))
	p.checkNoCgroup()
	v, err := readProgress(p.progress)
	if err != nil {
		t.Fatal(err)
	}
	p.waitProgress(v+10, 5*time.Second) // the child runs on
}

// TestStateRefuseSharedTables: processes that share their fd table
// (CLONE_FILES) or their working directory, root and umask (CLONE_FS) are
// refused by cr-seize with a message naming both, and run on after a thaw.
func TestStateRefuseSharedTables(t *testing.T) {
	for _, c := range []struct{ mode, what string }{
		{"files", `its fd table with pid \d+ \(clone with CLONE_FILES\)`},
		{"fs", `its working directory, root and umask with pid \d+ \(clone with CLONE_FS\)`},
	} {
		t.Run(c.mode, func(t *testing.T) {
			p := startStateProg(t, "cloneshare", c.mode)
			img := filepath.Join(p.dir, "img")
			r := shell(t, 30*time.Second, fmt.Sprintf("cr-freeze --pid %d | %s > %s", p.pid, dumpStages, img))
			if r.err == nil {
				t.Fatalf("processes sharing %s were dumped", c.mode)
			}
			want := regexp.MustCompile(`^cr-seize: error: pid ` + strconv.Itoa(p.pid) + ` shares ` + c.what + `: not supported`)
			if first := firstLine(r.stderr); !want.MatchString(first) {
				t.Errorf("first error %q does not match %q", first, want)
			}
			mustShell(t, 30*time.Second, fmt.Sprintf("cr-freeze thaw --pid %d", p.pid))
			p.checkNoCgroup()
			p.checkRunning()
			p.terminate(0)
		})
	}
}

// TestVmaAdvice: mlock (also on fault), madvise's fork, core dump, KSM,
// THP and read-ahead advice, MAP_DROPPABLE and mseal come back on their
// mappings, with their contents, and a fork after the restore leaves out
// the DONTFORK mapping and wipes the WIPEONFORK one (test/progs/vmadvice.c).
// "big": 12 MiB of such mappings, which cr-pages --lend (cr-dump) has the
// process lend, its VmFlags read through the BPF VMA iterator.
func TestVmaAdvice(t *testing.T) {
	for _, size := range []string{"small", "big"} {
		t.Run(size, func(t *testing.T) { testVmaAdvice(t, size) })
	}
}

func testVmaAdvice(t *testing.T, size string) {
	var img string
	var at uint64
	if size == "big" {
		p := startStateProg(t, "vmadvice", "big")
		img, at = p.dumpKilled("img")
		p.checkNoCgroup()
		p.restoreDetached(img)
		defer p.terminate(at)
	} else {
		p := startStateProg(t, "vmadvice")
		img, at = dumpKillRestore(t, p)
		defer p.terminate(at)
	}
	out := mustShell(t, 30*time.Second, "crit show "+img).stdout
	for _, want := range []string{"[advice lo]", "[advice lo lf]", "[advice dc]", "[advice wf]", "[advice rr]"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("crit show does not list %s:\n%s", want, out)
		}
	}
}

// TestMemfdMappings: memfds mapped shared and held by no fd, one twice
// (writable and executable, as a JIT does), come back as memfds of the same
// names, sizes, modes and seals, one object per memfd, with their contents;
// the pages of the memfd mapped twice are in the image once. A dump of the
// restored process restores too (test/progs/memfd_map.c).
// With "fd" the process keeps an fd of one memfd too: it comes back as an
// fd of the mapped memfd, at its offset, whether the memfd's description
// comes before the VMAs that map it in the stream (cr-files before
// cr-pages) or after them (the brief's order); and a stream with the
// description and without the VMAs is refused.
func TestMemfdMappings(t *testing.T) {
	for _, c := range []struct{ name, mode, stages string }{
		{"mode=", "", dumpStages}, {"mode=fd", "fd", dumpStages}, {"mode=fd,brief", "fd", briefStages},
	} {
		t.Run(c.name, func(t *testing.T) { testMemfdMappings(t, c.mode, c.stages) })
	}
}

func testMemfdMappings(t *testing.T, mode, stages string) {
	p := startStateProg(t, "memfd_map", mode)
	if mode == "fd" && stages == dumpStages {
		img := filepath.Join(p.dir, "nopages")
		mustShell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d | cr-seize | cr-parasite | cr-files | cr-tcp > %s && cr-freeze thaw < %s", p.pid, img, img))
		r := shell(t, 60*time.Second, "cr-restore --pidns -d -i "+img)
		if r.err == nil || !regexp.MustCompile(`memfd "data" \(dev \d+ inode \d+\): its description says VMAs map it, and none of the stream does: stream corrupt`).Match(r.stderr) {
			t.Errorf("a stream without the memfd's VMAs: %s", r)
		}
		p.checkRunning()
	}
	img, at := dumpKillRestoreWith(t, p, stages)
	var jit []string
	for _, l := range strings.Split(string(mustShell(t, 30*time.Second, "crit show "+img).stdout), "\n") {
		if f := strings.Fields(l); len(f) >= 7 && f[6] == "/memfd:jit" {
			jit = append(jit, f[5])
		}
	}
	// 4: the program's check reads the hole, and a read of shmem makes a page.
	if !reflect.DeepEqual(jit, []string{"0", "4"}) && !reflect.DeepEqual(jit, []string{"4", "0"}) {
		t.Errorf("pages of the jit memfd's two views: %v, want 4 in one and 0 in the other", jit)
	}
	img2 := filepath.Join(p.dir, "img2")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img2))
	p.waitKilled()
	at = max(at, p.mustProgress())
	p.restoreDetached(img2)
	p.checkProgressFrom(at)
	p.terminate(at)
}

// TestMemfdMappingsRefused: a mapped memfd with seals other than
// F_SEAL_SEAL, or with data where no mapping shows it (only the mapped
// ranges are dumped), is refused at dump time, and the process runs on.
func TestMemfdMappingsRefused(t *testing.T) {
	for _, c := range []struct{ mode, what string }{
		{"sealed", `a mapping of the sealed memfd /memfd:data \(seals 0x4\)`},
		{"outside", `the memfd /memfd:data, which holds data at offset 0x0 that no mapping of the process shows`},
	} {
		t.Run(c.mode, func(t *testing.T) {
			p := startStateProg(t, "memfd_map", c.mode)
			r := shell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, filepath.Join(p.dir, "img")))
			want := regexp.MustCompile(`cr-pages: (error: )?pid ` + strconv.Itoa(p.pid) + ` vma [0-9a-f]+-[0-9a-f]+: ` + c.what + ` is not supported`)
			if r.err == nil || !want.Match(r.stderr) {
				t.Fatalf("cr-dump: %v, want an error matching %q:\n%s", r.err, want, r.stderr)
			}
			p.checkRunning()
			p.terminate(0)
		})
	}
}

// TestMlockall: what mlockall(MCL_FUTURE) leaves for mappings made later
// (with MCL_ONFAULT or without) comes back, and a process without it does
// not get it: the program maps a region after the restore and checks that
// it is locked, and populated at once or not (test/progs/mlockall.c).
func TestMlockall(t *testing.T) {
	for _, c := range []struct{ mode, record string }{
		{"future", `"mlockall":2`},
		{"onfault", `"mlockall":6`},
		{"none", ""},
	} {
		t.Run(c.mode, func(t *testing.T) {
			p := startStateProg(t, "mlockall", c.mode)
			img, at := dumpKillRestore(t, p)
			out := string(mustShell(t, 30*time.Second, fmt.Sprintf("crit decode < %s | grep '\"process-inside\"'", img)).stdout)
			if c.record != "" && !strings.Contains(out, c.record) || c.record == "" && strings.Contains(out, `"mlockall"`) {
				t.Errorf("the process-inside record is not what mlockall %s leaves (want %q):\n%s", c.mode, c.record, out)
			}
			p.terminate(at)
		})
	}
}

// TestNoVdso: a process laid out as valgrind leaves the program it runs,
// its vDSO unmapped and an fd right under the hard limit of open files
// (test/progs/novdso.c), comes back so: no vDSO mapped over its memory,
// and its fds installed under the same limit. Both failed the restore
// before.
func TestNoVdso(t *testing.T) {
	p := startStateProg(t, "novdso")
	_, at := dumpKillRestore(t, p)
	p.terminate(at)
}

// TestMlockallNoRoom: a process whose soft RLIMIT_AS leaves no room for
// cr-parasite's stub still has its mlockall(MCL_FUTURE) seen (a page
// mapped to look, its soft limits raised to the hard ones for that moment)
// and comes back with it; its limits are as before once the dump is done.
func TestMlockallNoRoom(t *testing.T) {
	p := startStateProg(t, "mlockall", "future")
	st, err := proc.ReadStatus(p.pid)
	if err != nil {
		t.Fatal(err)
	}
	vmSize := regexp.MustCompile(`(?m)^VmSize:\s+(\d+) kB$`).FindStringSubmatch(readFile(fmt.Sprintf("/proc/%d/status", st.Pid)))
	if vmSize == nil {
		t.Fatal("no VmSize in status")
	}
	kb, _ := strconv.ParseUint(vmSize[1], 10, 64)
	lim := unix.Rlimit{Cur: kb << 10, Max: unix.RLIM_INFINITY}
	if err := unix.Prlimit(p.pid, unix.RLIMIT_AS, &lim, nil); err != nil {
		t.Fatal(err)
	}
	limits := readFile(fmt.Sprintf("/proc/%d/limits", p.pid))
	img := filepath.Join(p.dir, "img")
	r := mustShell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d | cr-seize | cr-parasite -v | cr-pages | cr-files | cr-tcp > %s", p.pid, img))
	if !strings.Contains(string(r.stderr), "one call at a time") {
		t.Errorf("cr-parasite mapped its stub (the test wants it refused):\n%s", r.stderr)
	}
	if now := readFile(fmt.Sprintf("/proc/%d/limits", p.pid)); now != limits {
		t.Errorf("limits after the dump:\n%s\nwere:\n%s", now, limits)
	}
	out := string(mustShell(t, 30*time.Second, fmt.Sprintf("crit decode < %s | grep '\"process-inside\"'", img)).stdout)
	if !strings.Contains(out, `"mlockall":2`) {
		t.Errorf("the process-inside record does not say MCL_FUTURE:\n%s\n(cr-parasite said: %s)", out, r.stderr)
	}
	mustShell(t, 30*time.Second, "cr-freeze kill < "+img)
	p.waitKilled()
	at := p.mustProgress()
	p.restoreDetached(img)
	p.checkProgressFrom(at)
	p.terminate(at)
}

// TestRseqRestore: a thread dumped inside an rseq critical section is
// aborted when it runs again after the restore, and its section goes on
// being aborted (test/progs/rseqcs.c): the restore must not lose the
// rseq_cs pointer of its struct rseq, which the kernel clears when it
// finds the thread outside the section (in the restorer).
func TestRseqRestore(t *testing.T) {
	p := startStateProg(t, "rseqcs")
	_, at := dumpKillRestore(t, p)
	p.terminate(at)
}

// TestMitigations: memory-deny-write-execute (PR_SET_MDWE) and per-thread
// speculation mitigations (PR_SET_SPECULATION_CTRL, one thread disabled,
// one force-disabled) come back (test/progs/mitigations.c).
func TestMitigations(t *testing.T) {
	p := startStateProg(t, "mitigations")
	_, at := dumpKillRestore(t, p)
	p.terminate(at)
}

// TestNumaPolicy: each thread's NUMA memory policy (mode, mode flags,
// nodes) comes back (test/progs/numapol.c).
func TestNumaPolicy(t *testing.T) {
	p := startStateProg(t, "numapol")
	_, at := dumpKillRestore(t, p)
	p.terminate(at)
}

// TestNumaPolicyPartial: shared memory whose policy the parent set on the
// first page of a mapping its child shows whole (numapol.c "partial") is
// refused at dump time, naming the child's mapping, and the tree goes on.
func TestNumaPolicyPartial(t *testing.T) {
	need(t, "cr-dump")
	p := startStateProg(t, "numapol", "partial")
	r := shell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, filepath.Join(p.dir, "img")))
	if r.err == nil {
		t.Fatal("the mapping with a policy on a part of it was dumped")
	}
	want := regexp.MustCompile(`cr-parasite: (error: )?pid \d+ tid \d+: vma [0-9a-f]+-[0-9a-f]+: a memory policy that differs within the mapping \(shared memory whose policy another mapping set on a part of it\) is not supported yet`)
	if !want.Match(r.stderr) {
		t.Errorf("cr-dump's errors do not match %q:\n%s", want, r.stderr)
	}
	p.checkRunning()
	p.terminate(0)
}

// TestVmaRefused: memory with a protection key of its own, a part of a
// System V shared memory segment (shmat maps only whole ones), an
// io_uring's rings, memfd_secret memory, a mapping registered with
// userfaultfd and hugetlb memory (anonymous, a file on a hugetlbfs mount
// the test makes, a memfd made with MFD_HUGETLB) are refused at dump time, naming the process and the
// mapping (cr-pages) or the fd the program holds of the object (cr-files,
// first in cr-dump), without a hint where none helps (an io_uring's says
// how to do without one), and the process goes on running. The userfaultfd case
// runs with 12 MiB more ("big"), so that cr-pages has the process lend
// its pages and tries the BPF VMA iterator first, whose check never sees
// that flag: smaps must still be read, and the refusal made.
func TestVmaRefused(t *testing.T) {
	need(t, "cr-dump")
	const hugeHint = "hint: run the program without hugetlb pages if it can"
	// fdWhat: the program holds an fd of the object too, which cr-files,
	// before cr-pages in cr-dump, refuses first; cr-pages' refusal of the
	// mapping is then checked in a pipeline without cr-files.
	for _, c := range []struct{ mode, what, hint, fdWhat, fdHint string }{
		{"pkey", `memory with protection key [1-9][0-9]* \(pkey_mprotect\)`, "", "", ""},
		{"sysv", `a part of System V shared memory segment \d+ \(61440 of its 65536 bytes mapped; the rest was unmapped\)`, "", "", ""},
		{"uring", `an io_uring ring \(anon_inode:\[io_uring\]\)`, "hint: the kernel can neither show an io_uring's state nor build it again; run the program without io_uring",
			`io_uring \(anon_inode:\[io_uring\]\)`, "hint: the kernel can neither show an io_uring's state nor build it again; run the program without io_uring"},
		{"secret", `memory of memfd_secret\(2\) \(/secretmem\), which no other process can read`, "",
			`memfd_secret\(2\) file \(its memory no other process can read\)`, ""},
		{"uffd", `a mapping registered with userfaultfd`, "hint: unregister it (UFFDIO_UNREGISTER) before checkpointing",
			`userfaultfd \(anon_inode:\[userfaultfd\]\)`, "hint: unregister its ranges (UFFDIO_UNREGISTER) and close it before checkpointing"},
		{"hugetlb", `a hugetlb mapping \(MAP_HUGETLB\)`, hugeHint, "", ""},
		{"hugetlbfs", `a hugetlbfs mapping of /\S+/huge/file`, hugeHint, "", ""},
		{"hugememfd", `a mapping of the hugetlb memfd /memfd:huge`, hugeHint, `hugetlb memfd \(/memfd:huge \(deleted\)\)`, hugeHint},
	} {
		t.Run(c.mode, func(t *testing.T) {
			if b, err := os.ReadFile("/proc/cpuinfo"); c.mode == "pkey" && (err != nil || !regexp.MustCompile(`\bospke\b`).Match(b)) {
				t.Skip("this CPU or kernel has no memory protection keys (no ospke in /proc/cpuinfo)")
			}
			if b, err := os.ReadFile("/proc/sys/kernel/io_uring_disabled"); c.mode == "uring" && (err != nil || strings.TrimSpace(string(b)) == "2") {
				t.Skip("this kernel has no io_uring, or has it disabled (kernel.io_uring_disabled)")
			}
			if c.mode == "secret" {
				fd, _, errno := unix.Syscall(unix.SYS_MEMFD_SECRET, unix.O_CLOEXEC, 0, 0)
				if errno != 0 {
					t.Skipf("this kernel has no memfd_secret (%v; secretmem.enable=0?)", errno)
				}
				unix.Close(int(fd))
			}
			if c.mode == "hugememfd" {
				fd, err := unix.MemfdCreate("probe", unix.MFD_CLOEXEC|unix.MFD_HUGETLB)
				if err != nil {
					t.Skipf("this kernel makes no hugetlb memfd (%v)", err)
				}
				unix.Close(fd)
			}
			args := []string{c.mode}
			if c.mode == "uffd" {
				args = append(args, "big")
			}
			if c.mode == "hugetlbfs" {
				args = append(args, mountHugetlbfs(t)+"/file")
			}
			p := startStateProg(t, "vmadvice", args...)
			checkRefusal := func(r result, want *regexp.Regexp, hint string) {
				t.Helper()
				if r.err == nil {
					t.Fatalf("the %s mapping was dumped", c.mode)
				}
				if !want.Match(r.stderr) {
					t.Errorf("the errors do not match %q:\n%s", want, r.stderr)
				}
				if hint == "" && bytes.Contains(r.stderr, []byte("hint:")) {
					t.Errorf("a hint where none helps:\n%s", r.stderr)
				}
				if hint != "" && !bytes.Contains(r.stderr, []byte(hint)) {
					t.Errorf("the errors do not hint %q:\n%s", hint, r.stderr)
				}
			}
			vmaWant := regexp.MustCompile(`cr-pages: (error: )?pid ` + strconv.Itoa(p.pid) + ` vma [0-9a-f]+-[0-9a-f]+: ` + c.what + ` is not supported`)
			r := shell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, filepath.Join(p.dir, "img")))
			if c.fdWhat == "" {
				checkRefusal(r, vmaWant, c.hint)
			} else {
				checkRefusal(r, regexp.MustCompile(`cr-files: (error: )?pid `+strconv.Itoa(p.pid)+` fd \d+: `+c.fdWhat+` is not supported`), c.fdHint)
				p.checkRunning()
				r = shell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d | cr-seize | cr-parasite | cr-pages > /dev/null; s=$?; cr-freeze thaw --pid %d; exit $s", p.pid, p.pid))
				checkRefusal(r, vmaWant, c.hint)
			}
			p.checkRunning()
			p.terminate(0)
		})
	}
}

// mountHugetlbfs mounts a hugetlbfs of the test's own, unmounted at its
// end, or skips where the kernel has none. (The programs map its files
// MAP_NORESERVE: no huge page need be reserved.)
func mountHugetlbfs(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "huge")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("crpipe-test", dir, "hugetlbfs", 0, ""); err != nil {
		if err == unix.ENODEV {
			t.Skip("this kernel has no hugetlbfs")
		}
		t.Fatalf("mount hugetlbfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// TestLandlockRefused: a process sandboxed with Landlock, in its main
// thread or in another one (test/progs/landlocked.c), is refused by
// cr-parasite, whose witness it may not look at; no interface shows a
// sandbox, and a restore would have given it back without one. The
// process runs on in its sandbox.
func TestLandlockRefused(t *testing.T) {
	need(t, "cr-dump")
	if abi, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, 1); errno != 0 || int(abi) < 1 {
		t.Skipf("this kernel has no Landlock (landlock_create_ruleset: %v)", errno)
	}
	for _, mode := range []string{"process", "thread"} {
		t.Run(mode, func(t *testing.T) {
			p := startStateProg(t, "landlocked", mode)
			r := shell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, filepath.Join(p.dir, "img")))
			if r.err == nil {
				t.Fatal("the sandboxed process was dumped")
			}
			want := regexp.MustCompile(`cr-parasite: pid ` + strconv.Itoa(p.pid) + ` tid \d+: the thread is sandboxed \(Landlock, or another LSM confines it\)`)
			if !want.Match(r.stderr) {
				t.Errorf("cr-dump's errors do not match %q:\n%s", want, r.stderr)
			}
			p.checkRunning()
			p.terminate(0)
		})
	}
}

// TestSysvShm: System V shared memory (test/progs/sysvshm.c: a segment
// with a key, locked, attached read-write and read-only; a removed one)
// comes back under the same ids with its contents. On the same machine the
// segment that outlived the killed process is taken again; when it is gone
// too it is made again. A restore beside the running original, whose
// segments are in use, is refused and leaves no segment behind.
func TestSysvShm(t *testing.T) {
	key := 0x43520000 | os.Getpid()&0xffff
	removeKey := func() {
		if id, err := unix.SysvShmGet(key, 0, 0); err == nil {
			unix.SysvShmCtl(id, unix.IPC_RMID, nil)
		}
	}
	removeKey()
	t.Cleanup(removeKey)
	p := startStateProg(t, "sysvshm", strconv.Itoa(key))
	idA, err := unix.SysvShmGet(key, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	dumpKillRestore(t, p) // A outlived the kill: taken again
	if id, err := unix.SysvShmGet(key, 0, 0); id != idA || err != nil {
		t.Fatalf("after restore the key names segment %d (%v), not %d", id, err, idA)
	}

	img := filepath.Join(p.dir, "img2")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d | %s > %s", p.pid, dumpStages, img))
	mustShell(t, 30*time.Second, "cr-freeze kill < "+img)
	p.waitKilled()
	if _, err := unix.SysvShmCtl(idA, unix.IPC_RMID, nil); err != nil {
		t.Fatal(err)
	}
	segs := func() int {
		s, err := proc.ReadSysvShm()
		if err != nil {
			t.Fatal(err)
		}
		return len(s)
	}
	// A restore that fails once the segments are made removes them. (Once
	// the killed process is reaped: a restore that finds its pid still
	// taken reads the whole stream ahead, and fails before any segment.)
	for deadline := time.Now().Add(10 * time.Second); procState(p.pid) != ""; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d is not reaped", p.pid)
		}
	}
	before := segs()
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	cut := img + ".cut"
	if err := os.WriteFile(cut, b[:len(b)-64], 0o600); err != nil {
		t.Fatal(err)
	}
	if r := shell(t, 60*time.Second, "cr-restore -d -i "+cut); r.err == nil || !strings.Contains(string(r.stderr), "stream truncated") {
		t.Fatalf("a truncated image: %s", r)
	}
	if after := segs(); after != before {
		t.Errorf("the failed restore left %d segments (%d before)", after, before)
	}
	at := p.mustProgress()
	p.restoreDetached(img) // A made again
	p.checkProgressFrom(at)

	before = segs()
	img3 := filepath.Join(p.dir, "img3")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d --leave-running -o %s", p.pid, img3))
	r := shell(t, 60*time.Second, "cr-restore --pidns -d -i "+img3)
	if r.err == nil || !regexp.MustCompile(`System V shared memory segment \d+ \(key 0x[0-9a-f]+\): in use here \(nattch \d+\)`).Match(r.stderr) {
		t.Errorf("a restore beside the original: %s", r)
	}
	if after := segs(); after != before {
		t.Errorf("the refused restore left %d segments (%d before)", after, before)
	}
	p.terminate(at)
}

// TestChroot: a process that chroot()ed after opening a file and mapping
// its libraries (test/progs/chrooted.c) is dumped, and restored in its
// jail with the file open: /proc shows those paths from the dumper's root,
// not from the jail.
func TestChroot(t *testing.T) {
	need(t, append(pipelineCmds, "cr-restore", "crit")...)
	p := start(t, "chrooted", func(p *target) []string { return []string{p.progress, p.verdict, p.dir} })
	_, at := dumpKillRestore(t, p)
	if root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", p.pid)); err != nil || root != filepath.Join(p.dir, "jail") {
		t.Errorf("the restored process's root is %q (%v), want %s", root, err, filepath.Join(p.dir, "jail"))
	}
	p.terminate(at)
}

// TestRestoreIntoCgroup: cr-restore --cgroup starts the restored tree, every
// process of it, in a cgroup v2 directory the test made (as a container
// runtime would), and refuses a directory that is not a cgroup.
func TestRestoreIntoCgroup(t *testing.T) {
	mount, err := proc.Cgroup2Mount()
	if err != nil {
		t.Skipf("no cgroup2 mount: %v", err)
	}
	cg := testCgroup(t, mount, "restore")
	p := startStateProg(t, "treestate")
	t.Cleanup(func() { killDescendants(t, p) })
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d | %s > %s", p.pid, dumpStages, img))
	mustShell(t, 30*time.Second, "cr-freeze kill < "+img)
	p.waitKilled()
	at := p.mustProgress()
	if r := shell(t, 30*time.Second, "cr-restore -d --cgroup /tmp -i "+img); r.err == nil || !strings.Contains(string(r.stderr), "not a cgroup v2 directory") {
		t.Fatalf("--cgroup /tmp: %s", r)
	}
	pidfile := filepath.Join(p.dir, "restored.pid")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-restore -d -i %s --pidfile %s --cgroup %s", img, pidfile, cg))
	p.checkPidfile(pidfile)
	want := strings.TrimPrefix(cg, mount)
	tree := append([]int{p.pid}, descendants(p.pid)...)
	if len(tree) < 2 {
		t.Fatalf("restored tree %v: want the root and its children", tree)
	}
	for _, pid := range tree {
		if got, err := proc.Cgroup2Of(pid); err != nil || got != want {
			t.Errorf("pid %d is in cgroup %q (%v), want %q", pid, got, err, want)
		}
	}
	p.checkProgressFrom(at)
	p.terminate(at)
}

// TestRestoreFill: private anonymous memory of every shape (holes, pages
// of zeros, read-only, PROT_NONE, MAP_NORESERVE, MAP_GROWSDOWN) comes back
// when placed with UFFDIO_COPY, with nothing left registered with
// userfaultfd while cr-restore still runs (its copy of the userfaultfd
// would keep a registration alive: the next dump refuses such memory);
// dumped again, it comes back as well when written with process_vm_writev
// (--no-uffd), and checks itself (test/progs/anonfill.c). With a region of
// 48 MiB, the same memory is lent by the process (cr-dump runs cr-pages
// --lend), not copied.
func TestRestoreFill(t *testing.T) {
	for _, c := range []struct{ bigMiB, runs int }{{2, 0}, {48, 0}, {2, 4100}} {
		t.Run(fmt.Sprintf("%dMiB-%druns", c.bigMiB, c.runs), func(t *testing.T) { restoreFill(t, c.bigMiB, c.runs) })
	}
}

// restoreFill: with bigMiB >= 32 or runs, the process lends its pages;
// with more runs than one start of the lender takes (inject.MaxLendRuns,
// 4096), it lends them in two goes.
func restoreFill(t *testing.T, bigMiB, runs int) {
	p := startStateProg(t, "anonfill", strconv.Itoa(bigMiB), strconv.Itoa(runs))
	img := filepath.Join(p.dir, "img")
	r := mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -v -t %d -o %s", p.pid, img))
	if lent, want := strings.Contains(string(r.stderr), "lends its private anonymous pages"), bigMiB >= 32 || runs > 0; lent != want {
		t.Errorf("with %d MiB and %d runs, the process lent its pages: %v; want %v", bigMiB, runs, lent, want)
	}
	if again, want := strings.Contains(string(r.stderr), "runs: again"), runs > 4096; again != want {
		t.Errorf("with %d runs, the lender started again: %v; want %v", runs, again, want)
	}
	p.waitKilled()
	at := p.mustProgress()
	pidfile, log := filepath.Join(p.dir, "restored.pid"), filepath.Join(p.dir, "restore.log")
	logf, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	restoreWaiting(t, logf, "-v", "-i", img, "--pidfile", pidfile) // it stays while the process runs
	if !awaitFile(pidfile, 30*time.Second) {
		t.Fatalf("no pidfile after 30 s; cr-restore says:\n%s", readFile(log))
	}
	p.checkPidfile(pidfile)
	p.checkProgressFrom(at)
	m := regexp.MustCompile(`pid \d+: (\d+) MiB of pages placed with UFFDIO_COPY`).FindStringSubmatch(readFile(log))
	if m == nil {
		t.Fatalf("cr-restore -v does not say it placed pages with UFFDIO_COPY:\n%s", readFile(log))
	}
	if mib, _ := strconv.Atoi(m[1]); mib < bigMiB+1 {
		t.Errorf("%s MiB placed with UFFDIO_COPY, want the %d MiB of the program's regions but the holes", m[1], bigMiB+2)
	}
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	at = p.mustProgress()
	os.Remove(pidfile)
	r = mustShell(t, 60*time.Second, fmt.Sprintf("cr-restore -v --no-uffd -d -i %s --pidfile %s", img, pidfile))
	p.checkPidfile(pidfile)
	if strings.Contains(string(r.stderr), "UFFDIO_COPY") {
		t.Errorf("cr-restore --no-uffd placed pages with UFFDIO_COPY:\n%s", r.stderr)
	}
	p.checkProgressFrom(at)
	p.terminate(at)
}

// testCgroup makes a cgroup v2 directory of this test (its name carries the
// test binary's pid) and removes it at cleanup: only processes of the test
// live there, and the last ones may still be exiting.
func testCgroup(t *testing.T, mount, name string) string {
	t.Helper()
	cg := filepath.Join(mount, fmt.Sprintf("crpipe-e2e-%d-%s", os.Getpid(), name))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.WriteFile(filepath.Join(cg, "cgroup.freeze"), []byte("0"), 0) // a test that failed frozen
		var err error
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if err = os.Remove(cg); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
		}
		t.Errorf("remove the test's cgroup: %v", err)
	})
	return cg
}

// TestRestoreDumpedCgroups: cr-restore --dumped-cgroups starts every
// process in the cgroup it was dumped from (the root in one the test made,
// its children in another), and refuses, before creating anything, an
// image whose cgroup is gone.
func TestRestoreDumpedCgroups(t *testing.T) {
	mount, err := proc.Cgroup2Mount()
	if err != nil {
		t.Skipf("no cgroup2 mount: %v", err)
	}
	rootCg, kidsCg := testCgroup(t, mount, "root"), testCgroup(t, mount, "kids")
	p := startStateProg(t, "treestate")
	t.Cleanup(func() { killDescendants(t, p) })
	kids := descendants(p.pid)
	if len(kids) == 0 {
		t.Fatal("treestate has no children")
	}
	move := func(dir string, pid int) {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			t.Fatal(err)
		}
	}
	move(rootCg, p.pid)
	for _, k := range kids {
		move(kidsCg, k)
	}
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d | %s > %s", p.pid, dumpStages, img))
	mustShell(t, 30*time.Second, "cr-freeze kill < "+img)
	p.waitKilled()
	at := p.mustProgress()

	if err := os.Remove(kidsCg); err != nil {
		t.Fatal(err)
	}
	r := shell(t, 30*time.Second, "cr-restore -d --dumped-cgroups -i "+img)
	if r.err == nil || !regexp.MustCompile(`pid \d+ was dumped in cgroup `+regexp.QuoteMeta(kidsCg)).Match(r.stderr) {
		t.Fatalf("restore with a dumped cgroup gone: %s", r)
	}
	p.checkPidFree()
	if err := os.Mkdir(kidsCg, 0o755); err != nil {
		t.Fatal(err)
	}

	pidfile := filepath.Join(p.dir, "restored.pid")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-restore -d -i %s --pidfile %s --dumped-cgroups", img, pidfile))
	p.checkPidfile(pidfile)
	want := map[int]string{p.pid: strings.TrimPrefix(rootCg, mount)}
	for _, k := range kids {
		want[k] = strings.TrimPrefix(kidsCg, mount)
	}
	for pid, w := range want {
		if got, err := proc.Cgroup2Of(pid); err != nil || got != w {
			t.Errorf("pid %d is in cgroup %q (%v), want %q", pid, got, err, w)
		}
	}
	p.checkProgressFrom(at)
	p.terminate(at)
}
