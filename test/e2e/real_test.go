package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/sys"
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

// TestPostgreSQL: a PostgreSQL server (a postmaster and its helper
// processes sharing 140 MiB of MAP_SHARED memory and a System V segment,
// listening on TCP and on a unix socket) holding a table, with a client
// session open over TCP, is dumped, killed and restored twice (the second
// time from a dump of the restored server); each time it serves the table
// and takes a write, the session goes on, the segment keeps its id, and
// the image holds the shared memory once. The first time, pgbench (4
// clients over TCP) runs through it and no transaction fails.
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
	p.launch()
	t.Cleanup(func() { p.stop(syscall.SIGINT) }) // a fast shutdown, which removes the segment
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
	// A session over TCP from outside the dump: its backend is dumped with
	// the connection, and the client notices nothing.
	session := exec.Command("nsenter", "--net="+ns.path, "--", filepath.Join(bin, "psql"), "-h", "127.0.0.1", "-p", "5433", "-U", "postgres", "-d", "postgres", "-qAt")
	in, err := session.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := session.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	session.Stderr = log
	if err := session.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		session.Wait()
	})
	replies := bufio.NewReader(out)
	answer := func(what, sql string) string {
		t.Helper()
		got := make(chan string, 1)
		go func() {
			io.WriteString(in, sql+"\n")
			line, _ := replies.ReadString('\n')
			got <- strings.TrimSpace(line)
		}()
		select {
		case line := <-got:
			return line
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: the session does not answer\n%s", what, readFile(log.Name()))
			return ""
		}
	}
	ask := func(what, sql, want string) {
		t.Helper()
		if line := answer(what, sql); line != want {
			t.Fatalf("%s: the session's answer %q, want %q\n%s", what, line, want, readFile(log.Name()))
		}
	}
	ask("before the dump", "select count(*) from t;", "10000")
	// pgbench, 4 clients over TCP, runs through the first dump and restore.
	if out, err := exec.Command(filepath.Join(bin, "pgbench"), "-h", dir, "-p", "5433", "-U", "postgres", "-i", "-s", "1", "-q", "postgres").CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	var benchOut bytes.Buffer
	bench := exec.Command("nsenter", "--net="+ns.path, "--", filepath.Join(bin, "pgbench"), "-h", "127.0.0.1", "-p", "5433", "-U", "postgres", "-c", "4", "-T", "10", "postgres")
	bench.Stdout, bench.Stderr = &benchOut, &benchOut
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	benchDone := make(chan error, 1)
	go func() { benchDone <- bench.Wait() }()
	t.Cleanup(func() {
		bench.Process.Kill()
		<-benchDone
	})
	// Asked in the session, not by a psql of its own: such a client
	// connects by the socket's path from this test's network namespace,
	// and its backend, still on its way out when the dump freezes the
	// server, holds a socket of that namespace, which cr-files rightly
	// refuses (sock_diag lists the dump's namespace).
	transactions := func() int {
		t.Helper()
		out := answer("pgbench_history", "select count(*) from pgbench_history;")
		n, err := strconv.Atoi(out)
		if err != nil {
			t.Fatalf("pgbench_history: %q, %v", out, err)
		}
		return n
	}
	for deadline := time.Now().Add(20 * time.Second); transactions() < 100; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("pgbench does not run:\n%s", benchOut.String())
		}
	}
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
		ask(fmt.Sprintf("round %d", round), "select count(*) from t;", strconv.Itoa(10000+round))
		if round == 1 {
			at := transactions()
			select {
			case err := <-benchDone:
				benchDone <- err
				if err != nil || !strings.Contains(benchOut.String(), "number of failed transactions: 0 ") {
					t.Fatalf("pgbench across the dump and restore: %v\n%s", err, benchOut.String())
				}
			case <-time.After(60 * time.Second):
				t.Fatalf("pgbench does not end:\n%s", benchOut.String())
			}
			if n := transactions(); n <= at {
				t.Fatalf("pgbench made no transaction after the restore (%d before, %d after)\n%s", at, n, benchOut.String())
			} else {
				t.Logf("pgbench: %d transactions by the restore, %d in all, none failed", at, n)
			}
		}
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

