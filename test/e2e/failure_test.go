package e2e

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pierrec/lz4/v4"
	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/proc"
)

// bigMB is the counter's anonymous memory when a test needs the dump to be
// busy streaming pages for a while.
const bigMB = 256

// killStageWhileStreaming reads stdout of a running dump until at least
// 16 MiB have come out, stops reading (the pipe's back-pressure then holds
// cr-pages mid-memory), SIGKILLs the process named stage that descends
// from the dump (the dump itself for ""), then drains the rest.
func killStageWhileStreaming(t *testing.T, cmd *exec.Cmd, out io.Reader, stage string) {
	signalWhileStreaming(t, cmd, out, stage, syscall.SIGKILL)
}

// signalWhileStreaming is killStageWhileStreaming with sig.
func signalWhileStreaming(t *testing.T, cmd *exec.Cmd, out io.Reader, stage string, sig syscall.Signal) {
	t.Helper()
	if n, err := io.CopyN(io.Discard, out, 16<<20); err != nil {
		t.Fatalf("the dump wrote only %d bytes before ending (%v): want a dump still streaming memory", n, err)
	}
	pages := cmd.Process.Pid
	if stage != "" {
		pages = descendant(cmd.Process.Pid, stage)
	}
	if pages == 0 {
		t.Fatalf("no %s running under the dump (pid %d) after 16 MiB of output", stage, cmd.Process.Pid)
	}
	t.Logf("%v to %s (pid %d) mid-dump", sig, cmp.Or(stage, "cr-dump"), pages)
	if err := syscall.Kill(pages, sig); err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, out)
}

// TestKillPagesMidDump: cr-pages killed while memory streams through
// cr-dump (the counter's memory lent: cr-dump runs cr-pages --lend); cr-dump
// fails and leaves the target thawed, in its original cgroup, with the
// lender and its pipe gone, running on with its state intact. Then
// cr-dump killed itself, cr-pages running in it: its guard thaws, as
// cr-dump would have.
func TestKillPagesMidDump(t *testing.T) {
	t.Run("stage-processes", func(t *testing.T) { killPagesMidDump(t, true) })
	t.Run("in-dump", func(t *testing.T) { killPagesMidDump(t, false) })
}

func killPagesMidDump(t *testing.T, stageProcesses bool) {
	need(t, append(pipelineCmds, "cr-dump")...)
	p := startCounter(t, "counter", bigMB)
	before := p.layout()
	args, victim := []string{"-v", "-t", strconv.Itoa(p.pid)}, ""
	if stageProcesses {
		args, victim = append(args, "--stage-processes"), "cr-pages"
	}
	cmd, out, stderr := startDumpToPipe(t, args...)
	killStageWhileStreaming(t, cmd, out, victim)
	err := cmd.Wait()
	t.Logf("cr-dump: %v\n%s", err, stderr.Bytes())
	var ee *exec.ExitError
	if !stageProcesses {
		if !errors.As(err, &ee) || ee.ExitCode() != -1 {
			t.Fatalf("cr-dump killed: %v", err)
		}
		p.waitThawed()
	} else if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("cr-dump with its cr-pages killed: %v, want exit status 1", err)
	} else if !regexp.MustCompile(`(?m)^cr-dump: error: .*cr-pages`).Match(stderr.Bytes()) {
		t.Errorf("cr-dump's error does not name the stage that failed (cr-pages):\n%s", stderr.Bytes())
	}
	if !strings.Contains(stderr.String(), "its threads are put back as they were") {
		t.Errorf("the thaw does not say it put back the threads of the process that lent its pages:\n%s", stderr.Bytes())
	}
	p.checkLayout(before)
	p.checkRunning()
	p.terminate(1)
}

// startDumpToPipe starts cr-dump args with its stream on a pipe the caller
// reads, and its stderr kept.
func startDumpToPipe(t *testing.T, args ...string) (*exec.Cmd, io.Reader, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(bin("cr-dump"), args...)
	stderr := new(bytes.Buffer)
	cmd.Stderr = stderr
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, out, stderr
}

