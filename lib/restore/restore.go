// Package restore rebuilds processes from an image stream (cr-restore).
//
// The coordinator (this package) decides everything; the restorer blob
// (crpipe/pie) runs syscalls on command inside the task being rebuilt. The
// order follows the stream, so memory streams straight from the input into
// the task with constant memory:
//
//	process record  -> a helper clones the task with its dumped PID
//	mm record       -> the restorer moves to a hole, the dumped VMAs are mapped
//	page frames     -> process_vm_writev into the task
//	files record    -> files are opened here and passed over SCM_RIGHTS
//	end             -> per-task state (signals, tid address, mm fields, rseq),
//	                   then the restorer is unmapped and the dumped registers
//	                   set through ptrace (final.go)
package restore

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/arch"
	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// Options are cr-restore's flags.
type Options struct {
	Input   string        // image file; stdin when empty
	Detach  bool          // return once the tree runs
	PidFile string        // write the root's PID here
	PidWait time.Duration // how long to wait for a dumped PID to become free
}

// task is one process being rebuilt.
type task struct {
	proc     *pb.Process
	pid      int
	r        *restorer
	core     *pb.ThreadCore
	state    *pb.TaskState
	mm       *pb.Mm
	files    *pb.Files
	hole     uint64
	holeSize uint64
	scratch  uint64
	writable []*pb.Vma
	ctlFd    int // the task's end of the control socket
	done     bool
}

// kill removes a task this restore created and reaps it.
func (t *task) kill() {
	if t.pid == 0 || t.done {
		return
	}
	unix.Kill(t.pid, unix.SIGKILL)
	var ws unix.WaitStatus
	unix.Wait4(t.pid, &ws, unix.WALL, nil)
	t.done = true
}

// Run restores the stream described by opts.
func Run(opts Options) error {
	in, err := stage.Input(opts.Input)
	if err != nil {
		return err
	}
	defer in.Close()
	rd, err := image.NewReader(in)
	if err != nil {
		return fmt.Errorf("input: %w", err)
	}
	var root *task
	defer func() {
		if root != nil && !root.done && err != nil {
			root.kill()
		}
		if root != nil && root.r != nil {
			root.r.sock.Close()
		}
	}()
	root, err = restoreStream(rd, opts)
	if err != nil {
		return err
	}
	if opts.PidFile != "" {
		if err := os.WriteFile(opts.PidFile, []byte(fmt.Sprintf("%d\n", root.pid)), 0o644); err != nil {
			return err
		}
	}
	if opts.Detach {
		root.done = true
		return nil
	}
	return waitRoot(root)
}

// waitRoot waits for the restored root and passes its status on.
func waitRoot(t *task) error {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(t.pid, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait for pid %d: %w", t.pid, err)
		}
		break
	}
	t.done = true
	switch {
	case ws.Exited():
		if ws.ExitStatus() != 0 {
			return &stage.ExitStatus{Code: ws.ExitStatus()}
		}
		return nil
	case ws.Signaled():
		return &stage.ExitStatus{Code: 128 + int(ws.Signal())}
	}
	return nil
}

