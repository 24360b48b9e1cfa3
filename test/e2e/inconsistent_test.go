package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
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
	img := filepath.Join(p.dir, "good.img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	p.waitKilled()
	at := p.mustProgress()
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
