package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/proc"
)

// Issue 5: every common kind of fd, dumped by cr-files and restored by
// cr-restore. Each test program (test/progs/fd_*.c) sets up its fds, ticks,
// and on SIGTERM checks them itself; the test dumps it through the real
// pipeline, kills it, restores it and asks for its verdict.

// startFdProg starts test program name with its directory and arg.
func startFdProg(t *testing.T, name, arg string) *target {
	t.Helper()
	p := start(t, name, func(p *target) []string {
		args := []string{p.progress, p.verdict, p.dir}
		if arg != "" {
			args = append(args, arg)
		}
		return args
	})
	t.Cleanup(func() { killDescendants(t, p) })
	return p
}

// killDescendants kills the children a (restored) test program left, found
// by their comm under the program's PID.
func killDescendants(t *testing.T, p *target) {
	kids, _ := proc.Children(p.pid)
	for _, k := range kids {
		if st, err := proc.ReadStat(k); err == nil && st.Comm == p.name {
			t.Logf("cleanup: killing child %d of %d", k, p.pid)
			syscall.Kill(k, syscall.SIGKILL)
		}
	}
}

// dumpRestore dumps p through the explicit pipeline into a file, checks the
// image with crit, kills the original, restores and checks the verdict. It
// returns crit show's output.
func dumpRestore(t *testing.T, p *target) string {
	t.Helper()
	return dumpRestoreWith(t, p, dumpStages)
}

// dumpRestoreWith is dumpRestore through the given stages.
func dumpRestoreWith(t *testing.T, p *target, stages string) string {
	t.Helper()
	img := filepath.Join(p.dir, "img")
	r := shell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d | %s > %s", p.pid, stages, img))
	if r.err != nil {
		if kids, _ := proc.Children(p.pid); len(kids) > 0 && !strings.HasPrefix(string(r.stderr), "cr-files:") {
			// Issue 4 (another engineer's) brings trees to every stage.
			t.Skipf("a stage other than cr-files cannot dump this process tree yet: %s", firstLine(r.stderr))
		}
		t.Fatalf("dump: %s", r)
	}
	mustShell(t, 30*time.Second, "crit check "+img)
	show := string(mustShell(t, 30*time.Second, "crit show "+img).stdout)
	mustShell(t, 30*time.Second, "cr-freeze kill < "+img)
	p.killedThenRestored(img)
	return show
}

// fdLines returns crit show's fd lines.
func fdLines(show string) []string {
	var out []string
	in := false
	for _, l := range strings.Split(show, "\n") {
		switch {
		case strings.TrimSpace(l) == "fds:":
			in = true
		case in && strings.HasPrefix(l, "    "):
			out = append(out, strings.TrimSpace(l))
		default:
			in = false
		}
	}
	return out
}

// checkFdLine checks that crit show's first line for fd n has every one
// of want.
func checkFdLine(t *testing.T, show string, n int, want ...string) {
	t.Helper()
	for _, l := range fdLines(show) {
		if !strings.HasPrefix(l, fmt.Sprintf("%d ", n)) {
			continue
		}
		for _, w := range want {
			if !strings.Contains(l, w) {
				t.Errorf("crit show's line for fd %d lacks %q:\n%s", n, w, l)
			}
		}
		return
	}
	t.Errorf("crit show has no line for fd %d", n)
}

func TestFdShared(t *testing.T) {
	for _, arg := range []string{"", "fork"} {
		t.Run("plain"+arg, func(t *testing.T) {
			need(t, append(pipelineCmds, "cr-restore", "crit")...)
			p := startFdProg(t, "fd_shared", arg)
			show := dumpRestore(t, p)
			t.Logf("crit show:\n%s", show)
			checkFdLine(t, show, 20, "regular", "/shared", "offset 5", "shared with fd 21")
			checkFdLine(t, show, 24, "cloexec", "shared with fd 23")
			if arg == "fork" {
				checkFdLine(t, show, 20, "shared with fd 21, pid ")
			}
		})
	}
}

func firstLine(b []byte) string {
	l, _, _ := strings.Cut(string(b), "\n")
	return l
}