// restoreStream consumes the stream and returns the running root task.
func restoreStream(rd *image.Reader, opts Options) (t *task, err error) {
	defer func() {
		if err != nil && t != nil {
			t.kill()
		}
	}()
	var spool *os.File
	defer func() {
		if spool != nil {
			spool.Close()
		}
	}()
	for {
		f, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return t, fmt.Errorf("input: %w", err)
		}
		switch f.Type {
		case image.TypeProcess:
			var p pb.Process
			if err := image.Unmarshal(f, &p); err != nil {
				return t, err
			}
			if t != nil {
				return t, stage.Hint(fmt.Errorf("frame %d: a second process (pid %d): restoring process trees is not supported yet", f.Index, p.Pid),
					"dump a single process; trees come with issue 4")
			}
			if len(p.Threads) > 1 {
				return t, fmt.Errorf("frame %d: pid %d has %d threads: restoring threads is not supported yet", f.Index, p.Pid, len(p.Threads))
			}
			t = &task{proc: &p}
			err := t.create()
			if errors.Is(err, ErrPidBusy) {
				// The dumped process may still be alive, waiting for its dump to
				// complete (cr-dump | cr-restore). Keep reading into a spool file
				// so the dump can finish, then wait for the PID to be freed.
				if spool, rd, err = spoolRest(rd); err != nil {
					return t, err
				}
				err = t.createWhenFree(opts.PidWait)
			}
			if err != nil {
				return t, err
			}
		case image.TypeThreadCore:
			var c pb.ThreadCore
			if err := image.Unmarshal(f, &c); err != nil {
				return t, err
			}
			if err := t.expect(f, c.Pid); err != nil {
				return t, err
			}
			t.core = &c
		case image.TypeTaskState:
			var s pb.TaskState
			if err := image.Unmarshal(f, &s); err != nil {
				return t, err
			}
			if err := t.expect(f, s.Pid); err != nil {
				return t, err
			}
			t.state = &s
		case image.TypeMm:
			var mm pb.Mm
			if err := image.Unmarshal(f, &mm); err != nil {
				return t, err
			}
			if err := t.expect(f, mm.Pid); err != nil {
				return t, err
			}
			t.mm = &mm
			if err := t.setupMm(&mm); err != nil {
				return t, err
			}
		case image.TypePages:
			h, data, err := f.Pages()
			if err != nil {
				return t, err
			}
			if err := t.expect(f, h.Pid); err != nil {
				return t, err
			}
			if t.mm == nil {
				return t, fmt.Errorf("frame %d at offset %d: pages before the mm record of pid %d: %w", f.Index, f.Offset, h.Pid, image.ErrCorrupt)
			}
			if err := t.writePages(h.Addr, data); err != nil {
				return t, fmt.Errorf("frame %d at offset %d: pid %d: %w", f.Index, f.Offset, h.Pid, err)
			}
		case image.TypeFiles:
			var fl pb.Files
			if err := image.Unmarshal(f, &fl); err != nil {
				return t, err
			}
			if err := t.expect(f, fl.Pid); err != nil {
				return t, err
			}
			t.files = &fl
			if err := t.restoreFiles(&fl); err != nil {
				return t, err
			}
		case image.TypeEnd:
		default:
			stage.Logf("frame %d: %s record not used by restore", f.Index, f.Type)
		}
	}
	if t == nil {
		return nil, fmt.Errorf("input: the stream holds no process")
	}
	if err := t.complete(); err != nil {
		return t, err
	}
	if err := t.finish(); err != nil {
		return t, err
	}
	return t, nil
}

func (t *task) expect(f *image.Frame, pid uint32) error {
	if t == nil || t.proc.Pid != pid {
		return fmt.Errorf("frame %d at offset %d: %s record for pid %d, which no process record announced: %w", f.Index, f.Offset, f.Type, pid, image.ErrCorrupt)
	}
	return nil
}

// complete checks that the stream carried everything a task needs.
func (t *task) complete() error {
	missing := ""
	switch {
	case t.core == nil:
		missing = "registers (cr-seize)"
	case t.mm == nil:
		missing = "memory (cr-pages)"
	case t.files == nil:
		missing = "files (cr-files)"
	}
	if missing != "" {
		return stage.Hint(fmt.Errorf("pid %d: the stream has no %s", t.pid, missing), "the image must come through every stage: cr-freeze | cr-seize | cr-parasite | cr-pages | cr-files | cr-tcp")
	}
	return nil
}

// create starts a helper that clones the task with its dumped PID.
func (t *task) create() error {
	r, helper, err := startHelper()
	if err != nil {
		return err
	}
	pid, err := r.clone(int(t.proc.Pid))
	if err != nil {
		r.sock.Close() // the helper exits on EOF
		helper.Wait()
		return err
	}
	helper.Wait()
	t.r, t.pid = r, pid
	return nil
}

func (t *task) createWhenFree(wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := t.create()
		if !errors.Is(err, ErrPidBusy) {
			return err
		}
		if time.Now().After(deadline) {
			return stage.Hint(fmt.Errorf("pid %d is still in use after %v", t.proc.Pid, wait),
				"the dumped process (or another one with its PID) is still running: kill it, or restore with --pidns (coming) to run beside it")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// spoolRest copies the remaining frames into an unlinked temporary file and
// returns a reader over it, so the producer of the stream can finish.
func spoolRest(rd *image.Reader) (*os.File, *image.Reader, error) {
	f, err := os.CreateTemp("", "crpipe-spool-*")
	if err != nil {
		return nil, nil, fmt.Errorf("spool: %w", err)
	}
	os.Remove(f.Name())
	w, err := image.NewWriter(f, image.WriterOptions{})
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	for {
		fr, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err == nil && fr.Type == image.TypeEnd {
			continue // the spool gets its own end frame
		}
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("input: %w", err)
		}
		if err := w.Pass(fr); err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("spool: %w", err)
		}
	}
	if err := w.Close(); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("spool: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, nil, err
	}
	nr, err := image.NewReader(f)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("spool: %w", err)
	}
	return f, nr, nil
}

// helperCmd is kept for symmetry in tests.
var _ = exec.Command

// regsFor returns the registers the task resumes with.
func (t *task) regsFor() (unix.PtraceRegs, error) {
	regs, err := arch.RegsFromPB(t.core.Regs)
	if err != nil {
		return regs, fmt.Errorf("pid %d: %w", t.pid, err)
	}
	return regs, nil
}
