package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestStateParasiteBatch: on the same frozen targets, cr-parasite's batch
// (all calls of a thread in one run of a stub mapped into the process)
// gives exactly the records of one injected call at a time, and the same
// again when run twice; no mapping is left behind, and the targets, thawed,
// check every piece of their state themselves (issue 4, item 4).
func TestStateParasiteBatch(t *testing.T) {
	// Timers count down while frozen; their other fields must match.
	// (timers, whose timers keep firing while frozen, changes its pending
	// signals from one run to the next; TestStateTimers dumps it.)
	countdown := regexp.MustCompile(`"value_ns":"[0-9]+"`)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"sigstate", nil}, {"procstate", nil}, {"creds", nil},
		{"seccomp-filter", []string{"nnp"}}, {"seccomp-strict", nil},
		{"threadstate", nil}, {"treestate", nil},
		{"mlockall", []string{"future"}}, {"mlockall", []string{"onfault"}}, {"mitigations", nil}, {"numapol", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startStateProg(t, tc.name, tc.args...)
			if tc.name == "treestate" {
				t.Cleanup(func() { killDescendants(t, p) })
			}
			seized := filepath.Join(p.dir, "seized")
			mustShell(t, 30*time.Second, fmt.Sprintf("cr-freeze --pid %d | cr-seize > %s", p.pid, seized))
			thawed := false
			thaw := func() {
				if !thawed {
					thawed = true
					mustShell(t, 30*time.Second, "cr-freeze thaw < "+seized)
				}
			}
			t.Cleanup(thaw)
			// threadstate's 40 ms timer fires once more and stays queued
			// (a timer's signal is queued once; overruns are counted at
			// delivery), so that every run sees the same pending signals.
			time.Sleep(100 * time.Millisecond)
			at := p.mustProgress()
			maps := readFile(fmt.Sprintf("/proc/%d/maps", p.pid))
			run := func(name, flags string) string {
				out := filepath.Join(p.dir, name)
				mustShell(t, 30*time.Second, fmt.Sprintf("cr-parasite %s < %s | crit decode > %s", flags, seized, out))
				b, err := os.ReadFile(out)
				if err != nil {
					t.Fatal(err)
				}
				return countdown.ReplaceAllString(string(b), `"value_ns":"…"`)
			}
			batch := run("batch.json", "")
			if again := run("again.json", ""); again != batch {
				t.Errorf("two batch runs differ: %s", firstDiff(batch, again))
			}
			if each := run("each.json", "--one-at-a-time"); each != batch {
				t.Errorf("batch and one call at a time differ: %s", firstDiff(batch, each))
			}
			if now := readFile(fmt.Sprintf("/proc/%d/maps", p.pid)); now != maps {
				t.Errorf("mappings changed:\n%s\nwere:\n%s", now, maps)
			}
			thaw()
			p.terminate(at)
		})
	}
}

// firstDiff shows the first line where a and b differ.
func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range min(len(al), len(bl)) {
		if al[i] != bl[i] {
			return fmt.Sprintf("line %d:\n%s\n%s", i+1, al[i], bl[i])
		}
	}
	return fmt.Sprintf("%d lines against %d", len(al), len(bl))
}