func TestFdPipe(t *testing.T) {
	for _, arg := range []string{"", "fork"} {
		t.Run("plain"+arg, func(t *testing.T) {
			need(t, append(pipelineCmds, "cr-restore", "crit")...)
			p := startFdProg(t, "fd_pipe", arg)
			show := dumpRestore(t, p)
			checkFdLine(t, show, 20, "pipe:[", "buffer 128 KiB, 10 bytes unread", "rdonly|nonblock")
			checkFdLine(t, show, 26, "fifo ", "9 bytes unread")
			t.Logf("crit show fds:\n%s", strings.Join(fdLines(show), "\n"))
		})
	}
}

func TestFdEvent(t *testing.T) {
	need(t, append(pipelineCmds, "cr-restore", "crit")...)
	p := startFdProg(t, "fd_event", "")
	show := dumpRestore(t, p)
	t.Logf("crit show fds:\n%s", strings.Join(fdLines(show), "\n"))
}

// TestFdAsync: signal-driven I/O (O_ASYNC) keeps its owner (a process, a
// thread) and its signal, and signals new input after restore
// (test/progs/fd_async.c).
func TestFdAsync(t *testing.T) {
	need(t, append(pipelineCmds, "cr-restore", "crit")...)
	p := startFdProg(t, "fd_async", "")
	dumpRestore(t, p)
}

func TestFdMemfd(t *testing.T) {
	need(t, append(pipelineCmds, "cr-restore", "crit")...)
	p := startFdProg(t, "fd_memfd", "")
	show := dumpRestore(t, p)
	t.Logf("crit show fds:\n%s", strings.Join(fdLines(show), "\n"))
}

func TestFdInotify(t *testing.T) {
	need(t, append(pipelineCmds, "cr-restore", "crit")...)
	p := startFdProg(t, "fd_inotify", "")
	show := dumpRestore(t, p)
	t.Logf("crit show fds:\n%s", strings.Join(fdLines(show), "\n"))
}

func TestFdEpoll(t *testing.T) {
	for _, arg := range []string{"", "fork"} {
		t.Run("plain"+arg, func(t *testing.T) {
			need(t, append(pipelineCmds, "cr-restore", "crit")...)
			p := startFdProg(t, "fd_epoll", arg)
			show := dumpRestore(t, p)
			t.Logf("crit show fds:\n%s", strings.Join(fdLines(show), "\n"))
		})
	}
}

func TestFdUnix(t *testing.T) {
	for _, arg := range []string{"", "fork"} {
		t.Run("plain"+arg, func(t *testing.T) {
			need(t, append(pipelineCmds, "cr-restore", "crit")...)
			p := startFdProg(t, "fd_unix", arg)
			show := dumpRestore(t, p)
			checkFdLine(t, show, 26, "unix stream", "listen.sock, listening (backlog 5, 1 waiting)")
			checkFdLine(t, show, 29, "waiting to be accepted by socket:[")
			checkFdLine(t, show, 22, "unix seqpacket", "12 bytes queued in 2 messages")
			t.Logf("crit show fds:\n%s", strings.Join(fdLines(show), "\n"))
		})
	}
}

