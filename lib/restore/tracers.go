package restore

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"

	"crpipe/lib/sys"
)

// The tasks are released by one tracer per core: each an OS thread that
// seizes a share of them (every nth), readies them and detaches them, as
// ptrace requests for a thread must come from the thread that seized it.
// The phases run on every tracer at once, and none goes on to the next
// before all are through: no task is detached before every task is ready.

// tracer holds a share of the tasks from their seize to their release.
type tracer struct {
	tasks  []*task
	index  []int // each task's place in the tasks given to startTracers
	seized []int // the tids it holds
	do     chan func(*tracer) error
	out    chan error
}

// startTracers shares tasks out among n tracers.
func startTracers(tasks []*task, n int) []*tracer {
	n = max(1, min(n, len(tasks)))
	trs := make([]*tracer, n)
	for w := range trs {
		tr := &tracer{do: make(chan func(*tracer) error), out: make(chan error)}
		for i := w; i < len(tasks); i += n {
			tr.tasks, tr.index = append(tr.tasks, tasks[i]), append(tr.index, i)
		}
		go tr.run()
		trs[w] = tr
	}
	return trs
}

func (tr *tracer) run() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for f := range tr.do {
		tr.out <- f(tr)
	}
	// Stopped before the release: the restore failed, and what is still
	// held is let go (the tasks are killed next).
	for _, tid := range tr.seized {
		sys.PtraceDetach(tid, 0)
	}
	close(tr.out)
}

// tracerError is the error of the task at index in the tasks given to
// startTracers.
type tracerError struct {
	index int
	err   error
}

func (e *tracerError) Error() string { return e.err.Error() }

// eachTask runs f for each task of every tracer, on the tracer's thread,
// the tracers at once; a tracer stops at its first failure. It returns the
// error of the first task in the order given that failed.
func eachTask(trs []*tracer, f func(tr *tracer, t *task) error) error {
	for _, tr := range trs {
		tr.do <- func(tr *tracer) error {
			for i, t := range tr.tasks {
				if err := f(tr, t); err != nil {
					return &tracerError{tr.index[i], err}
				}
			}
			return nil
		}
	}
	var first *tracerError
	for _, tr := range trs {
		if err := <-tr.out; err != nil && (first == nil || err.(*tracerError).index < first.index) {
			first = err.(*tracerError)
		}
	}
	if first != nil {
		return first.err
	}
	return nil
}

// stopTracers ends the tracers, which let go of what they still hold.
func stopTracers(trs []*tracer) {
	for _, tr := range trs {
		close(tr.do)
	}
	for _, tr := range trs {
		for range tr.out {
		}
	}
}

// seize attaches to every thread of t without stopping it, with
// PTRACE_O_SUSPEND_SECCOMP: the last states install seccomp filters that
// must not apply to the restorer's own calls.
func (tr *tracer) seize(t *task) error {
	for _, id := range t.tids() {
		tid := id.outer
		if err := sys.PtraceSeize(tid, unix.PTRACE_O_TRACESYSGOOD|unix.PTRACE_O_SUSPEND_SECCOMP); err != nil {
			return fmt.Errorf("pid %d tid %d: %w", t.pid, tid, err)
		}
		tr.seized = append(tr.seized, tid)
	}
	return nil
}

// ready unmaps t's restorer and puts the dumped registers in place. Each
// thread, seized, sits in its restorer's recvmsg; PTRACE_INTERRUPT stops
// it inside get_signal. Once the other threads are stopped, the leader's
// restorer, still serving, closes their control sockets in one batch (a
// restorer whose recvmsg fails ends the process: never before its thread
// is stopped). The leader's last syscalls (close its own control socket,
// unmap the restorer) are injected at the restorer's own syscall
// instruction: the syscall-exit stop comes before the unmapped code after
// it could run.
func (tr *tracer) ready(t *task) error {
	ids := t.tids()
	for _, id := range ids[1:] {
		if err := interruptStop(id.outer); err != nil {
			return err
		}
	}
	if err := t.closeThreadControls(); err != nil {
		return err
	}
	if err := interruptStop(ids[0].outer); err != nil {
		return err
	}
	if err := t.dropRestorer(); err != nil {
		return err
	}
	for _, id := range ids {
		if err := t.setThreadState(id); err != nil {
			return err
		}
	}
	return nil
}

// release detaches every thread of t: it runs.
func (tr *tracer) release(t *task) error {
	for range t.tids() { // seized in this order
		tid := tr.seized[0]
		if err := sys.PtraceDetach(tid, 0); err != nil {
			return fmt.Errorf("tid %d: %w", tid, err)
		}
		tr.seized = tr.seized[1:]
	}
	return nil
}
