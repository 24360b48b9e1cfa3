package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestInconsistentImages: images whose frames are intact (checksums
// right, written by crit encode) but whose records contradict themselves
// or the kernel: cr-restore refuses each with one error line saying what,
// and leaves no process and no cgroup. Each of these restored before,
// wrongly: the second fd of a number replaced the first, an fd of one
// kind became a duplicate of a file of another, a resource limit given
// twice left another one unset, a session leader
// came back in a group of its own, a protection with unknown bits was
// passed to mmap and mprotect, a mapping both shared and private was
// mapped as the kernel's MAP_SHARED_VALIDATE, pages of another page
// size were laid out in this one's, and so were those of an image without
// an inventory or without its page size (the check was skipped); a thread
// given a stack segment not its kernel's died as it was let go.
func TestInconsistentImages(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore", "crit")...)
	p := startCounter(t, "counter", 0)
	img, at := p.dumpKilled("good.img")
	for _, c := range []struct {
		name   string
		record string
		change func(msg map[string]any)
		want   string
	}{
		{"fd-twice", "files", func(m map[string]any) {
			fds := m["fds"].([]any)
			fds[1].(map[string]any)["fd"] = fds[0].(map[string]any)["fd"]
		}, `fd \d+ appears twice`},
		{"fd-of-another-kind", "files", func(m map[string]any) {
			// An fd given the description of fd 0, a file of another kind.
			fds := m["fds"].([]any)
			first := fds[0].(map[string]any)
			for _, f := range fds[1:] {
				if f := f.(map[string]any); f["kind"] != first["kind"] {
					f["desc_id"] = first["desc_id"]
					return
				}
			}
			t.Fatal("no fd of another kind than fd 0")
		}, `a FD_\w+, of description \d+, which another fd opened as a FD_\w+`},
		{"rlimit-twice", "process-state", func(m map[string]any) {
			lims := m["rlimits"].([]any)
			lims[1].(map[string]any)["resource"] = lims[0].(map[string]any)["resource"] // nil: 0, the default
		}, `resource limit RLIMIT_CPU given twice`},
		{"leader-in-another-group", "process", func(m map[string]any) {
			m["pgid"] = 1
		}, `leads session \d+ but is in process group 1`},
		{"unknown-prot", "mm", func(m map[string]any) {
			m["vmas"].([]any)[0].(map[string]any)["prot"] = 0xff
		}, `protection 0xff.* bits this restore does not know`},
		{"shared-and-private", "mm", func(m map[string]any) {
			m["vmas"].([]any)[0].(map[string]any)["flags"] = 3
		}, `flags 0x3 .*bits this restore does not know`},
		{"other-page-size", "inventory", func(m map[string]any) {
			m["page_size"] = 16384
		}, `made on a machine with 16384-byte pages, this one has 4096`},
		{"stack-segment", "thread-core", func(m map[string]any) {
			m["regs"].(map[string]any)["ss"] = "65535"
		}, `stack segment 0xffff: only the 64-bit user stack segment`},
		{"no-page-size", "inventory", func(m map[string]any) {
			delete(m, "page_size")
		}, `inventory without a page size`},
		{"no-inventory", "inventory", nil, `process record before any inventory record`},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := filepath.Join(p.dir, c.name+".img")
			rewriteImage(t, img, f, c.record, c.change)
			r := shell(t, 60*time.Second, fmt.Sprintf("cr-restore -d -i %s", f))
			if r.err == nil || r.state.ExitCode() != 1 {
				t.Fatalf("cr-restore: %v, want exit status 1", r.err)
			}
			checkErrorLine(t, "cr-restore", r.stderr, regexp.MustCompile(c.want))
			p.checkPidFree()
			p.checkNoCgroup()
		})
	}
	// The control: the image they were made from restores.
	p.restoreDetached(img)
	p.checkProgressFrom(at)
	p.terminate(at)
}

// rewriteImage writes to out the image in, its first record of type typ
// changed by change, or left out where change is nil (through crit decode
// and encode).
func rewriteImage(t *testing.T, in, out, typ string, change func(msg map[string]any)) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(string(mustShell(t, 30*time.Second, "crit decode "+in).stdout)), "\n")
	done := false
	for i, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatal(err)
		}
		if rec["type"] != typ || done {
			continue
		}
		done = true
		if change == nil {
			lines[i] = ""
			continue
		}
		change(rec["msg"].(map[string]any))
		b, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		lines[i] = string(b)
	}
	lines = slices.DeleteFunc(lines, func(l string) bool { return l == "" })
	if !done {
		t.Fatalf("no %s record in %s", typ, in)
	}
	jsonl := out + ".jsonl"
	if err := os.WriteFile(jsonl, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustShell(t, 30*time.Second, fmt.Sprintf("crit encode < %s > %s", jsonl, out))
}