// TestRestoredAgain: one image restores again after the process its
// first restore made was killed, as a snapshot started again after a
// crash is. What the first one left must not stand in the way: socket
// files it bound anew (not the dump's inode: refused before session 19),
// locks it held, ptys, ghost files it made again, a TCP listener's port.
// Each program checks its whole fd state at the end of the second run.
// A program that wrote to a file it maps shared is refused the second
// time: the file is no longer the one its memory was dumped with.
func TestRestoredAgain(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	for _, c := range []struct{ name, arg string }{
		{"fd_unix", ""}, {"fd_unix", "fork"}, {"fd_pipe", "fork"}, {"fd_ghost", "fork"},
		{"fd_locks", ""}, {"fd_inet", ""}, {"fd_pty", "fork"}, {"fd_memfd", ""}, {"filemap", ""},
	} {
		t.Run(c.name+c.arg, func(t *testing.T) {
			p := startFdProg(t, c.name, c.arg)
			img, at := p.dumpKilled("img")
			p.restoreDetached(img)
			p.checkProgressFrom(at)
			killDescendants(t, p)
			if err := syscall.Kill(p.pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			waitPidFree(t, p.pid, "the first restored process, killed")
			os.Remove(p.verdict)
			if c.name == "filemap" {
				r := shell(t, 60*time.Second, "cr-restore -d -i "+img)
				if r.err == nil || r.state.ExitCode() != 1 {
					t.Fatalf("cr-restore of a process whose shared file changed since: %v, want exit status 1", r.err)
				}
				checkErrorLine(t, "cr-restore", r.stderr, regexp.MustCompile(`/data changed since the dump`))
				p.checkPidFree()
				return
			}
			p.restoreDetached(img)
			p.checkProgressFrom(at)
			p.terminate(at)
		})
	}
}

func TestFdInet(t *testing.T) {
	need(t, append(pipelineCmds, "cr-restore", "crit")...)
	p := startFdProg(t, "fd_inet", "")
	show := dumpRestore(t, p)
	t.Logf("crit show fds:\n%s", strings.Join(fdLines(show), "\n"))
}

// TestPythonFiles: a Python program with an open file, pipes to and from a
// child (cat) and an epoll loop: every line it sends comes back once, in
// order, across the checkpoint.
func TestPythonFiles(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed (make test installs it)")
	}
	script := filepath.Join(repoRoot, "test", "progs", "pyfiles.py")
	p := startPath(t, "pyfiles", python, func(p *target) []string { return []string{script, p.progress, p.verdict, p.dir} })
	t.Cleanup(func() { killGroupChildren(t, p) })
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	show := string(mustShell(t, 30*time.Second, "crit show "+img).stdout)
	t.Logf("crit show fds:\n%s", strings.Join(fdLines(show), "\n"))
	p.killedThenRestored(img)
}