// TestDumpSignalledMidDump: SIGTERM (as Ctrl-C's SIGINT) reaches cr-dump
// while memory streams: it stops its stages (cr-pages mid-memory, its
// lender at work), thaws the target itself and says it was interrupted;
// the target runs on as it was. With the stages in cr-dump's process and
// as processes.
func TestDumpSignalledMidDump(t *testing.T) {
	for _, mode := range []string{"--stage-processes", ""} {
		t.Run(strings.TrimPrefix(cmp.Or(mode, "in-dump"), "--"), func(t *testing.T) {
			need(t, append(pipelineCmds, "cr-dump")...)
			p := startCounter(t, "counter", bigMB)
			before := p.layout()
			args := []string{"-v", "-t", strconv.Itoa(p.pid)}
			if mode != "" {
				args = append(args, mode)
			}
			cmd, out, stderr := startDumpToPipe(t, args...)
			signalWhileStreaming(t, cmd, out, "", syscall.SIGTERM)
			err := cmd.Wait()
			t.Logf("cr-dump: %v\n%s", err, stderr.Bytes())
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("cr-dump signalled: %v, want exit status 1", err)
			}
			if !regexp.MustCompile(`(?m)^cr-dump: error: .*interrupted by terminated.*pid \d+ thawed`).Match(stderr.Bytes()) {
				t.Errorf("cr-dump does not say it was interrupted and thawed the target:\n%s", stderr.Bytes())
			}
			if _, err := os.Stat(p.cgroupDir()); err == nil {
				t.Errorf("the target is still in %s after cr-dump ended", p.cgroupDir())
			}
			p.checkLayout(before)
			p.checkRunning()
			p.terminate(1)
		})
	}
}

// layout is what a failed dump must leave as it was besides the state the
// program checks itself: the mappings and the open fds.
func (p *target) layout() string {
	p.t.Helper()
	return pidLayout(p.t, p.pid)
}

// pidLayout is layout for any process.
func pidLayout(t *testing.T, pid int) string {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, fd := range fds {
		link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		names = append(names, fd.Name()+" "+link)
	}
	return readFile(fmt.Sprintf("/proc/%d/maps", pid)) + strings.Join(names, "\n")
}

func (p *target) checkLayout(before string) {
	p.t.Helper()
	if after := p.layout(); after != before {
		p.t.Errorf("mappings or fds changed (something of a stage left behind?): %s", firstDiff(before, after))
	}
}

// TestKillPagesMidPipeline: the same in the explicit pipeline, where the
// disposition is the user's: `cr-freeze thaw --pid` puts the target back.
func TestKillPagesMidPipeline(t *testing.T) {
	for _, stages := range []string{dumpStages, strings.Replace(dumpStages, "cr-pages", "cr-pages --lend", 1)} {
		t.Run(strings.Fields(stages)[4], func(t *testing.T) { killPagesMidPipeline(t, stages) })
	}
}

func killPagesMidPipeline(t *testing.T, stages string) {
	need(t, pipelineCmds...)
	p := startCounter(t, "counter", bigMB)
	before := p.layout()
	cmd := shellCmd(fmt.Sprintf("cr-freeze --pid %d | %s", p.pid, stages))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	killStageWhileStreaming(t, cmd, out, "cr-pages")
	if err := cmd.Wait(); err == nil {
		t.Fatalf("the pipeline succeeded with cr-pages killed\n%s", stderr.Bytes())
	}
	t.Logf("pipeline stderr:\n%s", stderr.Bytes())
	mustShell(t, 30*time.Second, fmt.Sprintf("cr-freeze thaw --pid %d", p.pid))
	p.checkLayout(before)
	p.checkRunning()
	p.terminate(1)
}

// damaged is a broken copy of a good image.
type damaged struct {
	name string
	data []byte
}

// damage makes the broken streams of issue 3 from a good image: truncated,
// a flipped byte, a wrong magic, a future major version.
// frameInfo is where a frame of an image lies, and what it is.
type frameInfo struct {
	typ       image.Type
	off, plen int64 // its offset, and its payload's length
	index     uint64
	pid       uint32 // a pages frame's
}

// readFrames reads where every frame of the image b lies.
func readFrames(t *testing.T, b []byte) []frameInfo {
	t.Helper()
	r, err := image.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("the image does not read: %v", err)
	}
	var frames []frameInfo
	for {
		f, err := r.Next()
		if err == io.EOF {
			return frames
		}
		if err != nil {
			t.Fatalf("the image does not read: %v", err)
		}
		fi := frameInfo{f.Type, f.Offset, int64(len(f.Payload)), f.Index, 0}
		if f.Type == image.TypePages {
			h, _ := f.PagesHeader()
			fi.pid = h.Pid
		}
		frames = append(frames, fi)
	}
}

