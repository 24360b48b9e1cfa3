package parasite

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"crpipe/lib/proc"
)

// TestWitnesses: for this process's own ids the witness is this process
// (no shell started); for other ids a shell with exactly those ids.
func TestWitnesses(t *testing.T) {
	var ws witnesses
	defer ws.close()
	uid, gid := os.Getuid(), os.Getgid()
	ws.start(uid, gid)
	if pid, err := ws.pid(uid, gid); err != nil || pid != os.Getpid() {
		t.Fatalf("the witness for this process's ids %d/%d: pid %d, %v; want this process, %d", uid, gid, pid, err, os.Getpid())
	}
	if uid != 0 {
		t.Skip("not root: cannot start a witness with other ids")
	}
	const nobody = 65534
	ws.start(nobody, nobody)
	pid, err := ws.pid(nobody, nobody)
	if err != nil {
		t.Fatal(err)
	}
	if pid == os.Getpid() {
		t.Fatalf("the witness for uid %d is this process", nobody)
	}
	sec, err := proc.ReadSecurity(pid, pid)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprint([]int{nobody, nobody, nobody, nobody})
	if got := fmt.Sprint(sec.Uid[:]); got != want || fmt.Sprint(sec.Gid[:]) != want {
		t.Fatalf("the witness %d has uids %v gids %v, want %s", pid, sec.Uid, sec.Gid, want)
	}
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "sh" {
		t.Fatalf("the witness %d is %q, not the shell", pid, comm)
	}
}