// TestBashPipeLoop: bash running a loop whose output goes through a pipe
// into cat: after the restore the numbers cat writes go on with no gap and
// no repeat (the pipe's unread lines survive).
func TestBashPipeLoop(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	script := `i=0; while :; do i=$((i+1)); echo $i; printf '%d\n' $i 1<>progress; sleep 0.01; done | cat > out`
	var dir string
	p := startPath(t, "bash", "/usr/bin/setsid", func(p *target) []string {
		dir = p.dir
		return []string{"bash", "-c", "cd " + p.dir + " && " + script}
	})
	t.Cleanup(func() { killGroupChildren(t, p) })
	img := filepath.Join(dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	p.waitKilled()
	at := p.mustProgress()
	p.restoreDetached(img)
	p.checkProgressFrom(at)
	// cat writes a line after the loop counts it: wait for the lines, not
	// only for the count, before the kill.
	for deadline := time.Now().Add(10 * time.Second); len(strings.Fields(readFile(filepath.Join(dir, "out")))) < int(at)+10 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	syscall.Kill(-p.pid, syscall.SIGKILL)
	out := strings.Fields(readFile(filepath.Join(dir, "out")))
	for i, f := range out {
		if f != fmt.Sprint(i+1) {
			t.Fatalf("line %d of cat's output is %q, want %d (around: %v)", i+1, f, i+1, out[max(0, i-3):min(len(out), i+3)])
		}
	}
	if len(out) < int(at)+10 {
		t.Fatalf("cat wrote %d lines, the loop had counted %d at the dump", len(out), at)
	}
	t.Logf("cat wrote 1..%d in order; the dump was at %d", len(out), at)
}

// killGroupChildren kills what is left of a test program's process group
// (children of a restored tree are not the test's children).
func killGroupChildren(t *testing.T, p *target) {
	if pgid, err := syscall.Getpgid(p.pid); err == nil && pgid == p.pid && p.isOurs() {
		syscall.Kill(-p.pid, syscall.SIGKILL)
	}
	killDescendants(t, p)
}

func TestFdPty(t *testing.T) {
	for _, arg := range []string{"", "fork"} {
		t.Run("plain"+arg, func(t *testing.T) {
			need(t, append(pipelineCmds, "cr-restore", "crit")...)
			p := startFdProg(t, "fd_pty", arg)
			show := dumpRestore(t, p)
			checkFdLine(t, show, 21, "pty /dev/pts/", "slave, 33x101, controlling terminal of session")
			t.Logf("crit show fds:\n%s", strings.Join(fdLines(show), "\n"))
		})
	}
}

// openPty opens a new pseudo-terminal for a test: its master and slave.
func openPty(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// TestShellJob: a job whose stdio is its shell's terminal is refused by
// cr-files, dumped with cr-files --shell-job, and restored onto the
// terminal cr-restore runs on.
func TestShellJob(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	ptyA, slaveA := openPty(t)
	dir := t.TempDir()
	p := &target{t: t, name: "fd_shelljob", path: prog("fd_shelljob"), dir: dir,
		progress: filepath.Join(dir, "progress"), verdict: filepath.Join(dir, "verdict"), exited: make(chan struct{})}
	p.cmd = exec.Command(p.path, p.progress, p.verdict, dir)
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = slaveA, slaveA, slaveA
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p.launch()
	t.Cleanup(p.cleanup)
	p.waitProgress(50, 10*time.Second)
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.pid))
	p.cgroup = string(b)
	_ = ptyA

	img := filepath.Join(dir, "img")
	// cr-dump thaws the job when a stage fails.
	r := shell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	if r.err == nil || !strings.Contains(string(r.stderr), "--shell-job") {
		t.Fatalf("a dump without --shell-job: %v, want a refusal naming --shell-job", r)
	}
	p.checkRunning()
	stages := strings.Replace(dumpStages, "cr-files", "cr-files --shell-job", 1)
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d | %s > %s && cr-freeze kill < %s", p.pid, stages, img, img))
	p.waitKilled()
	at := p.mustProgress()

	// cr-restore on another terminal: the job comes back there.
	ptyB, slaveB := openPty(t)
	pidfile := filepath.Join(dir, "restored.pid")
	cmd := shellCmd(fmt.Sprintf("cr-restore -d -i %s --pidfile %s", img, pidfile))
	var errb strings.Builder
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slaveB, slaveB, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("cr-restore: %v\n%s", err, errb.String())
	}
	p.checkPidfile(pidfile)
	p.checkProgressFrom(at)
	link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/1", p.pid))
	if link != slaveB.Name() {
		t.Errorf("the restored job's stdout is %s, want cr-restore's terminal %s", link, slaveB.Name())
	}
	got := readUntil(ptyB, "bye from the job")
	p.terminate(at)
	select {
	case s := <-got:
		if !strings.Contains(s, "bye from the job") {
			t.Errorf("cr-restore's terminal shows %q, want the job's goodbye", s)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("the job's goodbye did not reach cr-restore's terminal")
	}
}

// TestFdPtyData: unread input (complete lines, an unfinished line, raw
// bytes) and output of two ptys, and a /dev/tty fd, come back exactly; a
// --leave-running dump leaves the original's queues as they were (it
// reads them itself after the dump).
func TestFdPtyData(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore", "crit")...)
	checkShow := func(t *testing.T, show string) {
		t.Helper()
		checkFdLine(t, show, 20, "pty /dev/pts/", "master", "unread input 2 lines + 7 bytes", "unread output 38 bytes")
		checkFdLine(t, show, 22, "master", "unread input 0 lines + 15 bytes", "unread output 8 bytes")
		checkFdLine(t, show, 24, "/dev/tty on /dev/pts/", "opened again by session leader")
	}
	t.Run("restore", func(t *testing.T) {
		p := startFdProg(t, "fd_ptydata", "")
		show := dumpRestore(t, p)
		t.Logf("crit show fds:\n%s", strings.Join(fdLines(show), "\n"))
		checkShow(t, show)
	})
	t.Run("leave-running", func(t *testing.T) {
		p := startFdProg(t, "fd_ptydata", "")
		img := filepath.Join(p.dir, "img")
		mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d --leave-running -o %s", p.pid, img))
		p.checkRunning()
		checkShow(t, string(mustShell(t, 30*time.Second, "crit show "+img).stdout))
		p.terminate(p.mustProgress())
	})
}