func damage(t *testing.T, good []byte) []damaged {
	t.Helper()
	frames := readFrames(t, good)
	var pages, lastPages, meta, end *frameInfo
	for i := range frames {
		f := &frames[i]
		switch {
		case f.typ == image.TypeEnd:
			end = f
		case f.typ == image.TypePages:
			if pages == nil || f.plen > pages.plen {
				pages = f
			}
			lastPages = f
		case f.typ == image.TypeMm && meta == nil:
			meta = f
		}
	}
	if pages == nil || meta == nil || end == nil {
		t.Fatalf("the good image lacks a pages, mm or end frame: %+v", frames)
	}
	flip := func(at int64) []byte {
		b := bytes.Clone(good)
		b[at] ^= 0x40
		return b
	}
	magic := bytes.Clone(good)
	magic[1] = 'X'
	future := bytes.Clone(good)
	binary.LittleEndian.PutUint16(future[8:], image.Major+1)
	pagesMid := pages.off + image.FrameHeaderSize + pages.plen/2
	return []damaged{
		{"truncated-in-page-payload", good[:pagesMid]},
		{"truncated-before-end", good[:end.off]},
		{"truncated-in-end", good[:len(good)-1]},
		{"flipped-byte-in-page-payload", flip(pagesMid)},
		// Late in the stream: a restore that streams would have begun.
		{"flipped-byte-in-last-page-frame", flip(lastPages.off + image.FrameHeaderSize + lastPages.plen - 1)},
		{"flipped-byte-in-mm", flip(meta.off + image.FrameHeaderSize + meta.plen/2)},
		{"flipped-byte-in-frame-length", flip(pages.off + 9)},
		{"wrong-magic", magic},
		{"future-major-version", future},
		{"lz4-truncated-mid-stream", lz4Half(t, good)},
	}
}

func lz4Half(t *testing.T, b []byte) []byte {
	c := lz4Compress(t, b)
	return c[:len(c)/2]
}

func lz4Compress(t *testing.T, b []byte) []byte {
	var out bytes.Buffer
	w := lz4.NewWriter(&out)
	// Small blocks, so that half the compressed stream holds whole frames.
	if err := w.Apply(lz4.BlockSizeOption(lz4.Block64Kb)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

var frameAndOffset = regexp.MustCompile(`(frame \d+|header)\b.*\boffset \d+`)

// TestBadStreams: a damaged image makes crit check and cr-restore fail
// with an error naming the frame and offset, leaves no process (a damage
// found late, in the contents of a page frame, kills what the restore made
// so far) and leaves no cgroup behind. The good image it was made from then restores.
func TestBadStreams(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore", "crit")...)
	// 8 MiB: page frames large enough for cr-restore to read their
	// contents from the file piece by piece, after the frame header
	// (image.Reader.PagesInFile): their checksum is known only at the end.
	p := startCounter(t, "counter", 8)
	img, at := p.dumpKilled("good.img")
	good, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range damage(t, good) {
		t.Run(d.name, func(t *testing.T) {
			f := filepath.Join(p.dir, d.name+".img")
			if err := os.WriteFile(f, d.data, 0o644); err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct{ tool, script string }{
				{"crit", "crit check " + f},
				{"cr-restore", fmt.Sprintf("cr-restore -d -i %s --pidfile %s.pid", f, f)},
			} {
				r := shell(t, 60*time.Second, c.script)
				if r.err == nil {
					t.Errorf("%s: succeeded on a damaged image", c.script)
				} else if code := r.state.ExitCode(); code != 1 {
					t.Errorf("%s: exit status %d, want 1", c.script, code)
				}
				checkErrorLine(t, c.tool, r.stderr, frameAndOffset)
				p.checkPidFree()
				p.checkNoCgroup()
			}
			if _, err := os.Stat(f + ".pid"); err == nil {
				t.Errorf("cr-restore wrote a pidfile for a failed restore")
			}
		})
	}
	// The control: the image the damaged ones came from is good.
	p.restoreDetached(img)
	p.checkProgressFrom(at)
	p.terminate(at)
}

// checkErrorLine checks stderr holds the house error: one line
// "TOOL: error: ..." matching want, optionally one "TOOL: hint: ..." line,
// and nothing else.
func checkErrorLine(t *testing.T, tool string, stderr []byte, want *regexp.Regexp) {
	t.Helper()
	ls := lines(stderr)
	var errs, hints, other []string
	for _, l := range ls {
		switch {
		case strings.HasPrefix(l, tool+": error: "):
			errs = append(errs, l)
		case strings.HasPrefix(l, tool+": hint: "):
			hints = append(hints, l)
		default:
			other = append(other, l)
		}
	}
	if len(errs) != 1 || len(hints) > 1 || len(other) > 0 {
		t.Errorf("%s: want one %q line (and at most one hint), got:\n%s", tool, tool+": error: ...", stderr)
		return
	}
	if want != nil && !want.MatchString(errs[0]) {
		t.Errorf("%s: error does not match %q: %s", tool, want, errs[0])
	}
}

// freePid returns a PID no process uses now.
func freePid(t *testing.T) int {
	max := 32768
	if b, err := os.ReadFile("/proc/sys/kernel/pid_max"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			max = n
		}
	}
	for range 1000 {
		pid := max/2 + rand.Intn(max/2-1)
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			return pid
		}
	}
	t.Fatal("no free pid found")
	return 0
}