// TestMutatedImages: a fuzzer of the records' meaning. Each round makes
// one change to a good image (mutate), re-encodes it (crit encode writes
// the right checksums and End frame) and restores it. Whatever the
// change, cr-restore must not panic or hang: it refuses the image (exit
// status 1, one error line), or the process comes back, runs or dies of
// its wrong state; and nothing is left once it is gone. A failure names
// the seed and the change.
// By hand, for a longer campaign: CRPIPE_MUTATE_ROUNDS=N runs N rounds
// instead of 40, and CRPIPE_MUTATE_PROG=NAME[:ARGS] mutates an image of
// the test program NAME (test/progs/NAME.c) instead of the counter: an fd
// program (one built on fdprog.h: fd_*, filemap) takes ARGS after its
// directory, any other after its progress and verdict files.
func TestMutatedImages(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore", "crit")...)
	rounds := int64(40)
	if n, err := strconv.ParseInt(os.Getenv("CRPIPE_MUTATE_ROUNDS"), 10, 64); err == nil && n > 0 {
		rounds = n
	}
	var p *target
	if prog := os.Getenv("CRPIPE_MUTATE_PROG"); prog != "" {
		name, arg, _ := strings.Cut(prog, ":")
		if src, _ := os.ReadFile(filepath.Join(repoRoot, "test", "progs", name+".c")); bytes.Contains(src, []byte(`#include "fdprog.h"`)) {
			p = startFdProg(t, name, arg)
		} else {
			p = startStateProg(t, name, strings.Fields(arg)...)
		}
	} else {
		p = startCounter(t, "counter", 0)
	}
	img, _ := p.dumpKilled("good.img")
	good := strings.Split(strings.TrimSpace(string(mustShell(t, 30*time.Second, "crit decode "+img).stdout)), "\n")
	pids := processPids(t, good)
	for seed := int64(1); seed <= rounds; seed++ {
		lines, what := mutate(t, good, seed)
		jsonl, f := filepath.Join(p.dir, "mut.jsonl"), filepath.Join(p.dir, "mut.img")
		if err := os.WriteFile(jsonl, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if r := shell(t, 30*time.Second, fmt.Sprintf("crit encode < %s > %s", jsonl, f)); r.err != nil {
			continue // not a valid record any more (a uint32 out of range)
		}
		// Without -d, cr-restore waits for the root and reaps it: the
		// pid is free at once when it ends.
		cmd := exec.Command(bin("cr-restore"), "-i", f)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var err error
		select {
		case err = <-done:
		case <-time.After(300 * time.Millisecond):
			// Restored and running: end what cr-restore made (its
			// descendants, whatever pids the change gave them).
			for _, pid := range descendants(cmd.Process.Pid) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("seed %d (%s): cr-restore hangs: %s", seed, what, stderr.String())
			}
		}
		if strings.Contains(stderr.String(), "panic") || strings.Contains(stderr.String(), "goroutine ") {
			t.Fatalf("seed %d (%s): cr-restore panicked:\n%s", seed, what, stderr.String())
		}
		if code := cmd.ProcessState.ExitCode(); code == 1 {
			checkErrorLine(t, "cr-restore", []byte(stderr.String()), nil)
		} else if err != nil && !cmd.ProcessState.Exited() {
			t.Fatalf("seed %d (%s): cr-restore itself died: %v", seed, what, err)
		} else {
			// Restored: the root ended (it died of the change), and its
			// children, reparented, may run on. A refused image (status 1)
			// must have left nothing.
			p.killOurs(pids)
		}
		for _, pid := range pids {
			waitPidFree(t, pid, fmt.Sprintf("seed %d (%s; cr-restore: %v %s)", seed, what, err, firstLine([]byte(stderr.String()))))
		}
		t.Logf("seed %d: %s: %v %s", seed, what, err, firstLine([]byte(stderr.String())))
	}
}

// processPids are the pids of the process records of lines (crit
// decode's).
func processPids(t *testing.T, lines []string) []int {
	t.Helper()
	var pids []int
	for _, l := range lines {
		var rec struct {
			Type string
			Msg  struct{ Pid int }
		}
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatal(err)
		}
		if rec.Type == "process" {
			pids = append(pids, rec.Msg.Pid)
		}
	}
	return pids
}

// waitPidFree fails t unless pid is free within a few seconds (a killed
// child of a restored root waits for init to reap it).
func waitPidFree(t *testing.T, pid int, what string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: pid %d exists (state %s, comm %q): a process was left", what, pid, procState(pid), strings.TrimSpace(readFile(fmt.Sprintf("/proc/%d/comm", pid))))
		}
	}
}

