package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"crpipe/lib/sys"
)

// Issue 6: TCP connections through checkpoint, restore and migration.
// Every test builds its own network namespaces ("hosts"), with loopback
// or veth links and addresses from 198.18.0.0/15 (reserved for
// benchmarking), so no packet leaves what the test made; it removes them
// at the end. test/progs/tcpstream.c streams checksummed data both ways
// and fails at the first byte lost, duplicated or changed, reset or early
// end of file.

// netns is a network namespace the test created.
type netns struct {
	t    *testing.T
	name string
	path string
}

var netnsSeq struct {
	sync.Mutex
	n int
}

// newNetns creates a namespace with loopback up; removed at cleanup (after
// the processes the test started in it, which were registered later).
func newNetns(t *testing.T, tag string) *netns {
	t.Helper()
	netnsSeq.Lock()
	netnsSeq.n++
	name := fmt.Sprintf("crpt%d-%d-%s", os.Getpid(), netnsSeq.n, tag)
	netnsSeq.Unlock()
	n := &netns{t: t, name: name, path: "/run/netns/" + name}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("cleanup: ip netns del %s: %v: %s", name, err, out)
		}
	})
	n.ip("link", "set", "lo", "up")
	return n
}

// ip runs ip -n NAME args.
func (n *netns) ip(args ...string) string {
	n.t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("ip -n %s %s: %v: %s", n.name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// in prefixes a shell command so that it runs in the namespace (network
// only: ip netns exec would also give it a mount namespace of its own).
func (n *netns) in(cmd string) string {
	return fmt.Sprintf("nsenter --net=%s -- %s", n.path, cmd)
}

// nftTables lists the namespace's crpipe lock tables.
func (n *netns) nftTables() []string {
	n.t.Helper()
	out, err := exec.Command("nsenter", "--net="+n.path, "--", "nft", "list", "tables", "inet").CombinedOutput()
	if err != nil {
		n.t.Fatalf("nft list tables in %s: %v: %s", n.name, err, out)
	}
	var tables []string
	for _, l := range strings.Split(string(out), "\n") {
		if name, ok := strings.CutPrefix(strings.TrimSpace(l), "table inet "); ok && strings.HasPrefix(name, "crpipe-") {
			tables = append(tables, name)
		}
	}
	return tables
}

// veth joins namespaces a (ifname ethA) and b (ethB) by a veth pair.
func veth(t *testing.T, a *netns, ifa string, b *netns, ifb string) {
	t.Helper()
	tmp := fmt.Sprintf("crv%d", time.Now().UnixNano()%1e9)
	if out, err := exec.Command("ip", "-n", a.name, "link", "add", ifa, "type", "veth", "peer", "name", tmp, "netns", b.name).CombinedOutput(); err != nil {
		t.Fatalf("veth: %v: %s", err, out)
	}
	b.ip("link", "set", tmp, "name", ifb)
	a.ip("link", "set", ifa, "up")
	b.ip("link", "set", ifb, "up")
}

// needTCP skips when the tools the TCP tests need are missing.
func needTCP(t *testing.T) {
	t.Helper()
	need(t, append(pipelineCmds, "cr-dump", "cr-restore", "crit")...)
	for _, tool := range []string{"ip", "nft", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (make test installs iproute2 and nftables)", tool)
		}
	}
}

// tcpEnd is a tcpstream process (server or client) the test started.
type tcpEnd struct {
	*target
	ns *netns
}

// startTCP starts tcpstream ROLE in ns with the arguments after VERDICT.
func startTCP(t *testing.T, ns *netns, role string, args ...string) *tcpEnd {
	t.Helper()
	dir := t.TempDir()
	p := &target{
		t: t, name: "tcpstream", path: prog("tcpstream"), dir: dir,
		progress: filepath.Join(dir, "progress"), verdict: filepath.Join(dir, "verdict"),
		exited: make(chan struct{}),
	}
	argv := append([]string{"--net=" + ns.path, "--", p.path, role, p.progress, p.verdict}, args...)
	p.cmd = exec.Command("nsenter", argv...)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.pid = p.cmd.Process.Pid // nsenter execs the program: same pid
	go func() {
		p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(p.cleanup)
	t.Logf("started tcpstream %s %s as pid %d in %s", role, strings.Join(args, " "), p.pid, ns.name)
	e := &tcpEnd{target: p, ns: ns}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := readProgress(p.progress); err == nil {
			break
		}
		e.failIfVerdict()
		if time.Now().After(deadline) {
			t.Fatalf("tcpstream %s did not start", role)
		}
		time.Sleep(5 * time.Millisecond)
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.pid))
	p.cgroup = string(b)
	return e
}

func (e *tcpEnd) failIfVerdict() {
	e.t.Helper()
	if v := strings.TrimSpace(readFile(e.verdict)); strings.HasPrefix(v, "FAIL") {
		e.t.Fatalf("pid %d: %s", e.pid, v)
	}
}

