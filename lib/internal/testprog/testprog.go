// Package testprog builds and runs target.c, the C test subject of the
// dump-side stage tests, and cleans up exactly the processes it started.
package testprog

import (
	"bufio"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"crpipe/lib/proc"
	"crpipe/lib/sys"
)

//go:embed testdata/target.c
var source []byte

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary compiles target.c once per source version (cached in the temp
// directory) and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		sum := sha256.Sum256(source)
		dir := filepath.Join(os.TempDir(), "crpipe-testprog-"+hex.EncodeToString(sum[:8]))
		binPath = filepath.Join(dir, "target")
		if _, err := os.Stat(binPath); err == nil {
			return
		}
		if buildErr = os.MkdirAll(dir, 0o755); buildErr != nil {
			return
		}
		src := filepath.Join(dir, "target.c")
		if buildErr = os.WriteFile(src, source, 0o644); buildErr != nil {
			return
		}
		tmp := fmt.Sprintf("%s.%d", binPath, os.Getpid())
		out, err := exec.Command("gcc", "-O2", "-Wall", "-pthread", "-o", tmp, src).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("gcc target.c: %v\n%s", err, out)
			return
		}
		buildErr = os.Rename(tmp, binPath)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// Proc is a running target.
type Proc struct {
	Cmd      *exec.Cmd
	Pid      int
	Handler  uint64 // address of the SIGUSR1 handler
	Restorer uint64 // sa_restorer glibc installed for it
	TidAddr  uint64 // clear_child_tid as the program read it
	Child    int    // pid of its child in "child" mode
	Output   string // the output file (StartFile)
	// In rseq mode: the address of its struct rseq's rseq_cs field and
	// the bounds of the critical section it spins in.
	RseqCs, RseqStart, RseqEnd uint64

	lines chan string
	done  chan struct{}
	err   error
}

// Start runs target with args, its stdout on a pipe, waits for "ready"
// and registers cleanup that kills this process (and its child, in child
// mode) by pid.
func Start(t testing.TB, args ...string) *Proc { t.Helper(); return start(t, false, args) }

// StartFile is Start with stdin on /dev/null and stdout and stderr on a
// regular file (which cr-files can checkpoint), read as it grows.
func StartFile(t testing.TB, args ...string) *Proc { t.Helper(); return start(t, true, args) }

func start(t testing.TB, toFile bool, args []string) *Proc {
	t.Helper()
	cmd := exec.Command(Binary(t), args...)
	p := &Proc{Cmd: cmd, lines: make(chan string, 1024), done: make(chan struct{})}
	if !toFile {
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				p.lines <- sc.Text()
			}
			close(p.lines)
			p.err = cmd.Wait()
			close(p.done)
		}()
	} else {
		path := filepath.Join(t.TempDir(), "target.out")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = f, f
		err = cmd.Start()
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		p.Output = path
		exited := make(chan struct{})
		go func() { p.err = cmd.Wait(); close(exited) }()
		go p.tail(path, exited)
	}
	p.Pid = cmd.Process.Pid
	t.Cleanup(p.kill)
	for {
		line, err := p.Next(10 * time.Second)
		if err != nil {
			t.Fatalf("target %v: %v", args, err)
		}
		if rest, ok := strings.CutPrefix(line, "info "); ok {
			for _, kv := range strings.Fields(rest) {
				k, v, _ := strings.Cut(kv, "=")
				n, _ := strconv.ParseUint(strings.TrimPrefix(v, "0x"), 16, 64)
				switch k {
				case "handler":
					p.Handler = n
				case "restorer":
					p.Restorer = n
				case "tidaddr":
					p.TidAddr = n
				}
			}
		}
		if _, err := fmt.Sscanf(line, "rseq cs=%v start=%v end=%v", &p.RseqCs, &p.RseqStart, &p.RseqEnd); err == nil {
			continue
		}
		if strings.HasPrefix(line, "child ") {
			if _, err := fmt.Sscanf(line, "child %d", &p.Child); err != nil {
				t.Fatalf("target child: %q", line)
			}
		}
		if line == "ready" {
			break
		}
	}
	return p
}

