package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestGoProgram: a Go program with goroutines, timers and a ticker (and so
// the runtime's threads, epoll and eventfd) goes on after restore.
func TestGoProgram(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	bin := filepath.Join(t.TempDir(), "goprog")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = filepath.Join(repoRoot, "test", "progs", "goprog")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build goprog: %v\n%s", err, out)
	}
	p := startPath(t, "goprog", bin, func(p *target) []string { return []string{p.progress, p.verdict} })
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	p.killedThenRestored(img)
}

// TestPythonThreads: a Python program with four threads.
func TestPythonThreads(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed (make test installs it)")
	}
	script := filepath.Join(repoRoot, "test", "progs", "pythreads.py")
	p := startPath(t, "pythreads", python, func(p *target) []string { return []string{script, p.progress, p.verdict} })
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	p.killedThenRestored(img)
}

// TestPostgreSQL: a PostgreSQL server (a postmaster and five helper
// processes sharing 140 MiB of MAP_SHARED memory and a System V segment,
// listening on TCP and on a unix socket) holding a table is dumped, killed
// and restored twice (the second time from a dump of the restored server);
// each time it serves the table and takes a write, with its segment under
// the same id, and the image holds the shared memory once.
func TestPostgreSQL(t *testing.T) {
	needTCP(t)
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(bins) == 0 {
		t.Skip("PostgreSQL is not installed (make test installs it)")
	}
	bin := filepath.Dir(bins[len(bins)-1])
	pg, err := user.Lookup("postgres")
	if err != nil {
		t.Skipf("no postgres user (make test installs PostgreSQL): %v", err)
	}
	dir, err := os.MkdirTemp("", "crpipe-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	data := filepath.Join(dir, "data")
	if err := exec.Command("chown", pg.Uid+":"+pg.Gid, dir).Run(); err != nil || os.Chmod(dir, 0o755) != nil {
		t.Fatalf("chown %s: %v", dir, err)
	}
	asPostgres := []string{"nsenter", "--setuid", pg.Uid, "--setgid", pg.Gid, "--"}
	if out, err := exec.Command(asPostgres[0], append(asPostgres[1:], filepath.Join(bin, "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")...).CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	ns := newNetns(t, "pg")
	log, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	p := &target{t: t, name: "postgres", path: filepath.Join(bin, "postgres"), dir: dir, exited: make(chan struct{})}
	p.cmd = exec.Command("nsenter", append([]string{"--net=" + ns.path}, append(asPostgres[1:], p.path, "-D", data, "-p", "5433", "-k", dir, "-c", "listen_addresses=127.0.0.1")...)...)
	p.cmd.Stdout, p.cmd.Stderr = log, log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.pid = p.cmd.Process.Pid
	go func() {
		p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() { stopPostgres(p) })
	psql := func(sql string) (string, error) {
		out, err := exec.Command(filepath.Join(bin, "psql"), "-h", dir, "-p", "5433", "-U", "postgres", "-d", "postgres", "-qAtc", sql).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := psql("select 1"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("postgres does not answer: %v\n%s", err, readFile(log.Name()))
		}
	}
	if out, err := psql("create table t(x int); insert into t select generate_series(1, 10000)"); err != nil {
		t.Fatalf("create table: %v: %s", err, out)
	}
	key, id := postgresSegment(t, data)
	t.Cleanup(func() { removeUnattached(key, id) })
	t.Logf("postgres pid %d, %d more processes, System V segment %d (key %#x)", p.pid, len(descendants(p.pid)), id, key)
	sum := 50005000
	for round := 1; round <= 2; round++ {
		img := filepath.Join(dir, fmt.Sprintf("img%d", round))
		// In the server's network namespace: cr-files finds its unix
		// sockets with sock_diag, which shows its caller's namespace.
		mustShell(t, 60*time.Second, ns.in(fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img)))
		if round == 1 {
			p.waitKilled()
		}
		shared := 0
		for _, l := range strings.Split(string(mustShell(t, 30*time.Second, "crit show "+img).stdout), "\n") {
			if f := strings.Fields(l); len(f) == 7 && (f[4] == "shared-anon" || f[4] == "sysv-shm") && f[5] != "0" {
				shared++
			}
		}
		if shared != 2 {
			t.Errorf("round %d: %d VMAs hold pages of shared memory, want 2 (one per object)", round, shared)
		}
		mustShell(t, 60*time.Second, ns.in("cr-restore -d -i "+img))
		if out, err := psql(fmt.Sprintf("insert into t values (%d); select count(*), sum(x) from t", round)); err != nil || out != fmt.Sprintf("%d|%d", 10000+round, sum+round) {
			t.Fatalf("round %d: after restore: %q, %v\n%s", round, out, err, readFile(log.Name()))
		}
		sum += round
		var ds unix.SysvShmDesc
		if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &ds); err != nil || ds.Perm.Key != key || ds.Nattch == 0 {
			t.Errorf("round %d: segment %d: key %#x, %d attaches (%v)", round, id, ds.Perm.Key, ds.Nattch, err)
		}
	}
}

// postgresSegment reads the key and id of the System V segment a postmaster
// keeps from the 7th line of its postmaster.pid.
func postgresSegment(t *testing.T, data string) (key int32, id int) {
	t.Helper()
	lines := strings.Split(readFile(filepath.Join(data, "postmaster.pid")), "\n")
	if len(lines) < 7 {
		t.Fatalf("postmaster.pid: %q", lines)
	}
	var k uint32
	if _, err := fmt.Sscan(lines[6], &k, &id); err != nil {
		t.Fatalf("postmaster.pid line 7 %q: %v", lines[6], err)
	}
	return int32(k), id
}

// stopPostgres shuts down the server of p (original or restored: it runs
// from p's directory) as its administrator would (SIGINT, fast shutdown),
// which removes its segment too.
func stopPostgres(p *target) {
	if p.isOurs() {
		syscall.Kill(p.pid, syscall.SIGINT)
		for deadline := time.Now().Add(20 * time.Second); p.isOurs() && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
	}
	p.cleanup()
}

// removeUnattached removes System V segment id if it still has key and
// nothing attaches it: what a kill of its owner leaves.
func removeUnattached(key int32, id int) {
	var ds unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &ds); err == nil && ds.Perm.Key == key && ds.Nattch == 0 {
		unix.SysvShmCtl(id, unix.IPC_RMID, nil)
	}
}