// removeUnattached removes System V segment id if it still has key and
// nothing attaches it: what a kill of its owner leaves.
func removeUnattached(key int32, id int) {
	var ds unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &ds); err == nil && ds.Perm.Key == key && ds.Nattch == 0 {
		unix.SysvShmCtl(id, unix.IPC_RMID, nil)
	}
}

// TestNginx: nginx (a master and two workers; a limit_req zone in shared
// memory; the master hears its workers on socketpairs with O_ASYNC) serves
// after a restore, reloads its configuration (SIGHUP: new workers), and
// serves again after a dump and restore of the restored server.
func TestNginx(t *testing.T) {
	needTCP(t)
	path, err := exec.LookPath("nginx")
	if err != nil {
		t.Skip("nginx is not installed (make test installs it)")
	}
	exe, _ := filepath.EvalSymlinks(path)
	dir := t.TempDir()
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`daemon off;
master_process on;
worker_processes 2;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %[1]s;
  proxy_temp_path %[1]s;
  fastcgi_temp_path %[1]s;
  uwsgi_temp_path %[1]s;
  scgi_temp_path %[1]s;
  limit_req_zone $binary_remote_addr zone=one:1m rate=1000r/s;
  server { listen 127.0.0.1:7381; location / { limit_req zone=one burst=100; return 200 "crpipe\n"; } }
}
`, dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	ns := newNetns(t, "nginx")
	p := &target{t: t, name: "nginx", path: exe, dir: dir, exited: make(chan struct{})}
	p.cmd = exec.Command("nsenter", "--net="+ns.path, "--", path, "-p", dir, "-c", conf)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	p.launch()
	t.Cleanup(func() { p.stop(syscall.SIGTERM) }) // a fast shutdown takes the workers along
	get := func(what string) {
		t.Helper()
		var body []byte
		var conn net.Conn
		err := sys.InNetns(ns.path, func() error { // dialled here: a socket stays in the namespace it was made in
			var err error
			conn, err = net.DialTimeout("tcp", "127.0.0.1:7381", 5*time.Second)
			return err
		})
		if err == nil {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			var r *http.Response
			if _, err = io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n"); err == nil {
				if r, err = http.ReadResponse(bufio.NewReader(conn), nil); err == nil {
					body, err = io.ReadAll(r.Body)
				}
			}
		}
		if err != nil || string(body) != "crpipe\n" {
			t.Fatalf("%s: GET: %q, %v\n%s", what, body, err, readFile(filepath.Join(dir, "error.log")))
		}
	}
	workers := func() []int {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if w := descendants(p.pid); len(w) == 2 || time.Now().After(deadline) {
				return w
			}
		}
	}
	for deadline := time.Now().Add(10 * time.Second); len(descendants(p.pid)) < 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("nginx started no workers:\n%s", readFile(filepath.Join(dir, "error.log")))
		}
	}
	get("before the dump")
	for round := 1; round <= 2; round++ {
		img := filepath.Join(dir, fmt.Sprintf("img%d", round))
		before := workers()
		// From the host: the stages find the sockets of the server's
		// namespace themselves (PostgreSQL's is dumped from inside).
		mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
		if round == 1 {
			p.waitKilled()
		}
		mustShell(t, 60*time.Second, ns.in("cr-restore -d -i "+img))
		get(fmt.Sprintf("round %d, after restore", round))
		if w := workers(); fmt.Sprint(w) != fmt.Sprint(before) {
			t.Fatalf("round %d: workers %v after restore, %v before", round, w, before)
		}
		// A reload: the master starts new workers and tells the old ones
		// to go, over the socketpairs.
		syscall.Kill(p.pid, syscall.SIGHUP)
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			w := descendants(p.pid)
			if len(w) == 2 && w[0] != before[0] && w[0] != before[1] && w[1] != before[0] && w[1] != before[1] {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: no new workers after SIGHUP: %v (before %v)\n%s", round, w, before, readFile(filepath.Join(dir, "error.log")))
			}
		}
		get(fmt.Sprintf("round %d, after reload", round))
	}
}