// TestShellJobDevTty: a job of a shell whose session has the terminal as
// controlling terminal, holding /dev/tty, is dumped with --shell-job and
// restored from a shell on another terminal: its /dev/tty fd is on that
// terminal, which is its controlling terminal again.
func TestShellJobDevTty(t *testing.T) {
	need(t, append(pipelineCmds, "cr-restore")...)
	ptyA, slaveA := openPty(t)
	dir := t.TempDir()
	p := &target{t: t, name: "fd_shelljob", path: prog("fd_shelljob"), dir: dir,
		progress: filepath.Join(dir, "progress"), verdict: filepath.Join(dir, "verdict"), exited: make(chan struct{})}
	// The shell: a session leader on terminal A, its job in its group
	// (sh gives a background job /dev/null unless told otherwise).
	jobpid := filepath.Join(dir, "job.pid")
	p.cmd = exec.Command("sh", "-c", `"$0" "$1" "$2" "$3" devtty 0<&1 & echo $! > "$4"; wait`, p.path, p.progress, p.verdict, dir, jobpid)
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = slaveA, slaveA, slaveA
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(p.cleanup)
	go io.Copy(io.Discard, ptyA)
	for deadline := time.Now().Add(10 * time.Second); p.pid == 0; time.Sleep(10 * time.Millisecond) {
		p.pid, _ = strconv.Atoi(strings.TrimSpace(readFile(jobpid)))
		if time.Now().After(deadline) {
			t.Fatal("the shell did not start its job")
		}
	}
	p.waitProgress(50, 10*time.Second)
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.pid))
	p.cgroup = string(b)

	img := filepath.Join(dir, "img")
	stages := strings.Replace(dumpStages, "cr-files", "cr-files --shell-job", 1)
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d | %s > %s && cr-freeze kill < %s", p.pid, stages, img, img))
	select { // the shell reaps its killed job, and ends
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("the shell still waits for its job %d after the dump", p.pid)
	}
	if p.isOurs() {
		t.Fatalf("the job %d runs after the dump killed it", p.pid)
	}
	at := p.mustProgress()
	show := string(mustShell(t, 30*time.Second, "crit show "+img).stdout)
	checkFdLine(t, show, 20, "/dev/tty on the shell job's terminal")

	// cr-restore from a shell on terminal B, which stays (as the session
	// leader, so the job keeps its controlling terminal).
	ptyB, slaveB := openPty(t)
	pidfile := filepath.Join(dir, "restored.pid")
	var errb strings.Builder
	sh := exec.Command("sh", "-c", `cr-restore -d -i "$0" --pidfile "$1" && exec sleep 60`, img, pidfile)
	sh.Env = append(os.Environ(), "PATH="+filepath.Dir(bin("cr-restore"))+":"+os.Getenv("PATH"))
	sh.Stdin, sh.Stdout, sh.Stderr = slaveB, slaveB, &errb
	sh.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sh.Process.Kill(); sh.Wait() })
	if !awaitFile(pidfile, 30*time.Second) {
		t.Fatalf("cr-restore did not restore the job: %s", errb.String())
	}
	p.checkPidfile(pidfile)
	p.checkProgressFrom(at)
	got := readUntil(ptyB, "bye via /dev/tty")
	p.terminate(at)
	select {
	case s := <-got:
		if !strings.Contains(s, "bye from the job") || !strings.Contains(s, "bye via /dev/tty") {
			t.Errorf("terminal B shows %q, want the job's goodbyes", s)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("the job's goodbye through /dev/tty did not reach terminal B")
	}
}

// readUntil reads f in the background until what it read contains marker
// (or f fails), then sends all of it.
func readUntil(f *os.File, marker string) <-chan string {
	got := make(chan string, 1)
	go func() {
		var all []byte
		buf := make([]byte, 256)
		for !strings.Contains(string(all), marker) {
			n, err := f.Read(buf)
			if err != nil {
				break
			}
			all = append(all, buf[:n]...)
		}
		got <- string(all)
	}()
	return got
}

