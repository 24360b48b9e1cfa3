package restore

import (
	"fmt"

	"crpipe/lib/image"
	"crpipe/lib/pb"
)

// Task state records (lib/pb/state.proto): cr-seize's ThreadState and
// ProcessState, cr-parasite's ThreadInside and ProcessInside. They are kept
// here until the state hooks (state_*.go) turn them into syscalls.

// stateImage holds the task state records of one restore, by pid and tid.
// The larger two, ThreadState and ProcessState (its limits), are held
// encoded (held.go): threadState and processState decode them.
type stateImage struct {
	threads map[uint32]held             // ThreadState by tid
	procs   map[uint32]held             // ProcessState by pid
	inside  map[uint32]*pb.ThreadInside // by tid
	pinside map[uint32]*pb.ProcessInside
}

const stateKey = "state"

func states(rc *Ctx) *stateImage {
	if si, ok := rc.Shared[stateKey].(*stateImage); ok {
		return si
	}
	si := &stateImage{
		threads: map[uint32]held{},
		procs:   map[uint32]held{},
		inside:  map[uint32]*pb.ThreadInside{},
		pinside: map[uint32]*pb.ProcessInside{},
	}
	rc.Shared[stateKey] = si
	return si
}

func init() {
	registerRecord(image.TypeThreadState, func(rc *Ctx, f *image.Frame) error {
		m := &pb.ThreadState{}
		return storeState(rc, f, m, func(si *stateImage) { si.threads[m.Tid] = rc.holder.hold(f.Payload) })
	})
	registerRecord(image.TypeProcessState, func(rc *Ctx, f *image.Frame) error {
		m := &pb.ProcessState{}
		return storeState(rc, f, m, func(si *stateImage) { si.procs[m.Pid] = rc.holder.hold(f.Payload) })
	})
	registerRecord(image.TypeThreadInside, func(rc *Ctx, f *image.Frame) error {
		m := &pb.ThreadInside{}
		return storeState(rc, f, m, func(si *stateImage) { si.inside[m.Tid] = m })
	})
	registerRecord(image.TypeProcessInside, func(rc *Ctx, f *image.Frame) error {
		m := &pb.ProcessInside{}
		return storeState(rc, f, m, func(si *stateImage) { si.pinside[m.Pid] = m })
	})
}

// storeState decodes a record into m and files it, after checking that
// its pid and tid belong to the tree.
func storeState(rc *Ctx, f *image.Frame, m pb.Message, store func(*stateImage)) error {
	if err := image.Unmarshal(f, m); err != nil {
		return err
	}
	pid, tid := ids(m)
	t, err := rc.taskFor(f, pid)
	if err != nil {
		return err
	}
	if !hasThread(t, tid) {
		return fmt.Errorf("frame %d at offset %d: %s record for tid %d, not a thread of pid %d: %w", f.Index, f.Offset, f.Type, tid, pid, image.ErrCorrupt)
	}
	store(states(rc))
	return nil
}

// threadState is the ThreadState of thread tid of t, nil where the
// stream had none.
func (si *stateImage) threadState(t *task, tid uint32) (*pb.ThreadState, error) {
	return heldIn[pb.ThreadState](si.threads, t, tid)
}

// processState is the ProcessState of t, nil where the stream had none.
func (si *stateImage) processState(t *task) (*pb.ProcessState, error) {
	return heldIn[pb.ProcessState](si.procs, t, t.proc.Pid)
}

// heldIn decodes the record hs holds for tid (a thread of t, or t's pid),
// if it holds one.
func heldIn[T any, M interface {
	*T
	pb.Message
}](hs map[uint32]held, t *task, tid uint32) (M, error) {
	h, ok := hs[tid]
	if !ok {
		return nil, nil
	}
	m := M(new(T))
	if err := h.decode(m); err != nil {
		return nil, fmt.Errorf("pid %d tid %d: %w", t.proc.Pid, tid, err)
	}
	return m, nil
}

func ids(m pb.Message) (pid, tid uint32) {
	switch m := m.(type) {
	case *pb.ThreadState:
		return m.Pid, m.Tid
	case *pb.ProcessState:
		return m.Pid, m.Pid
	case *pb.ThreadInside:
		return m.Pid, m.Tid
	case *pb.ProcessInside:
		return m.Pid, m.Pid
	}
	return 0, 0
}

func hasThread(t *task, tid uint32) bool {
	if tid == t.proc.Pid {
		return true
	}
	for _, x := range t.proc.Threads {
		if x == tid {
			return true
		}
	}
	return false
}