// TestDumpNoSuchPid: one error line naming the PID, and a hint.
func TestDumpNoSuchPid(t *testing.T) {
	for _, c := range []struct{ tool, script string }{
		{"cr-dump", "cr-dump -t %d > /dev/null"},
		{"cr-freeze", "cr-freeze --pid %d > /dev/null"},
	} {
		t.Run(c.tool, func(t *testing.T) {
			need(t, c.tool)
			pid := freePid(t)
			r := shell(t, 30*time.Second, fmt.Sprintf(c.script, pid))
			if r.err == nil || r.state.ExitCode() != 1 {
				t.Fatalf("%s on free pid %d: %v, want exit status 1", c.tool, pid, r.err)
			}
			checkErrorLine(t, c.tool, r.stderr, regexp.MustCompile(`\b`+strconv.Itoa(pid)+`\b`))
			if !bytes.Contains(r.stderr, []byte(c.tool+": hint: ")) {
				t.Errorf("%s: no hint line:\n%s", c.tool, r.stderr)
			}
			if _, err := os.Stat(filepath.Join(cgroup2, fmt.Sprintf("crpipe-%d", pid))); err == nil {
				t.Errorf("a cgroup crpipe-%d was left for a pid that does not exist", pid)
			}
		})
	}
}

// TestDumpNotPermitted: a user who may not touch the target gets one error
// line and a hint, and the target is left alone.
func TestDumpNotPermitted(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump")...)
	p := startCounter(t, "counter", 0)
	cmd := exec.Command(bin("cr-dump"), "-t", strconv.Itoa(p.pid))
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = io.Discard
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	t.Logf("cr-dump as nobody: %v\n%s", err, stderr.Bytes())
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("cr-dump as nobody: %v, want exit status 1", err)
	}
	checkErrorLine(t, "cr-dump", stderr.Bytes(), regexp.MustCompile(`\b`+strconv.Itoa(p.pid)+`\b`))
	if !bytes.Contains(stderr.Bytes(), []byte("cr-dump: hint: ")) {
		t.Errorf("no hint line:\n%s", stderr.Bytes())
	}
	p.checkRunning()
	p.terminate(1)
}

// TestParasiteDiesInStub: cr-parasite dies (CRPIPE_FAULT makes it exit
// as if killed) once the first thread of a multi-threaded target has run
// its batch and parks in the stub, with the stub's registers, and every
// other thread holds all signals blocked. cr-dump fails, and its thaw
// puts every thread back from the records the stub carries (registers,
// signal masks, rseq_cs) and unmaps the stub: the program runs on and
// checks its whole per-thread state (test/progs/threadstate.c).
func TestParasiteDiesInStub(t *testing.T) {
	parasiteDies(t, "parasite-dies-in-stub", "its threads are put back as they were")
}

// parasiteDies dumps test/progs/threadstate with cr-parasite made to die
// by CRPIPE_FAULT=fault: cr-dump fails, its thaw says putBack, and the
// program's mappings, signal masks and own checks are as before. Twice:
// cr-parasite a process of its own (cr-dump thaws), and cr-parasite run
// in cr-dump's process, which then dies with it (the guard thaws once
// cr-dump is gone).
func parasiteDies(t *testing.T, fault, putBack string) {
	t.Helper()
	for _, mode := range []string{"--stage-processes", ""} {
		t.Run(strings.TrimPrefix(cmp.Or(mode, "in-dump"), "--"), func(t *testing.T) {
			p := startStateProg(t, "threadstate")
			before := takeSnapshot(t, p.pid)
			r := shell(t, 60*time.Second, fmt.Sprintf("CRPIPE_FAULT=%s cr-dump %s -v -t %d -o %s", fault, mode, p.pid, filepath.Join(p.dir, "img")))
			if r.err == nil {
				t.Fatalf("cr-dump succeeded though its cr-parasite died")
			}
			if mode == "" {
				p.waitThawed()
			}
			if !strings.Contains(string(r.stderr), putBack) {
				t.Errorf("the thaw does not say %q:\n%s", putBack, r.stderr)
			}
			before.check(t)
			p.checkRunning()
			p.terminate(p.mustProgress())
		})
	}
}