// tail reads lines of a growing file until the process has exited.
func (p *Proc) tail(path string, exited chan struct{}) {
	defer close(p.done)
	defer close(p.lines)
	f, err := os.Open(path)
	if err != nil {
		<-exited
		return
	}
	defer f.Close()
	r := bufio.NewReader(f)
	partial := ""
	last := false
	for {
		s, err := r.ReadString('\n')
		partial += s
		if err == nil {
			p.lines <- strings.TrimSuffix(partial, "\n")
			partial = ""
			continue
		}
		if last {
			return
		}
		select {
		case <-exited:
			last = true // one more pass for what was written before exit
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Next returns the next output line, or an error after timeout or at exit.
func (p *Proc) Next(timeout time.Duration) (string, error) {
	select {
	case l, ok := <-p.lines:
		if !ok {
			<-p.done
			return "", fmt.Errorf("target %d exited: %v", p.Pid, p.err)
		}
		return l, nil
	case <-time.After(timeout):
		return "", fmt.Errorf("target %d: no output for %v", p.Pid, timeout)
	}
}

const tickSettle = 50 * time.Millisecond

// Drain discards buffered output lines and returns the last one ("" if none).
func (p *Proc) Drain() string {
	last := ""
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				return last
			}
			last = l
		default:
			return last
		}
	}
}

// Ticks reports whether the target prints another "tick" within timeout.
// Lines that arrive in the first tickSettle were on their way already (a
// tick written just before a freeze is read after it): they do not count.
func (p *Proc) Ticks(timeout time.Duration) bool {
	settle := time.Now().Add(tickSettle)
	for {
		if _, err := p.Next(time.Until(settle)); err != nil {
			break
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		l, err := p.Next(time.Until(deadline))
		if err != nil {
			return false
		}
		if strings.HasPrefix(l, "tick ") {
			return true
		}
	}
}

// Wait waits for the process to exit and returns its error from exec.
func (p *Proc) Wait(timeout time.Duration) (error, bool) {
	select {
	case <-p.done:
		return p.err, true
	case <-time.After(timeout):
		return nil, false
	}
}

// Exited reports whether the process has been reaped.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *Proc) kill() {
	if p.Child > 0 {
		syscall.Kill(p.Child, syscall.SIGKILL)
	}
	if !p.Exited() {
		syscall.Kill(p.Pid, syscall.SIGKILL)
	}
	// Drain output so the reader goroutine can reap the process.
	go func() {
		for range p.lines {
		}
	}()
	p.Wait(10 * time.Second)
}

// OwnCgroup moves the process into a cgroup v2 group the test creates (so
// that a thaw has a non-root original to restore) and returns its
// directory. Cleanup moves whatever is left in it to the root and removes it.
func (p *Proc) OwnCgroup(t testing.TB) string {
	t.Helper()
	mount, err := proc.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mount, fmt.Sprintf("crtest-%d-%d", os.Getpid(), p.Pid))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
			for _, pid := range strings.Fields(string(b)) {
				sys.CgroupWrite(mount, "cgroup.procs", pid)
			}
		}
		for i := 0; i < 100 && os.Remove(dir) != nil; i++ {
			time.Sleep(10 * time.Millisecond)
		}
	})
	if err := sys.CgroupWrite(dir, "cgroup.procs", strconv.Itoa(p.Pid)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Cgroup returns the absolute cgroup v2 directory the process is in.
func (p *Proc) Cgroup(t testing.TB) string {
	t.Helper()
	mount, err := proc.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := proc.Cgroup2Of(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(mount, rel)
}

// CheckBusy reads the line `busy n` prints and checks it against an
// undisturbed run of the same computation in registers.
func (p *Proc) CheckBusy(t testing.TB, n uint64) {
	t.Helper()
	line, err := p.Next(60 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	x := uint64(1)
	for i := uint64(0); i < n*100000000; i++ {
		x = x*6364136223846793005 + 1442695040888963407 + (i >> 7)
	}
	if want := fmt.Sprintf("busy x=%x", x); !strings.EqualFold(line, want) {
		t.Fatalf("target printed %q, want %q", line, want)
	}
}
