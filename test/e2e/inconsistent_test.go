package e2e

import (
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
// mapped as the kernel's MAP_SHARED_VALIDATE, and pages of another page
// size were laid out in this one's.
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
// changed by change (through crit decode and encode).
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
		change(rec["msg"].(map[string]any))
		b, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		lines[i], done = string(b), true
	}
	if !done {
		t.Fatalf("no %s record in %s", typ, in)
	}
	jsonl := out + ".jsonl"
	if err := os.WriteFile(jsonl, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustShell(t, 30*time.Second, fmt.Sprintf("crit encode < %s > %s", jsonl, out))
}

// TestMutatedImages: a fuzzer of the records' meaning. Each round changes
// one number of one record of a good image (to 0, ±1, ×4096, or a large
// value), re-encodes it (crit encode writes the right checksums) and
// restores it. Whatever the change, cr-restore must not panic or hang:
// it refuses the image (exit status 1, one error line), or the process
// comes back, runs or dies of its wrong state; and nothing is left once
// it is gone. A failure names the seed and the change.
func TestMutatedImages(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore", "crit")...)
	p := startCounter(t, "counter", 0)
	img, _ := p.dumpKilled("good.img")
	good := strings.Split(strings.TrimSpace(string(mustShell(t, 30*time.Second, "crit decode "+img).stdout)), "\n")
	for seed := int64(1); seed <= 40; seed++ {
		lines, what := mutate(t, good, seed)
		jsonl, f := filepath.Join(p.dir, "mut.jsonl"), filepath.Join(p.dir, "mut.img")
		if err := os.WriteFile(jsonl, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if r := shell(t, 30*time.Second, fmt.Sprintf("crit encode < %s > %s", jsonl, f)); r.err != nil {
			continue // not a valid record any more (a uint32 out of range)
		}
		// Without -d, cr-restore waits for the process and reaps it: the
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
			// Restored and running: end it by its pid, if it is ours.
			if p.isOurs() {
				syscall.Kill(p.pid, syscall.SIGKILL)
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
		}
		p.checkPidFree()
		t.Logf("seed %d: %s: %v %s", seed, what, err, firstLine([]byte(stderr.String())))
	}
}

// mutate changes one number in one record of lines (crit decode's),
// chosen by seed, and says which.
func mutate(t *testing.T, lines []string, seed int64) ([]string, string) {
	t.Helper()
	rnd := rand.New(rand.NewSource(seed))
	type leaf struct {
		rec  int
		set  func(any)
		path string
		v    uint64
	}
	var leaves []leaf
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
			}
		case float64: // 32-bit numbers: exact
			leaves = append(leaves, leaf{rec, set, path, uint64(o)})
		case string: // 64-bit numbers are strings in protobuf's JSON
			if n, err := strconv.ParseUint(o, 10, 64); err == nil {
				leaves = append(leaves, leaf{rec, func(v any) { set(fmt.Sprint(v)) }, path, n})
			}
		}
	}
	for i, l := range lines {
		if err := json.Unmarshal([]byte(l), &recs[i]); err != nil {
			t.Fatal(err)
		}
		if typ, _ := recs[i]["type"].(string); typ != "" && typ != "pages" && typ != "end" {
			walk(i, recs[i]["msg"], typ, nil)
		}
	}
	slices.SortFunc(leaves, func(a, b leaf) int { return strings.Compare(a.path, b.path) }) // maps iterate in random order
	l := leaves[rnd.Intn(len(leaves))]
	n := l.v
	to := []uint64{0, 1, n + 1, n - 1, n * 4096, 1<<31 - 1, 1<<32 + 5, 1<<63 - 1, rnd.Uint64()}[rnd.Intn(9)]
	l.set(to)
	out := slices.Clone(lines)
	b, err := json.Marshal(recs[l.rec])
	if err != nil {
		t.Fatal(err)
	}
	out[l.rec] = string(b)
	return out, fmt.Sprintf("%s %d -> %d", l.path, n, to)
}