// TestParasiteDiesAfterUnmap: cr-parasite dies (CRPIPE_FAULT makes it
// exit as if killed) right after the stub's munmap, before its sessions
// end: no stub and no record in the process any more, every thread of the
// multi-threaded target with all signals blocked, and the thread that ran
// the munmap just back from it. That thread holds its own registers
// there (inject's holdOwn), so it runs on in its own code; the
// thaw gives every thread back its signal mask from the record cr-parasite
// kept on the frozen cgroup (inject.KeepMasks). The program runs on and
// checks its whole per-thread state (test/progs/threadstate.c), signals
// included.
func TestParasiteDiesAfterUnmap(t *testing.T) {
	parasiteDies(t, "parasite-dies-after-unmap", "signal masks are put back")
}

// TestParasiteDiesAfterMmap: cr-parasite dies right after the stub's
// mmap, before it wrote the code or the records into it. The thaw finds
// the empty mapping from the record of the masks (inject.dropEmptyStub)
// and unmaps it, and puts the masks back: the program's mappings are as
// before, and it runs on and checks itself.
func TestParasiteDiesAfterMmap(t *testing.T) {
	parasiteDies(t, "parasite-dies-after-mmap", "the mapping is removed")
}

// TestParasiteDiesInFrozenCall: cr-parasite dies right after it swapped
// a sleeping thread's own syscall for the stub's mmap, the cgroup frozen
// for it (lib/inject/frozen.go). The mmap runs and the freezer holds the
// thread on its way out, the mmap's result in rax. The thaw gives it its
// own registers back before it thaws the cgroup (the record of them on
// the cgroup), then removes the empty mapping and puts the masks back:
// the program runs on and checks its whole per-thread state. (Before,
// a tracer killed in that call left the thread to run on with borrowed
// registers: a crash.)
func TestParasiteDiesInFrozenCall(t *testing.T) {
	parasiteDies(t, "inject-dies-in-frozen-call", "its registers are put back")
}

// TestDumpDiesWhileMappingStub: cr-dump is SIGKILLed while cr-parasite
// has every signal of a thread blocked, just after the stub's mmap,
// before any recovery record exists (the cgroup is thawed meanwhile; the
// thread holds its own registers since the mmap runs frozen, borrowed
// ones in a thread that was running its own code). cr-parasite, told by its parent-death signal, puts
// the process back before it exits, and the guard thaws it: the program
// runs on with its mappings and per-thread state intact. (Killed with
// SIGKILL, as the other stages are, it left the thread to run on with the
// mmap's registers.)
func TestDumpDiesWhileMappingStub(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump")...)
	p := startStateProg(t, "threadstate")
	before := takeSnapshot(t, p.pid)
	r := shell(t, 60*time.Second, fmt.Sprintf("CRPIPE_FAULT=dump-dies-while-mapping-stub cr-dump --stage-processes -t %d -o %s", p.pid, filepath.Join(p.dir, "img")))
	if r.err == nil {
		t.Fatalf("cr-dump succeeded though it was killed")
	}
	// The guard thaws it once cr-parasite lets go.
	p.waitThawed()
	before.check(t)
	p.checkRunning()
	p.terminate(p.mustProgress())
}

// waitThawed waits until the guard of a cr-dump that died has thawed p
// (its transient cgroup gone).
func (p *target) waitThawed() {
	t := p.t
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(p.cgroupDir()); err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guard did not thaw pid %d within 20 s", p.pid)
		}
	}
}

// TestRestoreSignalledAtEnd: SIGTERM reaches cr-restore as it starts
// releasing the restored tasks (CRPIPE_FAULT=restore-signalled-at-end).
// It finishes that step, then kills what it made and says why, instead
// of dying half way (some tasks released, TCP connections still locked);
// the image then restores.
func TestRestoreSignalledAtEnd(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	p := startCounter(t, "counter", 0)
	img, at := p.dumpKilled("img")
	r := shell(t, 60*time.Second, fmt.Sprintf("CRPIPE_FAULT=restore-signalled-at-end cr-restore -d -i %s", img))
	if r.err == nil || r.state.ExitCode() != 1 {
		t.Fatalf("cr-restore: %v, want exit status 1", r.err)
	}
	checkErrorLine(t, "cr-restore", r.stderr, regexp.MustCompile(`interrupted by terminated while the processes were released: all are killed`))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", p.pid)); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still exists after the interrupted restore: %s", p.pid, describe(p.pid))
		}
	}
	p.restoreDetached(img)
	p.checkProgressFrom(at)
	p.terminate(at)
}

