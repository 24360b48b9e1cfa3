package parasite

import (
	"bytes"
	"encoding/binary"
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