// TestFdProcPid: fds on the process's own /proc/PID/ files (status, stat
// with an offset, the directory, task/PID/comm) come back as the restored
// process's files, whose inodes differ; also in a --pidns copy beside the
// original, where they are the namespace's (test/progs/procfd.c). A file
// of a process outside the dump, or of another thread, is refused at dump
// time, and the process runs on.
func TestFdProcPid(t *testing.T) {
	t.Run("restore", func(t *testing.T) {
		p := startStateProg(t, "procfd")
		_, at := dumpKillRestore(t, p)
		p.terminate(at)
	})
	t.Run("pidns", func(t *testing.T) {
		startStateProg(t, "procfd").checkStateCopy()
	})
	for _, c := range []struct{ mode, why string }{
		{"foreign", `/proc/1/status: a file of process 1, which is not in the dump: not supported`},
		{"thread", `/proc/(\d+)/task/\d+/stat: a file of thread \d+ of process (\d+), which a restore creates after the files: not supported`},
	} {
		t.Run(c.mode, func(t *testing.T) {
			p := startStateProg(t, "procfd", c.mode)
			r := shell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, filepath.Join(p.dir, "img")))
			if r.err == nil {
				t.Fatalf("the dump of a process holding a file of %s succeeded", c.mode)
			}
			want := regexp.MustCompile(`cr-files: (error: )?pid ` + strconv.Itoa(p.pid) + ` fd \d+: ` + c.why)
			if !want.Match(r.stderr) {
				t.Errorf("cr-dump's errors do not match %q:\n%s", want, r.stderr)
			}
			p.checkRunning()
			p.terminate(0)
		})
	}
}

// TestFdPidfd: pidfds of a child (blocking, PIDFD_NONBLOCK, and a dup of
// one) come back as pidfds of the restored child, also in a --pidns copy
// beside the original, where the child has its dumped pid again
// (test/progs/pidfd.c: fdinfo, signals, waitid through them).
func TestFdPidfd(t *testing.T) {
	t.Run("restore", func(t *testing.T) {
		p := startStateProg(t, "pidfd")
		t.Cleanup(func() { killDescendants(t, p) })
		_, at := dumpKillRestore(t, p)
		p.terminate(at)
	})
	t.Run("pidns", func(t *testing.T) {
		p := startStateProg(t, "pidfd")
		t.Cleanup(func() { killDescendants(t, p) })
		p.checkStateCopy()
	})
}

// checkStateCopy dumps p, a task-state program, with --leave-running,
// restores a copy beside it with --pidns, and has both check their state.
// Both write their verdict at the start of one file, through fds opened at
// start: the original's is read first, then the copy's.
func (p *target) checkStateCopy() {
	t := p.t
	t.Helper()
	img := filepath.Join(p.dir, "img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d --leave-running -o %s", p.pid, img))
	copyPid := p.restoreBeside(img)
	p.terminate(0)
	if err := os.Truncate(p.verdict, 0); err != nil {
		t.Fatal(err)
	}
	p.checkCopy(copyPid)
}

// A process with 4,600 fds, each its own open file description, restores
// under a limit of open files for cr-restore that one that held each
// description's file twice (and a whole fd table at once) would pass: 6,000.
// Its soft limit is a shell's 1,024 (the Go runtime raises its own, not
// that of the processes it starts): the restored task's is raised for its
// fds. Under a limit too low even for the pipes, the restore fails with a
// hint and leaves nothing behind.
func TestFdMany(t *testing.T) {
	need(t, append(pipelineCmds, "cr-restore", "prlimit")...)
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Max < 6000 {
		t.Skipf("the hard RLIMIT_NOFILE here (%d, %v) is below the 6,000 this test gives cr-restore", lim.Max, err)
	}
	p := startFdProg(t, "fd_many", "")
	img := filepath.Join(p.dir, "img")
	mustShell(t, 120*time.Second, fmt.Sprintf("cr-freeze --pid %d | %s > %s", p.pid, dumpStages, img))
	mustShell(t, 30*time.Second, "cr-freeze kill < "+img)
	p.waitKilled()
	p.checkNoCgroup()
	at := p.mustProgress()

	r := shell(t, 60*time.Second, fmt.Sprintf("prlimit --nofile=2000:2000 cr-restore -d -i %s", img))
	if r.err == nil || !strings.Contains(string(r.stderr), "hint: cr-restore keeps a file of each pipe end") {
		t.Fatalf("restore under a limit of 2,000 files: %s", r)
	}
	p.checkPidFree()

	pidfile := filepath.Join(p.dir, "restored.pid")
	mustShell(t, 120*time.Second, fmt.Sprintf("prlimit --nofile=1024:6000 cr-restore -d -i %s --pidfile %s", img, pidfile))
	p.checkPidfile(pidfile)
	p.checkProgressFrom(at)
	p.terminate(at)
}