// snapshot is what a failed dump must leave as it was in a process: its
// mappings (no stub left behind) and each thread's blocked signals.
type snapshot struct {
	pid         int
	maps, masks string
}

func takeSnapshot(t *testing.T, pid int) snapshot {
	t.Helper()
	return snapshot{pid, readFile(fmt.Sprintf("/proc/%d/maps", pid)), threadMasks(t, pid)}
}

// check compares the process with the snapshot.
func (s snapshot) check(t *testing.T) {
	t.Helper()
	now := takeSnapshot(t, s.pid)
	if now.maps != s.maps {
		t.Errorf("pid %d: the mappings changed (a stub left behind?): %s", s.pid, firstDiff(s.maps, now.maps))
	}
	if now.masks != s.masks {
		t.Errorf("pid %d: the threads' blocked signals changed: %s", s.pid, firstDiff(s.masks, now.masks))
	}
}

// threadMasks lists each thread of pid with its blocked signals (SigBlk).
func threadMasks(t *testing.T, pid int) string {
	t.Helper()
	tids, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for _, tid := range tids {
		m := regexp.MustCompile(`(?m)^SigBlk:\s*(\S+)`).FindStringSubmatch(readFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, tid.Name())))
		if m == nil {
			t.Fatalf("tid %s: no SigBlk in its status", tid.Name())
		}
		fmt.Fprintf(&out, "tid %s blocks %s\n", tid.Name(), m[1])
	}
	return out.String()
}

// TestDumpKilled: cr-dump itself SIGKILLed while the target is frozen
// (nothing of it can react): its stages die with it, and the guard it
// started thaws the target, puts it back in its cgroup and removes the
// unfinished image; the target runs on with its state intact.
func TestDumpKilled(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump")...)
	p := startCounter(t, "counter", bigMB)
	img := filepath.Join(p.dir, "img")
	cmd := exec.Command(bin("cr-dump"), "-t", strconv.Itoa(p.pid), "-o", img)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	events := filepath.Join(p.cgroupDir(), "cgroup.events")
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(readFile(events), "frozen 1"); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the target was not frozen within 10 s:\n%s", stderr.Bytes())
		}
	}
	var stages []int
	for _, name := range []string{"cr-seize", "cr-parasite", "cr-pages", "cr-files", "cr-tcp"} {
		if pid := descendant(cmd.Process.Pid, name); pid != 0 {
			stages = append(stages, pid)
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	t.Logf("SIGKILLed cr-dump (pid %d) with the target frozen; stages then running: %v", cmd.Process.Pid, stages)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(p.cgroupDir()); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the target is still in %s 20 s after cr-dump died: %s", p.cgroupDir(), readFile(events))
		}
	}
	// The stages get SIGKILL as cr-dump dies (PDEATHSIG); one may still be
	// on its way out when the guard is done.
	for _, pid := range stages {
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			st, err := proc.ReadStat(pid)
			if err != nil || st.State == 'Z' || !strings.HasPrefix(st.Comm, "cr-") {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("stage %s (pid %d, state %c) outlived cr-dump by 5 s", st.Comm, pid, st.State)
				break
			}
			t.Logf("stage %s (pid %d) still there, state %c", st.Comm, pid, st.State)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(p.dir, "*img*")); len(left) > 0 {
		t.Errorf("image files left behind: %v", left)
	}
	p.checkRunning()
	p.terminate(1)
}

// TestDumpDiesWhenComplete: cr-dump dies (CRPIPE_FAULT makes it SIGKILL
// itself) between the complete image and the kill. Its guard finishes the
// dump as cr-dump would have: it kills the target (thawed, a target whose
// pages were lent could change an image still on its way to a reader) and
// leaves the image, which restores.
func TestDumpDiesWhenComplete(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	p := startCounter(t, "counter", bigMB)
	img := filepath.Join(p.dir, "img")
	r := shell(t, 60*time.Second, fmt.Sprintf("CRPIPE_FAULT=dump-dies-when-complete cr-dump -v -t %d -o %s", p.pid, img))
	if r.err == nil {
		t.Fatal("cr-dump succeeded though it killed itself")
	}
	if !strings.Contains(string(r.stderr), "lends its private anonymous pages") {
		t.Errorf("the counter's pages were not lent:\n%s", r.stderr)
	}
	p.killedThenRestored(img)
}

