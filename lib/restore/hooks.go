package restore

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"crpipe/lib/image"
	"crpipe/lib/pb"
)

// Extension points. Each capability (an fd kind, a record type, a piece of
// per-process or per-thread state) lives in its own file of this package and
// registers itself from init(), so that restore.go stays the coordinator.

// Ctx is one restore run: every task, and state that kinds share.
type Ctx struct {
	Tasks map[uint32]*task // by dumped pid
	Order []*task          // parents before children
	// Shared holds per-kind state, keyed by the kind's own prefix
	// (e.g. "pipe:1234" for the pipe with inode 1234).
	Shared map[string]any
	owned  []*os.File // closed when the restore ends
	pidns  bool       // --pidns: the tree goes into a new PID namespace
	init   *restorer  // that namespace's init (the root's parent)
	cgroup *os.File   // --cgroup: the directory the helper starts in
	early  *early     // the root's helper, started with the restore; nil once taken
	// --dumped-cgroups: each live process's dumped cgroup directory, from
	// the freeze record (cgroups.go)
	dumpedCgroups bool
	freeze        *pb.Freeze
	cgroupOf      map[uint32]string
	noUffd        bool // --no-uffd: fill memory with process_vm_writev only
	// fromFile: the input is an uncompressed regular file, and large page
	// frames are read from it where they go (image.Reader.PagesInFile).
	fromFile bool
	// fills: the tasks' fills under way or not waited for, in stream order;
	// open: the one the next pages frames of its task go to (fill.go).
	fills      []*fill
	open       *fill
	stopFills  atomic.Bool
	fillCopied atomic.Int64 // bytes of small frames copied for fills
	// descUses: how many times each open file description is opened, once
	// the whole stream is read (fd_desc.go); nil before.
	descUses map[uint64]int
	// inventory: the stream's inventory frame was read (and its page size
	// is this machine's)
	inventory bool
	// awaitingVma: memfds made for a description that says VMAs map them,
	// before any did (cr-files before cr-pages), by Shared key; each VMA
	// that maps one takes it off, and finish refuses any left
	// (fd_memfd.go).
	awaitingVma map[string]string
	// holder keeps the records held encoded (held.go), and vmaPaths the
	// VMAs' paths, one copy of each (decodeMm), for the reader.
	holder   holder
	vmaPaths map[string]string
	// mu guards all of the above while tasks are finished in parallel
	// (finishTask): held while a file is opened or a state's calls made,
	// not during the round trips to the tasks.
	mu sync.Mutex
}

// locked runs f holding rc.mu.
func (rc *Ctx) locked(f func() error) error {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return f()
}

func (rc *Ctx) owns(f *os.File) bool {
	for _, o := range rc.owned {
		if o == f {
			return true
		}
	}
	return false
}

// fdOpener returns the file to install as fd in t. The file is passed over
// SCM_RIGHTS and installed at fd.Fd with its close-on-exec flag; restore
// closes it then, so an opener returns a file of the caller's own, never
// one it keeps (shareDesc keeps a copy of a description that other fds or
// messages use, and returns duplicates of it).
type fdOpener func(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error)

var fdOpeners = map[pb.FdKind]fdOpener{}

func registerFdKind(k pb.FdKind, open fdOpener) {
	if _, dup := fdOpeners[k]; dup {
		panic(fmt.Sprintf("restore: fd kind %v registered twice", k))
	}
	fdOpeners[k] = shareDesc(open) // fd_desc.go: one open per dumped open file description
}

// recordHandler consumes a record type the coordinator does not know. The
// frame's payload is only valid during the call.
type recordHandler func(rc *Ctx, f *image.Frame) error

var recordHandlers = map[image.Type]recordHandler{}

func registerRecord(t image.Type, h recordHandler) {
	if _, dup := recordHandlers[t]; dup {
		panic(fmt.Sprintf("restore: record type %v registered twice", t))
	}
	recordHandlers[t] = h
}

// stateCalls produce syscalls run inside a task (by its restorer), with
// argument structs laid out in the scratch area.
type (
	processState func(rc *Ctx, t *task, s *scratchWriter) ([]call, error)
	threadState  func(rc *Ctx, t *task, tid uint32, s *scratchWriter) ([]call, error)
)

var (
	// processStates run once per process, after its fds are installed and
	// before its other threads are created.
	processStates []processState
	// threadStates run in every thread (the leader too), after threads exist.
	threadStates []threadState
	// lastStates run once per process at the very end, in the leader, once
	// every thread of the process is seized with PTRACE_O_SUSPEND_SECCOMP
	// (so seccomp filters installed here do not stop the restorer).
	lastStates []processState
	// lastThreadStates run in every thread after the process's lastStates,
	// the leader last: credentials (a change of credentials resets the
	// process's dumpable flag, which the leader sets again at the end).
	lastThreadStates []threadState
	// finishers run after every task runs again (e.g. lift a network lock).
	finishers []func(rc *Ctx) error
	// aborters run when a restore fails, after its tasks are killed: each
	// may undo what its kind set up, or add a hint to the error.
	aborters []func(rc *Ctx, err error) error
)

func registerProcessState(f processState) { processStates = append(processStates, f) }
func registerThreadState(f threadState)   { threadStates = append(threadStates, f) }
func registerLastState(f processState)    { lastStates = append(lastStates, f) }
func registerLastThreadState(f threadState) {
	lastThreadStates = append(lastThreadStates, f)
}
func registerFinisher(f func(rc *Ctx) error) {
	finishers = append(finishers, f)
}

// runLastThreadStates runs the lastThreadStates in every thread of t, the
// leader last: every thread's new credentials reset the process's dumpable
// flag, which the leader's set.
func (rc *Ctx) runLastThreadStates(t *task) error {
	if len(lastThreadStates) == 0 {
		return nil
	}
	run := func(o threadRef, s *scratchWriter) error {
		var calls []call
		err := rc.locked(func() (err error) {
			calls, err = threadStateCalls(rc, t, o.tid, s, lastThreadStates, nil)
			return err
		})
		if err != nil {
			return err
		}
		return t.runWithScratch(o.r, s, calls)
	}
	if err := t.eachThread(t.threadRefs(), run); err != nil {
		return err
	}
	return run(threadRef{t.proc.Pid, t.r}, &scratchWriter{base: t.scratch})
}

func registerAborter(f func(rc *Ctx, err error) error) { aborters = append(aborters, f) }