// A file mapped shared twice, read-only below and writable above: the
// restore opens it for each way it is mapped (once for both, the writable
// view failed to map: EACCES). The program checks that both views are the
// file's pages.
func TestFileMappedTwoWays(t *testing.T) {
	need(t, append(pipelineCmds, "cr-restore", "crit")...)
	p := startFdProg(t, "filemap", "")
	p.waitProgress(5, 10*time.Second)
	dumpRestore(t, p)
}

// Files named with a space, a newline, a tab, " (deleted)" (a live file,
// which /proc shows as deleted files are shown), bytes that are not UTF-8,
// and a long path, each open and mapped shared: the names, offsets and
// mapped pages come back. A file named "x (deleted)" was refused as a
// deleted file linked elsewhere; one named in Latin-1 could not be encoded
// (the protobuf runtime refused its string: "string field contains invalid
// UTF-8").
func TestFdNames(t *testing.T) {
	need(t, append(pipelineCmds, "cr-restore", "crit")...)
	p := startFdProg(t, "fd_names", "")
	dumpRestore(t, p)
}

// A name with a newline in an error: the file "new\nline" (mapped and
// open) replaced after the dump is refused in one line, the newline
// written as \n (it split the error in two: found by TestMutatedImages
// on fd_names).
func TestFdNamesInErrors(t *testing.T) {
	need(t, "cr-dump", "cr-restore")
	p := startFdProg(t, "fd_names", "")
	img, _ := p.dumpKilled("img")
	name := filepath.Join(p.dir, "new\nline")
	if err := os.Rename(name, name+".dumped"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r := shell(t, 30*time.Second, "cr-restore -d -i "+img)
	if r.err == nil {
		t.Fatalf("restore with a replaced file went through: %s", r)
	}
	checkErrorLine(t, "cr-restore", r.stderr, regexp.MustCompile(`\S*/new\\nline (is not the file that was dumped|changed since the dump)`))
	p.checkPidFree()
}

// Unix socket names bound relative to the working directory, and absolute
// inside a chroot (a child jailed in EXTDIR/jail), as a mail server's
// master and its jailed daemons bind them; datagram sockets connected by
// such names to servers outside the dump. The restore binds and connects
// each name from where it was bound, so the program finds its sockets by
// the same names and the servers get its datagrams. Relative names were
// refused before; an absolute name in a chroot was bound from the
// restore's own root, outside the jail.
func TestUnixNamesFromDirs(t *testing.T) {
	need(t, append(pipelineCmds, "cr-restore", "crit")...)
	ext, servers := unixDirsServers(t)
	p := startFdProg(t, "fd_unixdirs", ext)
	checkUnixDirs(t, ext, dumpRestore(t, p), servers)
}

// unixDirsServers makes fd_unixdirs' EXTDIR and binds its two datagram
// servers there.
func unixDirsServers(t *testing.T) (string, map[string]*os.File) {
	t.Helper()
	ext := t.TempDir()
	servers := map[string]*os.File{}
	for _, d := range []string{"run", "jail"} {
		if err := os.Mkdir(filepath.Join(ext, d), 0o755); err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		servers[d] = os.NewFile(uintptr(fd), d)
		t.Cleanup(func() { servers[d].Close() })
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: filepath.Join(ext, d, "ext.dgram")}); err != nil {
			t.Fatal(err)
		}
	}
	return ext, servers
}

