package parasite

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/internal/frozen"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// TestPendingSignals: signals sent to a frozen target stay queued; the
// stage records them, the thread's own and the process's, with their
// siginfo, and leaves them queued: the target's handler runs on thaw.
func TestPendingSignals(t *testing.T) {
	tg := frozen.Start(t, "tick")
	// SIGUSR1 has a handler in the target, which counts it.
	info := make([]byte, sys.SiginfoSize)
	le := binary.LittleEndian
	le.PutUint32(info, uint32(unix.SIGUSR1))
	le.PutUint32(info[8:], 0xffffffff) // si_code SI_QUEUE (-1)
	le.PutUint32(info[16:], uint32(os.Getpid()))
	le.PutUint64(info[24:], 42) // si_value
	if err := sys.RtSigqueueinfo(tg.Pid, unix.SIGUSR1, info); err != nil {
		t.Fatal(err)
	}
	if err := unix.Tgkill(tg.Pid, tg.Pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := stage.RunFilter(bytes.NewReader(tg.Stream), &out, false, Filter(Options{})); err != nil {
		t.Fatal(err)
	}
	var ti *pb.ThreadInside
	var pi *pb.ProcessInside
	for _, f := range frozen.Frames(t, out.Bytes()) {
		switch f.Type {
		case image.TypeThreadInside:
			ti = &pb.ThreadInside{}
			if err := image.Unmarshal(&f, ti); err != nil {
				t.Fatal(err)
			}
		case image.TypeProcessInside:
			pi = &pb.ProcessInside{}
			if err := image.Unmarshal(&f, pi); err != nil {
				t.Fatal(err)
			}
		}
	}
	if ti == nil || pi == nil {
		t.Fatalf("thread-inside %v, process-inside %v", ti, pi)
	}
	if len(ti.Pending) != 1 || ti.Pending[0].Signo != uint32(unix.SIGUSR1) || ti.Pending[0].Code != -6 /* SI_TKILL */ {
		t.Errorf("thread's pending signals %v, want SIGUSR1 from tgkill", ti.Pending)
	}
	if len(pi.SharedPending) != 1 || pi.SharedPending[0].Code != -1 || pi.SharedPending[0].Raw[24] != 42 {
		t.Errorf("process's pending signals %v, want SIGUSR1 queued with value 42", pi.SharedPending)
	}
	if ss := ti.Sigaltstack; ss == nil || ss.Flags != 2 /* SS_DISABLE */ {
		t.Errorf("sigaltstack %v, want disabled", ss)
	}
	if pi.Dumpable != 1 || pi.ChildSubreaper || len(pi.Itimers) != 0 || len(pi.PosixTimers) != 0 {
		t.Errorf("process-inside %v", pi)
	}
	tg.Thaw(t)
	if !tg.Ticks(10 * time.Second) {
		t.Fatal("the target does not tick after the thaw")
	}
}

// TestThreadIDs: a thread's ids come from cr-seize's ThreadState record
// when one passed (no /proc read: the tid here exists nowhere), from its
// status otherwise; a record without credentials is not used, and a
// damaged one is an error naming its frame.
func TestThreadIDs(t *testing.T) {
	frame := func(ts *pb.ThreadState) *image.Frame {
		b, err := pb.Marshal(ts)
		if err != nil {
			t.Fatal(err)
		}
		return &image.Frame{Type: image.TypeThreadState, Payload: b}
	}
	const gone = 1 << 30 // above pid_max: no such thread
	seen := threadIDs{}
	creds := &pb.Creds{Uids: []uint32{1000, 0, 0, 0}, Gids: []uint32{100, 0, 0, 0}}
	if _, ok, err := seen.observe(frame(&pb.ThreadState{Pid: gone, Tid: gone, Creds: creds, SeccompMode: 2})); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if _, ok, err := seen.observe(frame(&pb.ThreadState{Pid: gone, Tid: gone + 1})); ok || err != nil {
		t.Fatal(ok, err)
	}
	if id, err := seen.of(gone, gone); err != nil || id != (threadID{uid: 1000, gid: 100, seccomp: true}) {
		t.Errorf("recorded thread: %+v, %v", id, err)
	}
	if _, err := seen.of(gone, gone+1); err == nil {
		t.Errorf("a record without credentials was used")
	}
	self := os.Getpid()
	if id, err := seen.of(self, self); err != nil || id.uid != os.Getuid() || id.gid != os.Getgid() {
		t.Errorf("unrecorded thread (this process): %+v, %v; want uid %d gid %d", id, err, os.Getuid(), os.Getgid())
	}
	if _, _, err := seen.observe(&image.Frame{Type: image.TypeThreadState, Payload: []byte{0xff}}); !errors.Is(err, image.ErrCorrupt) {
		t.Errorf("damaged record: %v", err)
	}
}