// TestLendRefused: a process that cannot take the page lender (no fd free
// under its RLIMIT_NOFILE for the lender's pipe) has its pages copied
// instead: the dump succeeds, says why, and leaves the process as it was.
func TestLendRefused(t *testing.T) {
	need(t, append(pipelineCmds, "crit")...)
	p := start(t, "threads", func(p *target) []string { return []string{p.progress, p.verdict, "24"} })
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.pid))
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, fd := range fds {
		used[fd.Name()] = true
	}
	lowestFree := 0
	for used[strconv.Itoa(lowestFree)] {
		lowestFree++
	}
	var old unix.Rlimit
	if err := unix.Prlimit(p.pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatal(err)
	}
	if err := unix.Prlimit(p.pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(lowestFree), Max: old.Max}, nil); err != nil {
		t.Fatal(err)
	}
	before := p.layout()
	img := filepath.Join(p.dir, "img")
	r := mustShell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d | cr-seize | cr-parasite | cr-pages --lend -v | cr-files | cr-tcp > %s", p.pid, img))
	if !regexp.MustCompile(`pipe2 for the page lender: .*too many open files.*; copying its pages`).Match(r.stderr) {
		t.Errorf("cr-pages does not say it copied the pages of the process that refused the lender:\n%s", r.stderr)
	}
	mustShell(t, 30*time.Second, "crit check "+img)
	mustShell(t, 30*time.Second, fmt.Sprintf("cr-freeze thaw --pid %d", p.pid))
	if err := unix.Prlimit(p.pid, unix.RLIMIT_NOFILE, &old, nil); err != nil {
		t.Fatal(err)
	}
	p.checkLayout(before)
	p.checkRunning()
	p.terminate(1)
}

// TestLendingFailsCleanly: cr-pages fails (CRPIPE_FAULT) as it gets to the
// second process that lends, whose lender it started ahead of the writer
// and which runs with nobody reading its pipe, while the first one's is
// still being taken out behind the writer's back. cr-pages takes every
// lender out itself, before the thaw (which then has no thread to put
// back), and every process of the tree runs on as it was.
func TestLendingFailsCleanly(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump")...)
	p := start(t, "cow", func(p *target) []string { return []string{p.progress, p.verdict, "64"} })
	kids := descendants(p.pid)
	p.killRecorded(kids)
	pids := append([]int{p.pid}, kids...)
	before := treeLayout(t, pids)
	r := shell(t, 60*time.Second, fmt.Sprintf("CRPIPE_FAULT=pages-fails-while-lending cr-dump -v -t %d -o %s", p.pid, filepath.Join(p.dir, "img")))
	if r.err == nil {
		t.Fatalf("cr-dump succeeded though its cr-pages failed")
	}
	if !regexp.MustCompile(`(?m)^cr-dump: error: .*CRPIPE_FAULT=pages-fails-while-lending`).Match(r.stderr) {
		t.Errorf("cr-dump's error is not cr-pages' failure:\n%s", r.stderr)
	}
	if n := strings.Count(string(r.stderr), "lends its private anonymous pages"); n < 2 {
		t.Errorf("%d processes lent their pages before the failure, want 2 or more:\n%s", n, r.stderr)
	}
	if strings.Contains(string(r.stderr), "put back as they were") {
		t.Errorf("the thaw had threads to put back: cr-pages left a lender behind:\n%s", r.stderr)
	}
	if after := treeLayout(t, pids); after != before {
		t.Errorf("mappings or fds of the tree changed (a lender left behind?): %s", firstDiff(before, after))
	}
	p.checkRunning()
	p.terminate(p.mustProgress())
}

// treeLayout is layout for every process of pids.
func treeLayout(t *testing.T, pids []int) string {
	t.Helper()
	var out strings.Builder
	for _, pid := range pids {
		fmt.Fprintf(&out, "pid %d\n%s\n", pid, pidLayout(t, pid))
	}
	return out.String()
}