// mutate makes one change to lines (crit decode's), chosen by seed, and
// says which: most often a number of a record, else a flag flipped, a
// string replaced, an element of a list dropped or doubled, a pages
// frame moved to another address or process, or a whole frame dropped or
// doubled.
func mutate(t *testing.T, lines []string, seed int64) ([]string, string) {
	t.Helper()
	rnd := rand.New(rand.NewSource(seed))
	type leaf struct {
		rec  int
		path string
		val  any
		set  func(any)
		// drop and double, for an element of a list
		drop, double func()
	}
	var nums, flags, strs, elems []leaf
	recs := make([]map[string]any, len(lines))
	var walk func(rec int, o any, path string, set func(any))
	walk = func(rec int, o any, path string, set func(any)) {
		switch o := o.(type) {
		case map[string]any:
			for k, v := range o {
				walk(rec, v, path+"."+k, func(n any) { o[k] = n })
			}
		case []any:
			for i, v := range o {
				walk(rec, v, fmt.Sprintf("%s.%d", path, i), func(n any) { o[i] = n })
				elems = append(elems, leaf{rec: rec, path: fmt.Sprintf("%s.%d", path, i),
					drop:   func() { set(slices.Delete(slices.Clone(o), i, i+1)) },
					double: func() { set(slices.Insert(slices.Clone(o), i, o[i])) }})
			}
		case float64: // 32-bit numbers: exact
			nums = append(nums, leaf{rec: rec, path: path, val: uint64(o), set: set})
		case bool:
			flags = append(flags, leaf{rec: rec, path: path, val: o, set: set})
		case string: // 64-bit numbers are strings in protobuf's JSON
			if n, err := strconv.ParseUint(o, 10, 64); err == nil {
				nums = append(nums, leaf{rec: rec, path: path, val: n, set: func(v any) { set(fmt.Sprint(v)) }})
			} else {
				strs = append(strs, leaf{rec: rec, path: path, val: o, set: set})
			}
		}
	}
	var pages []int
	for i, l := range lines {
		if err := json.Unmarshal([]byte(l), &recs[i]); err != nil {
			t.Fatal(err)
		}
		switch typ, _ := recs[i]["type"].(string); typ {
		case "", "end":
		case "pages":
			pages = append(pages, i)
		default:
			walk(i, recs[i]["msg"], typ, nil)
		}
	}
	byPath := func(a, b leaf) int { return strings.Compare(a.path, b.path) } // maps iterate in random order
	for _, ls := range [][]leaf{nums, flags, strs, elems} {
		slices.SortFunc(ls, byPath)
	}
	out := slices.Clone(lines)
	encode := func(rec int) {
		b, err := json.Marshal(recs[rec])
		if err != nil {
			t.Fatal(err)
		}
		out[rec] = string(b)
	}
	// A frame, not the header (line 0) nor the end (the last line).
	frame := func() int { return 1 + rnd.Intn(len(lines)-2) }
	switch k := rnd.Intn(16); {
	case k < 8 || len(flags)+len(strs)+len(elems)+len(pages) == 0:
		l := nums[rnd.Intn(len(nums))]
		n := l.val.(uint64)
		to := []uint64{0, 1, n + 1, n - 1, n * 4096, 1<<31 - 1, 1<<32 + 5, 1<<63 - 1, rnd.Uint64()}[rnd.Intn(9)]
		l.set(to)
		encode(l.rec)
		return out, fmt.Sprintf("%s %d -> %d", l.path, n, to)
	case k == 8 && len(flags) > 0:
		l := flags[rnd.Intn(len(flags))]
		l.set(!l.val.(bool))
		encode(l.rec)
		return out, fmt.Sprintf("%s %v -> %v", l.path, l.val, !l.val.(bool))
	case k == 9 && len(strs) > 0:
		l := strs[rnd.Intn(len(strs))]
		to := []string{"", "x", "/", "/nonexistent/../..", strings.Repeat("a/", 3000), "\x00"}[rnd.Intn(6)]
		l.set(to)
		encode(l.rec)
		return out, fmt.Sprintf("%s %q -> %.40q", l.path, l.val, to)
	case k == 10 && len(elems) > 0:
		l := elems[rnd.Intn(len(elems))]
		l.drop()
		encode(l.rec)
		return out, fmt.Sprintf("%s dropped", l.path)
	case k == 11 && len(elems) > 0:
		l := elems[rnd.Intn(len(elems))]
		l.double()
		encode(l.rec)
		return out, fmt.Sprintf("%s doubled", l.path)
	case k == 12 && len(pages) > 0:
		rec := pages[rnd.Intn(len(pages))]
		other := recs[pages[rnd.Intn(len(pages))]]["addr"]
		was := recs[rec]["addr"]
		recs[rec]["addr"] = []any{"0x0", "0x1000", other, "0x7ffffffff000", "0xfffffffffffff000"}[rnd.Intn(5)]
		encode(rec)
		return out, fmt.Sprintf("pages frame %d at %v -> %v", rec, was, recs[rec]["addr"])
	case k == 13 && len(pages) > 0:
		rec := pages[rnd.Intn(len(pages))]
		was := recs[rec]["pid"]
		recs[rec]["pid"] = []any{0, 1, was.(float64) + 1, 1<<32 - 1}[rnd.Intn(4)]
		encode(rec)
		return out, fmt.Sprintf("pages frame %d of pid %v -> %v", rec, was, recs[rec]["pid"])
	case k == 14:
		rec := frame()
		return slices.Delete(out, rec, rec+1), fmt.Sprintf("frame %d (%s) dropped", rec, recs[rec]["type"])
	default:
		rec := frame()
		return slices.Insert(out, rec, out[rec]), fmt.Sprintf("frame %d (%s) doubled", rec, recs[rec]["type"])
	}
}