// checkUnixDirs checks crit show's fd lines say where the names are
// bound from, and that both servers got the restored program's datagram.
func checkUnixDirs(t *testing.T, ext, show string, servers map[string]*os.File) {
	t.Helper()
	if !strings.Contains(show, "run/rel.sock (from "+ext+")") || !strings.Contains(show, "/jail.sock (from "+filepath.Join(ext, "jail")+")") {
		t.Errorf("crit show does not say where run/rel.sock and /jail.sock are bound from:\n%s", show)
	}
	for d, want := range map[string]string{"run": "from outside parent", "jail": "from jail"} {
		fd := int(servers[d].Fd())
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})
		buf := make([]byte, 64)
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil || string(buf[:max(n, 0)]) != want {
			t.Errorf("%s/ext.dgram got %q (%v), want %q", d, buf[:max(n, 0)], err, want)
		}
	}
}

// TestUnixNameRelativeRefused: a name bound relative to a directory no
// process of the dump is in any more is refused, naming the process, the
// fd and the name; the program runs on.
func TestUnixNameRelativeRefused(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump")...)
	ext, _ := unixDirsServers(t)
	p := startFdProg(t, "fd_unixdirs", ext+",moved")
	r := shell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, filepath.Join(p.dir, "img")))
	if r.err == nil {
		t.Fatal("a socket bound to a relative name nobody can resolve was dumped")
	}
	want := regexp.MustCompile(`cr-files: (error: )?pid ` + strconv.Itoa(p.pid) + ` fd 2[0-4]: .*relative path "run/rel\.(sock|dgram)"`)
	if !want.Match(r.stderr) {
		t.Errorf("cr-dump's errors do not match %q:\n%s", want, r.stderr)
	}
	p.checkRunning()
	p.terminate(0)
}

// TestUnixSocketOfAnotherNetnsRefused: a server in a network namespace that
// accepted a connection made by its socket's path from another namespace
// holds a socket of that other namespace (the client's, as the kernel makes
// it). cr-dump refuses it, naming both namespaces, and the server runs on,
// thawed: it still echoes on that connection.
func TestUnixSocketOfAnotherNetnsRefused(t *testing.T) {
	needTCP(t)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed (make test installs it)")
	}
	ns := newNetns(t, "unix")
	dir := t.TempDir()
	sock := filepath.Join(dir, "echo.sock")
	const echo = `import socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)
c, _ = s.accept()
while True:
    b = c.recv(64)
    if not b: break
    c.sendall(b)`
	p := &target{t: t, name: "python3", path: python, dir: dir, exited: make(chan struct{})}
	p.cmd = exec.Command("nsenter", "--net="+ns.path, "--", python, "-c", echo, sock)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	p.launch()
	t.Cleanup(func() { p.stop(syscall.SIGKILL) })
	var conn net.Conn
	for deadline := time.Now().Add(10 * time.Second); conn == nil; time.Sleep(20 * time.Millisecond) {
		if conn, err = net.Dial("unix", sock); err != nil && time.Now().After(deadline) {
			t.Fatalf("the server in %s does not listen: %v", ns.name, err)
		}
	}
	defer conn.Close()
	roundTrip := func(msg string) {
		t.Helper()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, len(msg))
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, got); err != nil || string(got) != msg {
			t.Fatalf("echo of %q: %q, %v", msg, got, err)
		}
	}
	roundTrip("accepted")
	before, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.pid))
	if err != nil {
		t.Fatal(err)
	}
	r := shell(t, 60*time.Second, ns.in(fmt.Sprintf("cr-dump -t %d -o %s", p.pid, filepath.Join(dir, "img"))))
	if r.err == nil {
		t.Fatal("a socket of another network namespace was dumped")
	}
	ours, err := os.Stat("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile(fmt.Sprintf(`pid %d fd \d+: unix .*: it belongs to network namespace net:\[%d\], not the dump's net:\[\d+\]`,
		p.pid, ours.Sys().(*syscall.Stat_t).Ino))
	if !want.Match(r.stderr) {
		t.Errorf("cr-dump's errors do not match %q:\n%s", want, r.stderr)
	}
	if after, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.pid)); err != nil || !bytes.Equal(after, before) {
		t.Errorf("pid %d is not back in its cgroup: %q, was %q (%v)", p.pid, after, before, err)
	}
	roundTrip("still running") // thawed: it answers
}