// TestPagesDiesSettingUpLender: cr-pages dies (CRPIPE_FAULT makes it exit
// as if killed) right after the batch that mapped its lender's memory and
// made its pipe in the process, before anything else: the thaw takes the
// mapping and both fds out with the stub, and the program runs on.
func TestPagesDiesSettingUpLender(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump")...)
	p := startCounter(t, "counter", bigMB)
	before := p.layout()
	r := shell(t, 60*time.Second, fmt.Sprintf("CRPIPE_FAULT=pages-dies-after-lender-setup cr-dump --stage-processes -v -t %d -o %s", p.pid, filepath.Join(t.TempDir(), "img")))
	t.Logf("cr-dump: %v\n%s", r.err, r.stderr)
	if r.err == nil || r.state.ExitCode() != 1 {
		t.Fatalf("cr-dump with its cr-pages dead: %v, want exit status 1", r.err)
	}
	if !regexp.MustCompile(`(?m)^cr-dump: error: .*cr-pages`).Match(r.stderr) {
		t.Errorf("cr-dump's error does not name the stage that failed (cr-pages)")
	}
	p.checkLayout(before)
	p.checkRunning()
	p.terminate(1)
}

// TestBadPagesInTree: a damaged pages frame of a process in the middle of
// a tree, found while the processes after it are being mapped (cr-restore
// maps the next tasks while one takes its pages): the restore fails with
// one error line naming the frame, and no process of the tree is left.
// Both kinds of frame: one read from the image file piece by piece, and a
// small one read whole. The good image then restores, and the tree checks
// its memory.
func TestBadPagesInTree(t *testing.T) {
	need(t, "cr-dump", "cr-restore")
	dir := t.TempDir()
	ready, verdict := filepath.Join(dir, "ready"), filepath.Join(dir, "verdict")
	cmd := exec.Command(prog("benchload"), ready, verdict, "procs", "8", "1", "random")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	var pids []int
	t.Cleanup(func() {
		for _, pid := range pids {
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe == prog("benchload") {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	pids = []int{cmd.Process.Pid}
	for deadline := time.Now().Add(20 * time.Second); readFile(ready) == ""; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("benchload did not get ready")
		}
	}
	pids = append(pids, descendants(cmd.Process.Pid)...)
	if len(pids) != 8 {
		t.Fatalf("benchload runs %d processes, want 8", len(pids))
	}
	img := filepath.Join(dir, "good.img")
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", pids[0], img))
	good, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	// The pages frames of the fourth process whose pages come.
	var order []uint32
	var large, small *frameInfo
	frames := readFrames(t, good)
	for i := range frames {
		f := &frames[i]
		if f.typ != image.TypePages {
			continue
		}
		if len(order) == 0 || order[len(order)-1] != f.pid {
			order = append(order, f.pid)
		}
		switch {
		case len(order) != 4:
		case f.plen >= image.PagesPreamble+256<<10 && large == nil:
			large = f
		case f.plen < image.PagesPreamble+256<<10 && small == nil:
			small = f
		}
	}
	if large == nil || small == nil {
		t.Fatalf("no large and small pages frames for the fourth process of the stream (%v)", order)
	}
	for _, c := range []struct {
		name string
		f    *frameInfo
	}{{"large", large}, {"small", small}} {
		t.Run(c.name, func(t *testing.T) {
			bad := append([]byte(nil), good...)
			bad[c.f.off+image.FrameHeaderSize+image.PagesPreamble+100] ^= 0x40
			f := filepath.Join(dir, c.name+".img")
			if err := os.WriteFile(f, bad, 0o644); err != nil {
				t.Fatal(err)
			}
			res := shell(t, 60*time.Second, fmt.Sprintf("cr-restore -d -i %s --pidfile %s.pid", f, f))
			if res.err == nil {
				t.Fatalf("cr-restore succeeded on an image with a damaged frame %d", c.f.index)
			} else if code := res.state.ExitCode(); code != 1 {
				t.Errorf("exit status %d, want 1", code)
			}
			checkErrorLine(t, "cr-restore", res.stderr, regexp.MustCompile(fmt.Sprintf(`frame %d\b.*\boffset %d\b`, c.f.index, c.f.off)))
			for _, pid := range pids {
				if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
					t.Errorf("pid %d of the tree exists after the failed restore (%s)", pid, procState(pid))
				}
			}
			if _, err := os.Stat(f + ".pid"); err == nil {
				t.Errorf("cr-restore wrote a pidfile for a failed restore")
			}
		})
	}
	// The control: the image they came from restores, and its memory checks.
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-restore -d -i %s", img))
	if err := syscall.Kill(pids[0], syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); !strings.HasPrefix(readFile(verdict), "PASS"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the restored tree's verdict: %q", readFile(verdict))
		}
	}
}