func (e *tcpEnd) bytes() uint64 {
	v, _ := readProgress(e.progress)
	return v
}

// waitBytes waits until the end has received at least min bytes.
func (e *tcpEnd) waitBytes(min uint64, timeout time.Duration) uint64 {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		e.failIfVerdict()
		if v := e.bytes(); v >= min {
			return v
		}
		if time.Now().After(deadline) {
			ss, _ := shellCmd(e.ns.in("ss -tnoi")).CombinedOutput()
			e.t.Fatalf("pid %d received %d bytes, not %d, in %v; its namespace:\n%s", e.pid, e.bytes(), min, timeout, ss)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitVerdict waits for the end's verdict and checks it starts with want.
func (e *tcpEnd) waitVerdict(want string, timeout time.Duration) string {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if v := strings.TrimSpace(readFile(e.verdict)); v != "" {
			if !strings.HasPrefix(v, want) {
				e.t.Fatalf("pid %d: verdict %q, want %s...", e.pid, v, want)
			}
			e.t.Logf("pid %d: %s", e.pid, v)
			return v
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("pid %d: no verdict after %v (received %d bytes)", e.pid, timeout, e.bytes())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stopAll quiets every end (SIGUSR1), then asks each in turn for its
// verdict (SIGTERM), so that none sees another go away first (the server
// first: it checks its connections, and its peers' exit resets them).
func stopAll(t *testing.T, ends ...*tcpEnd) {
	t.Helper()
	for _, e := range ends {
		e.failIfVerdict()
		syscall.Kill(e.pid, syscall.SIGUSR1)
	}
	time.Sleep(100 * time.Millisecond)
	for _, e := range ends {
		syscall.Kill(e.pid, syscall.SIGTERM)
		e.waitVerdict("PASS", 10*time.Second)
	}
}

// stallMeter samples an end's progress and reports the longest time it
// did not move: how long the traffic stood still around a checkpoint.
type stallMeter struct {
	stop    chan struct{}
	done    chan struct{}
	longest time.Duration
}

func meterStall(e *tcpEnd) *stallMeter {
	m := &stallMeter{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		last, since := e.bytes(), time.Now()
		for {
			select {
			case <-m.stop:
				return
			case <-time.After(time.Millisecond):
			}
			if v := e.bytes(); v != last {
				if d := time.Since(since); d > m.longest {
					m.longest = d
				}
				last, since = v, time.Now()
			}
		}
	}()
	return m
}

func (m *stallMeter) result() time.Duration {
	close(m.stop)
	<-m.done
	return m.longest
}

// checkpoint dumps the server (killed) and restores it in ns, timing the
// window in which it does not run.
func checkpoint(t *testing.T, srv *tcpEnd, ns *netns) (img string, frozen time.Duration) {
	t.Helper()
	img = filepath.Join(srv.dir, "img")
	pidfile := filepath.Join(srv.dir, "restored.pid")
	t0 := time.Now()
	mustShell(t, 120*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", srv.pid, img))
	srv.waitKilled()
	mustShell(t, 120*time.Second, ns.in(fmt.Sprintf("cr-restore -d -i %s --pidfile %s", img, pidfile)))
	frozen = time.Since(t0)
	srv.checkPidfile(pidfile)
	return img, frozen
}

// crit show prints every TCP socket with its 4-tuple, state and queues.
var showConn = regexp.MustCompile(`tcp socket \d+ \(pid \d+ fd \d+, ipv[46]\): (ESTABLISHED|CLOSE_WAIT|FIN_WAIT1|FIN_WAIT2|CLOSING|LAST_ACK) (\S+) -> (\S+)`)

func showTCP(t *testing.T, img string) (conns int, text string) {
	t.Helper()
	out := string(mustShell(t, 30*time.Second, "crit show "+img).stdout)
	var tcp []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "tcp ") || strings.HasPrefix(l, "  send queue") {
			tcp = append(tcp, l)
		}
	}
	return len(showConn.FindAllString(out, -1)), strings.Join(tcp, "\n")
}

// TestTCPStreamLoopback: a server and its client in one namespace stream
// both ways with full queues; the server is dumped, killed and restored;
// both go on and no byte is lost, duplicated or changed, and the server
// finds its socket options as it set them (TCP_NODELAY, TCP_CORK,
// keepalive, SO_LINGER, buffer sizes, TCP_USER_TIMEOUT; SO_REUSEADDR and
// SO_REUSEPORT on the listener).
func TestTCPStreamLoopback(t *testing.T) {
	needTCP(t)
	ns := newNetns(t, "lo")
	srv := startTCP(t, ns, "server", "127.0.0.1", "7000", "2", "0", "0", "65536", "more")
	cli := startTCP(t, ns, "client", "127.0.0.1", "7000", "2", "0", "0", "65536")
	srv.waitBytes(4<<20, 20*time.Second)
	cli.waitBytes(4<<20, 20*time.Second)
	stall := meterStall(cli)
	img, frozen := checkpoint(t, srv, ns)
	n, show := showTCP(t, img)
	t.Logf("crit show:\n%s", show)
	if n != 2 {
		t.Errorf("crit show lists %d connections, want 2", n)
	}
	if !strings.Contains(show, "LISTEN 127.0.0.1:7000") {
		t.Errorf("crit show has no listener on 127.0.0.1:7000")
	}
	if !regexp.MustCompile(`send queue [1-9]\d* bytes`).MatchString(show) || !regexp.MustCompile(`receive queue [1-9]\d* bytes`).MatchString(show) {
		t.Errorf("no data in flight in the queues at dump time")
	}
	s0, c0 := srv.bytes(), cli.bytes()
	srv.waitBytes(s0+4<<20, 30*time.Second)
	cli.waitBytes(c0+4<<20, 30*time.Second)
	t.Logf("frozen window (cr-dump + cr-restore) %v, traffic stood still for %v", frozen.Round(time.Millisecond), stall.result().Round(time.Millisecond))
	if tables := ns.nftTables(); len(tables) > 0 {
		t.Errorf("lock tables left after the restore: %v", tables)
	}
	stopAll(t, srv, cli)
}

// waitAccepted waits until the server on port has accepted n connections
// (ss: n established sockets on the port, an empty accept queue).
func waitAccepted(t *testing.T, ns *netns, port, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		estab := lines(mustShellQuiet(t, ns.in(fmt.Sprintf("ss -Htn state established sport = :%d", port))))
		queue := mustShellQuiet(t, ns.in(fmt.Sprintf("ss -Hltn sport = :%d", port)))
		f := strings.Fields(string(queue))
		if len(estab) == n && len(f) > 1 && f[1] == "0" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections accepted on port %d, want %d (listener: %q)", len(estab), port, n, queue)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mustShellQuiet runs a short command without logging it.
func mustShellQuiet(t *testing.T, script string) []byte {
	t.Helper()
	out, err := shellCmd(script).Output()
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	return out
}

// TestTCPManyConnections: 200 connections at once, all with data in
// flight, through one checkpoint.
func TestTCPManyConnections(t *testing.T) {
	needTCP(t)
	ns := newNetns(t, "many")
	args := []string{"127.0.0.1", "7001", "200", "0", "0", "4096", "buf=32768"}
	srv := startTCP(t, ns, "server", args...)
	cli := startTCP(t, ns, "client", args...)
	waitAccepted(t, ns, 7001, 200)
	srv.waitBytes(8<<20, 30*time.Second)
	cli.waitBytes(8<<20, 30*time.Second)
	img, frozen := checkpoint(t, srv, ns)
	if n, _ := showTCP(t, img); n != 200 {
		t.Errorf("crit show lists %d connections, want 200", n)
	}
	s0, c0 := srv.bytes(), cli.bytes()
	srv.waitBytes(s0+8<<20, 60*time.Second)
	cli.waitBytes(c0+8<<20, 60*time.Second)
	fi, _ := os.Stat(img)
	t.Logf("200 connections: frozen window (cr-dump + cr-restore) %v, image %d KiB", frozen.Round(time.Millisecond), fi.Size()>>10)
	stopAll(t, srv, cli)
}

// TestTCPIPv6: over ::1, and an IPv6 listener's IPv4 connection (an
// IPv4-mapped address, locked as IPv4 on the wire).
func TestTCPIPv6(t *testing.T) {
	needTCP(t)
	for _, c := range []struct{ name, listen, connect, more string }{
		{"v6", "::1", "::1", "more"}, // IPV6_V6ONLY listener
		{"mapped", "::", "127.0.0.1", "buf=0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns := newNetns(t, c.name)
			srv := startTCP(t, ns, "server", c.listen, "7002", "2", "0", "0", "65536", c.more)
			cli := startTCP(t, ns, "client", c.connect, "7002", "2", "0", "0", "65536")
			srv.waitBytes(2<<20, 20*time.Second)
			cli.waitBytes(2<<20, 20*time.Second)
			img, _ := checkpoint(t, srv, ns)
			n, show := showTCP(t, img)
			t.Logf("crit show:\n%s", show)
			if n != 2 || !strings.Contains(show, "ipv6") {
				t.Errorf("crit show lists %d IPv6 connections, want 2", n)
			}
			s0, c0 := srv.bytes(), cli.bytes()
			srv.waitBytes(s0+2<<20, 30*time.Second)
			cli.waitBytes(c0+2<<20, 30*time.Second)
			stopAll(t, srv, cli)
		})
	}
}

// TestTCPHalfClosed: one side has sent its FIN and goes on receiving, or
// has received the peer's FIN and goes on sending, at dump time.
func TestTCPHalfClosed(t *testing.T) {
	needTCP(t)
	const small, big = "262144", "20000000"
	for _, c := range []struct {
		name, state, ss string
		server, client  []string // SEND RECV RATE
	}{
		// The client's FIN arrived; the server still sends to a slow reader.
		{"close-wait", "CLOSE_WAIT", "close-wait", []string{big, small, "0"}, []string{small, big, "65536"}},
		// The server's FIN is acknowledged; it still receives, slowly.
		{"fin-wait2", "FIN_WAIT2", "fin-wait-2", []string{small, big, "65536"}, []string{big, small, "0"}},
		// The client is done and gone; the server has written all it sends
		// and shut down too, but the slow client has not taken it all:
		// data and our FIN still queued, unsent.
		{"last-ack", "LAST_ACK", "last-ack", []string{"4000000", big, "0", "stay"}, []string{big, "4000000", "65536"}},
		// The same while the client still sends (forever).
		{"fin-wait1", "FIN_WAIT1", "fin-wait-1", []string{"4000000", "0", "0"}, []string{"0", "4000000", "65536"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns := newNetns(t, c.name)
			srv := startTCP(t, ns, "server", append([]string{"127.0.0.1", "7003", "1"}, c.server...)...)
			cli := startTCP(t, ns, "client", append([]string{"127.0.0.1", "7003", "1"}, c.client...)...)
			// The small side is done (its FIN sent and received) well before
			// the big one.
			switch c.state {
			case "CLOSE_WAIT":
				srv.waitBytes(262144, 20*time.Second)
			case "FIN_WAIT2":
				cli.waitBytes(262144, 20*time.Second)
			default:
				for deadline := time.Now().Add(20 * time.Second); ; {
					if len(lines(mustShellQuiet(t, ns.in("ss -Htn state "+c.ss+" sport = :7003")))) == 1 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("the server did not reach %s", c.state)
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			srv.waitBytes(1, 20*time.Second)
			img, _ := checkpoint(t, srv, ns)
			// The restored socket is in the state the dumped one was in.
			if out := mustShell(t, 10*time.Second, ns.in("ss -Htn state "+c.ss+" sport = :7003")).stdout; len(lines(out)) != 1 {
				t.Errorf("after the restore, ss finds %d connections in state %s", len(lines(out)), c.ss)
			}
			_, show := showTCP(t, img)
			t.Logf("crit show:\n%s", show)
			if !strings.Contains(show, c.state) {
				t.Errorf("crit show has no %s connection", c.state)
			}
			if c.state == "FIN_WAIT1" {
				// The client streams forever: wait for all the server sent.
				cli.waitBytes(4000000, 60*time.Second)
				stopAll(t, srv, cli)
				return
			}
			if c.state == "LAST_ACK" {
				// The server is done but stays; the client gets the rest.
				cli.waitVerdict("PASS", 60*time.Second)
				syscall.Kill(srv.pid, syscall.SIGTERM)
			}
			srv.waitVerdict("PASS", 60*time.Second)
			cli.waitVerdict("PASS", 60*time.Second)
			if v := readFile(srv.verdict) + readFile(cli.verdict); strings.Count(v, "complete") != 2 {
				t.Errorf("the transfer did not complete: %q", v)
			}
		})
	}
}

// TestTCPLeaveRunning: a --leave-running dump in the middle of a transfer;
// the transfer finishes intact, and nothing of the dump stays behind.
func TestTCPLeaveRunning(t *testing.T) {
	needTCP(t)
	ns := newNetns(t, "leave")
	const total = "16000000"
	srv := startTCP(t, ns, "server", "127.0.0.1", "7004", "2", total, total, "65536")
	cli := startTCP(t, ns, "client", "127.0.0.1", "7004", "2", total, total, "65536")
	srv.waitBytes(2<<20, 20*time.Second)
	img := filepath.Join(srv.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s --leave-running", srv.pid, img))
	if n, _ := showTCP(t, img); n != 2 {
		t.Errorf("crit show lists %d connections, want 2", n)
	}
	if tables := ns.nftTables(); len(tables) > 0 {
		t.Errorf("lock tables left after a --leave-running dump: %v", tables)
	}
	srv.checkNoCgroup()
	srv.waitVerdict("PASS", 60*time.Second)
	cli.waitVerdict("PASS", 60*time.Second)
	for _, e := range []*tcpEnd{srv, cli} {
		if !strings.HasSuffix(strings.TrimSpace(readFile(e.verdict)), "complete") {
			t.Errorf("pid %d did not complete its transfer", e.pid)
		}
	}
}

// TestTCPFailedDump: cr-tcp dies (SIGKILL) after it locked the
// connections and put them in repair mode, or cr-pages, which comes after
// it, does; cr-dump thaws the server, which takes them out of repair and
// lifts the lock: the transfer goes on.
func TestTCPFailedDump(t *testing.T) {
	needTCP(t)
	for _, killed := range []string{"cr-tcp", "cr-pages"} {
		t.Run(killed, func(t *testing.T) {
			ns := newNetns(t, "fail")
			const total = "12000000"
			srv := startTCP(t, ns, "server", "127.0.0.1", "7005", "2", total, total, "65536")
			cli := startTCP(t, ns, "client", "127.0.0.1", "7005", "2", total, total, "65536")
			srv.waitBytes(1<<20, 20*time.Second)
			// A bin directory whose stage does its whole job, then is killed.
			dir := t.TempDir()
			for _, name := range pipelineCmds {
				if name == killed {
					continue
				}
				if err := os.Symlink(bin(name), filepath.Join(dir, name)); err != nil {
					t.Fatal(err)
				}
			}
			b, err := os.ReadFile(bin("cr-dump")) // cr-dump finds its stages next to its own (resolved) path
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "cr-dump"), b, 0o755); err != nil {
				t.Fatal(err)
			}
			wrapper := fmt.Sprintf("#!/bin/sh\n%s \"$@\" >/dev/null || exit 1\nkill -KILL $$\n", bin(killed))
			if err := os.WriteFile(filepath.Join(dir, killed), []byte(wrapper), 0o755); err != nil {
				t.Fatal(err)
			}
			img := filepath.Join(srv.dir, "img")
			r := shell(t, 60*time.Second, fmt.Sprintf("%s/cr-dump --stage-processes -t %d -o %s", dir, srv.pid, img))
			if r.err == nil {
				t.Fatal("the dump succeeded")
			}
			if !strings.Contains(string(r.stderr), killed+": killed by SIGKILL") {
				t.Errorf("cr-dump does not blame %s: %s", killed, r.stderr)
			}
			if _, err := os.Stat(img); err == nil {
				t.Errorf("an image was left behind")
			}
			if tables := ns.nftTables(); len(tables) > 0 {
				t.Errorf("lock tables left after the failed dump: %v", tables)
			}
			srv.checkNoCgroup()
			srv.waitVerdict("PASS", 60*time.Second)
			cli.waitVerdict("PASS", 60*time.Second)
		})
	}
}

// TestTCPPendingAccept: connections waiting in a listener's accept queue
// (their handshake done, bytes sent, not yet accepted) at dump time. The
// dump takes them out to read them and puts them back (so a dump that
// leaves the server running changes nothing), and the restore puts them
// into the restored listener's queue: once the server accepts them, every
// transfer completes.
func TestTCPPendingAccept(t *testing.T) {
	needTCP(t)
	for _, leave := range []bool{false, true} {
		name := "restored"
		if leave {
			name = "leave-running"
		}
		t.Run(name, func(t *testing.T) {
			ns := newNetns(t, "pend")
			const total = "2000000"
			srv := startTCP(t, ns, "server", "127.0.0.1", "7006", "3", total, total, "0", "accept=3000")
			cli := startTCP(t, ns, "client", "127.0.0.1", "7006", "3", total, total, "0")
			time.Sleep(300 * time.Millisecond) // the client's first bytes wait in the queue too
			img := filepath.Join(srv.dir, "img")
			if leave {
				mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s --leave-running", srv.pid, img))
			} else {
				checkpoint(t, srv, ns)
			}
			n, show := showTCP(t, img)
			t.Logf("crit show:\n%s", show)
			if n != 3 || strings.Count(show, "not yet accepted") != 3 {
				t.Errorf("crit show lists %d connections, want 3 not yet accepted", n)
			}
			if !regexp.MustCompile(`receive queue [1-9]\d* bytes`).MatchString(show) {
				t.Errorf("no bytes waited with the connections")
			}
			srv.waitVerdict("PASS", 60*time.Second)
			cli.waitVerdict("PASS", 60*time.Second)
			for _, e := range []*tcpEnd{srv, cli} {
				if !strings.HasSuffix(strings.TrimSpace(readFile(e.verdict)), "complete") {
					t.Errorf("pid %d did not complete its transfer", e.pid)
				}
			}
		})
	}
}

// TestTCPMigration: three hosts on one bridge. The server runs in host A
// on the service address 198.18.0.10, its client in host B. The server is
// dumped in A and restored in host C, and the service address moves from
// A to C: the client's connections go on with the restored server, with
// no reset and no byte lost or duplicated. Two orders:
//   - the address moves before the restore: the image is a file, and C
//     holds the connections (cr-tcp lock) before the address arrives, so
//     what the client sends meanwhile is dropped, not answered with resets;
//   - through a pipe, cr-dump | cr-restore in C, and the address moves once
//     the server runs there (its sockets were bound and connected from an
//     address C did not have yet).
func TestTCPMigration(t *testing.T) {
	needTCP(t)
	t.Run("address-before-restore", func(t *testing.T) { migrate(t, false) })
	t.Run("pipe-address-after-restore", func(t *testing.T) { migrate(t, true) })
}

func migrate(t *testing.T, viaPipe bool) {
	sw := newNetns(t, "sw")
	a, b, c := newNetns(t, "A"), newNetns(t, "B"), newNetns(t, "C")
	sw.ip("link", "add", "br0", "type", "bridge")
	sw.ip("link", "set", "br0", "up")
	for i, h := range []*netns{a, b, c} {
		port := fmt.Sprintf("p%d", i)
		veth(t, h, "eth0", sw, port)
		sw.ip("link", "set", port, "master", "br0")
		h.ip("addr", "add", fmt.Sprintf("198.18.0.%d/24", i+1), "dev", "eth0")
	}
	const service = "198.18.0.10"
	a.ip("addr", "add", service+"/24", "dev", "eth0")
	srv := startTCP(t, a, "server", service, "7100", "4", "0", "0", "65536")
	cli := startTCP(t, b, "client", service, "7100", "4", "0", "0", "65536")
	srv.waitBytes(4<<20, 20*time.Second)
	cli.waitBytes(4<<20, 20*time.Second)
	move := func() {
		a.ip("addr", "del", service+"/24", "dev", "eth0")
		c.ip("addr", "add", service+"/24", "dev", "eth0")
		b.ip("neigh", "flush", "dev", "eth0")
	}

	resetsB, rstsC := b.tcpCounter("EstabResets"), c.tcpCounter("OutRsts")
	pidfile := filepath.Join(srv.dir, "restored.pid")
	t0 := time.Now()
	var moved time.Duration
	if viaPipe {
		mustShell(t, 120*time.Second, fmt.Sprintf("cr-dump -t %d | %s", srv.pid, c.in("cr-restore -d --pidfile "+pidfile)))
		move()
		moved = time.Since(t0)
	} else {
		img := filepath.Join(srv.dir, "img")
		mustShell(t, 120*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", srv.pid, img))
		mustShell(t, 30*time.Second, c.in("cr-tcp lock -i "+img))
		if tables := c.nftTables(); len(tables) != 1 {
			t.Fatalf("C holds locks %v after cr-tcp lock", tables)
		}
		move()
		moved = time.Since(t0)
		time.Sleep(300 * time.Millisecond) // the client retransmits into C meanwhile
		mustShell(t, 120*time.Second, c.in(fmt.Sprintf("cr-restore -d -i %s --pidfile %s", img, pidfile)))
	}
	frozen := time.Since(t0)
	srv.waitKilled()
	srv.checkPidfile(pidfile)
	t.Logf("migration: server running in C %v after the dump started, address moved after %v", frozen.Round(time.Millisecond), moved.Round(time.Millisecond))
	s0, c0 := srv.bytes(), cli.bytes()
	srv.waitBytes(s0+4<<20, 60*time.Second)
	cli.waitBytes(c0+4<<20, 60*time.Second)
	// The restored server's connections live in C.
	if out := lines(mustShellQuiet(t, c.in("ss -Htn state established sport = :7100"))); len(out) != 4 {
		t.Errorf("C has %d established connections on port 7100, want 4", len(out))
	}
	if tables := c.nftTables(); len(tables) > 0 {
		t.Errorf("lock tables left in C: %v", tables)
	}
	if n := b.tcpCounter("EstabResets") - resetsB; n != 0 {
		t.Errorf("%d connections of B were reset", n)
	}
	if n := c.tcpCounter("OutRsts") - rstsC; n != 0 {
		t.Errorf("C sent %d resets", n)
	}
	stopAll(t, srv, cli)
}

// tcpCounter reads a Tcp counter of /proc/net/snmp in the namespace.
func (n *netns) tcpCounter(name string) int64 {
	n.t.Helper()
	out := string(mustShellQuiet(n.t, n.in("cat /proc/net/snmp")))
	var head []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if head == nil {
			head = f
			continue
		}
		for i, h := range head {
			if h == name && i < len(f) {
				v, _ := strconv.ParseInt(f[i], 10, 64)
				return v
			}
		}
	}
	n.t.Fatalf("no Tcp counter %s in /proc/net/snmp", name)
	return 0
}

// dialIn connects to addr from inside ns (the socket belongs to ns).
func dialIn(t *testing.T, ns *netns, addr string) net.Conn {
	t.Helper()
	var conn net.Conn
	err := sys.InNetns(ns.path, func() error {
		var err error
		conn, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("connect to %s in %s: %v", addr, ns.name, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// resp is a minimal Redis client on one connection.
type resp struct {
	t  *testing.T
	c  net.Conn
	rd *bufio.Reader
}

func (r *resp) send(args ...string) {
	r.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	r.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(r.c, b.String()); err != nil {
		r.t.Fatalf("redis: send %s: %v", args[0], err)
	}
}

// reply reads one reply: a status, an error, an integer or a bulk string.
func (r *resp) reply() string {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := r.rd.ReadString('\n')
	if err != nil {
		r.t.Fatalf("redis: reply: %v", err)
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		r.t.Fatalf("redis: empty reply line")
	}
	switch line[0] {
	case '+', ':':
		return line[1:]
	case '-':
		r.t.Fatalf("redis: error reply %s", line)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < -1 {
			r.t.Fatalf("redis: bad bulk header %q", line)
		}
		if n == -1 {
			return "(nil)"
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(r.rd, b); err != nil {
			r.t.Fatalf("redis: bulk: %v", err)
		}
		return string(b[:n])
	}
	r.t.Fatalf("redis: unexpected reply %q", line)
	return ""
}

func redisValue(i int) string { return fmt.Sprintf("value-%d-%x", i, i*0x9e3779b1) }

// TestTCPRedis: redis-server (multi-threaded: bio threads) with a client
// connection open and keys written is dumped, killed and restored; the
// same connection goes on working and every key is there.
func TestTCPRedis(t *testing.T) {
	needTCP(t)
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed (make test installs it)")
	}
	exe, _ := filepath.EvalSymlinks(path)
	ns := newNetns(t, "redis")
	dir := t.TempDir()
	p := &target{t: t, name: "redis-server", path: exe, dir: dir, exited: make(chan struct{})}
	p.cmd = exec.Command("nsenter", "--net="+ns.path, "--", path, "--port", "6390", "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"))
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	p.launch()
	t.Cleanup(p.cleanup)
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.pid))
	p.cgroup = string(b)
	var conn net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		err := sys.InNetns(ns.path, func() error {
			var err error
			conn, err = net.DialTimeout("tcp", "127.0.0.1:6390", time.Second)
			return err
		})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server does not answer: %v\n%s", err, readFile(filepath.Join(dir, "redis.log")))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() { conn.Close() })
	r := &resp{t: t, c: conn, rd: bufio.NewReader(conn)}
	const keys = 2000
	for i := 0; i < keys; i++ {
		r.send("SET", fmt.Sprintf("key:%d", i), redisValue(i))
	}
	for i := 0; i < keys; i++ {
		if v := r.reply(); v != "OK" {
			t.Fatalf("SET key:%d: %s", i, v)
		}
	}
	threads, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.pid))
	t.Logf("redis-server pid %d, %d threads, %d keys written on one connection", p.pid, len(threads), keys)

	// A command in flight: sent, its reply not read before the dump.
	r.send("INCRBY", "counter", "41")
	img := filepath.Join(dir, "img")
	pidfile := filepath.Join(dir, "restored.pid")
	t0 := time.Now()
	mustShell(t, 120*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	p.waitKilled()
	mustShell(t, 120*time.Second, ns.in(fmt.Sprintf("cr-restore -d -i %s --pidfile %s", img, pidfile)))
	t.Logf("redis C/R: frozen window %v", time.Since(t0).Round(time.Millisecond))
	if n, _ := showTCP(t, img); n != 1 {
		t.Errorf("crit show lists %d connections, want 1", n)
	}
	if v := r.reply(); v != "41" {
		t.Fatalf("INCRBY in flight at dump: %s", v)
	}
	r.send("INCR", "counter")
	if v := r.reply(); v != "42" {
		t.Fatalf("INCR after restore: %s", v)
	}
	for i := 0; i < keys; i++ {
		r.send("GET", fmt.Sprintf("key:%d", i))
	}
	for i := 0; i < keys; i++ {
		if v := r.reply(); v != redisValue(i) {
			t.Fatalf("GET key:%d after restore: %q", i, v)
		}
	}
	r.send("DBSIZE")
	if v := r.reply(); v != strconv.Itoa(keys+1) {
		t.Errorf("DBSIZE after restore: %s, want %d", v, keys+1)
	}
	// The listener works too.
	r2 := &resp{t: t, c: dialIn(t, ns, "127.0.0.1:6390")}
	r2.rd = bufio.NewReader(r2.c)
	r2.send("GET", "key:7")
	if v := r2.reply(); v != redisValue(7) {
		t.Errorf("GET on a new connection: %q", v)
	}
}

// TestTCPRestoreRetry: a restore that fails (another program took the
// listener's port meanwhile) keeps the connections held and says so; once
// the port is free, a second restore takes them over.
func TestTCPRestoreRetry(t *testing.T) {
	needTCP(t)
	ns := newNetns(t, "retry")
	srv := startTCP(t, ns, "server", "127.0.0.1", "7007", "2", "0", "0", "65536")
	cli := startTCP(t, ns, "client", "127.0.0.1", "7007", "2", "0", "0", "65536")
	srv.waitBytes(1<<20, 20*time.Second)
	img := filepath.Join(srv.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", srv.pid, img))
	srv.waitKilled()
	blocker := exec.Command("nsenter", "--net="+ns.path, "--", "python3", "-c",
		"import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',7007))\ns.listen()\nprint('ok',flush=True)\ntime.sleep(120)")
	out, err := blocker.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := blocker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { blocker.Process.Kill(); blocker.Wait() })
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "ok\n" {
		t.Fatalf("the blocker did not bind: %q", line)
	}
	r := shell(t, 60*time.Second, ns.in("cr-restore -d -i "+img))
	if r.err == nil {
		t.Fatal("the restore succeeded with the port taken")
	}
	checkErrorLine(t, "cr-restore", r.stderr, regexp.MustCompile(`cr-restore: error: tcp socket \d+ \(pid \d+ fd \d+, LISTEN 127\.0\.0\.1:7007\): bind 127\.0\.0\.1:7007: address already in use`))
	if !strings.Contains(string(r.stderr), "hint: the TCP connections stay held") {
		t.Errorf("no hint about the lock: %s", r.stderr)
	}
	if tables := ns.nftTables(); len(tables) != 1 {
		t.Errorf("lock tables after the failed restore: %v, want the dump's", tables)
	}
	blocker.Process.Kill()
	blocker.Wait()
	time.Sleep(500 * time.Millisecond) // the client retransmits into the lock meanwhile
	pidfile := filepath.Join(srv.dir, "restored.pid")
	mustShell(t, 60*time.Second, ns.in(fmt.Sprintf("cr-restore -d -i %s --pidfile %s", img, pidfile)))
	srv.checkPidfile(pidfile)
	s0, c0 := srv.bytes(), cli.bytes()
	srv.waitBytes(s0+2<<20, 30*time.Second)
	cli.waitBytes(c0+2<<20, 30*time.Second)
	stopAll(t, srv, cli)
}

// TestTCPFrozenWindow times the checkpoint and restore of a server with 1
// and with 200 connections (each with data in flight): from cr-dump's
// start to cr-restore's return, the time the server does not run; and
// the TCP work inside it (cr-tcp: lock, repair and read; cr-restore: lock,
// rebuild, lock lifted). Three rounds each, each with a fresh server (so
// that its PID is free at once); the log has every figure.
func TestTCPFrozenWindow(t *testing.T) {
	needTCP(t)
	tcpLine := regexp.MustCompile(`cr-tcp: (\d+) TCP sockets \((\d+) connections\): collected in (\S+), described in (\S+), locked in (\S+), repaired and read in (\S+), written in (\S+)`)
	rebuilt := regexp.MustCompile(`cr-restore: \d+ TCP sockets \(\d+ connections\) rebuilt in (\S+)`)
	lifted := regexp.MustCompile(`cr-restore: network lock \S+ lifted \((\S+)\)`)
	locked := regexp.MustCompile(`cr-restore: network lock \S+: \d+ connections held (\(\S+\)|since the dump)`)
	for _, n := range []int{1, 200} {
		t.Run(fmt.Sprintf("%d", n), func(t *testing.T) {
			var windows []time.Duration
			for round := 0; round < 3; round++ {
				ns := newNetns(t, fmt.Sprintf("fw%d", n))
				args := []string{"127.0.0.1", "7008", strconv.Itoa(n), "0", "0", "4096", "buf=32768"}
				srv := startTCP(t, ns, "server", args...)
				cli := startTCP(t, ns, "client", args...)
				waitAccepted(t, ns, 7008, n)
				srv.waitBytes(1<<20, 30*time.Second)
				img := filepath.Join(srv.dir, "img")
				t0 := time.Now()
				d := mustShell(t, 120*time.Second, fmt.Sprintf("cr-dump -v -t %d -o %s", srv.pid, img))
				tDump := time.Since(t0)
				srv.waitKilled()
				r := mustShell(t, 120*time.Second, ns.in("cr-restore -v -d -i "+img))
				w := time.Since(t0)
				windows = append(windows, w)
				m, rb, lk, lf := tcpLine.FindStringSubmatch(string(d.stderr)), rebuilt.FindStringSubmatch(string(r.stderr)),
					locked.FindStringSubmatch(string(r.stderr)), lifted.FindStringSubmatch(string(r.stderr))
				if m == nil || rb == nil || lk == nil || lf == nil {
					t.Fatalf("no TCP timings in the -v output")
				}
				fi, _ := os.Stat(img)
				t.Logf("%d connections, round %d: frozen window %v (cr-dump %v, cr-restore %v); cr-tcp: collect %s, describe %s, lock %s, repair+read %s, write %s; cr-restore: lock %s, rebuild %s, unlock %s; image %d KiB",
					n, round, w.Round(time.Millisecond), tDump.Round(time.Millisecond), (w - tDump).Round(time.Millisecond), m[3], m[4], m[5], m[6], m[7], lk[1], rb[1], lf[1], fi.Size()>>10)
				s0, c0 := srv.bytes(), cli.bytes()
				srv.waitBytes(s0+1<<20, 30*time.Second)
				cli.waitBytes(c0+1<<20, 30*time.Second)
				stopAll(t, srv, cli)
			}
			min := windows[0]
			for _, w := range windows {
				min = minDur(min, w)
			}
			t.Logf("%d connections: frozen window min %v of %v", n, min.Round(time.Millisecond), windows)
		})
	}
}

func minDur(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}
