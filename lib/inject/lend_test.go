package inject

import (
	"bytes"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/arch"
	"crpipe/lib/internal/crc32c"
	"crpipe/lib/sys"
)

// TestLend lends 64 pages of a task, some of them written with zeros, in
// frames of at most 4 pages, in two runs of 32: the frames (16: 1+2+5
// between the zeros of the first run, 8 for the 31 pages of the second) cover exactly the pages that are
// not zeros, each frame's bytes come through the pipe as the task has them,
// each third's checksum is right, and afterwards the task has the same
// registers (its vector registers too, which the fold uses), mappings, fds
// and stack, and goes on as before. Once with the fold where the CPU has
// it, once with the crc32 instruction alone.
func TestLend(t *testing.T) {
	if !LendUsable() {
		t.Skip("no SSE 4.2 crc32 on this CPU: the lender cannot run")
	}
	for _, noFold := range []bool{false, true} {
		name := "fold"
		if noFold {
			name = "crc32"
		}
		t.Run(name, func(t *testing.T) {
			if _, ok := crc32c.FoldConstants(); !ok && !noFold {
				t.Skip("this CPU cannot fold: the crc32 run covers it")
			}
			defer func(old bool) { lendNoFold = old }(lendNoFold)
			lendNoFold = noFold
			testLend(t)
		})
	}
}

func testLend(t *testing.T) {
	p, insn := seizedSleeper(t)
	fdsBefore := fdList(t, p.Pid)
	before := look(t, p.Pid)

	s, err := Begin(p.Pid, insn)
	if err != nil {
		t.Fatal(err)
	}
	// The memory to lend: 64 pages, filled from here.
	const pages = 64
	area := mapIn(t, s, pages)
	want := make([]byte, pages*4096)
	zeroPages := map[int]bool{0: true, 3: true, 10: true, 11: true, 12: true, 63: true}
	for pg := range pages {
		if zeroPages[pg] {
			continue
		}
		for i := range 4096 {
			want[pg*4096+i] = byte(pg*7 + i*13 + i>>8)
		}
	}
	if err := WriteMem(p.Pid, area, want); err != nil { // zeros included: those pages are there, and zeros
		t.Fatal(err)
	}

	st, l := lenderIn(t, s, p.Pid)
	if base, _, lent, err := findStub(p.Pid); err != nil || base == 0 || lent.base != l.base || lent.fds != [2]int{l.fdR, l.fdW} {
		t.Fatalf("the stub's records do not name the lender: %#x %+v, %v", base, lent, err)
	}
	// As a dumper that died right after the set-up's batch leaves it: the
	// record without the address, which the batch's table gives.
	record := st.base + stubSize + lendRecordAt
	if err := WriteMem(p.Pid, record, make([]byte, 8)); err != nil {
		t.Fatal(err)
	}
	if _, _, lent, err := findStub(p.Pid); err != nil || lent.base != l.base || lent.size != lendSize || lent.fds != [2]int{l.fdR, l.fdW} {
		t.Fatalf("a lender being set up: the recovery finds %+v, %v; want its mapping at %#x", lent, err, l.base)
	}
	if err := WriteMem(p.Pid, record, l.record()); err != nil {
		t.Fatal(err)
	}
	xstate := func() []byte { return xstateOf(t, p.Pid) }
	xsBefore := xstate()
	g, err := l.Lend([]LendRun{{Addr: area, Len: 32 * 4096, Zero: true}, {Addr: area + 32*4096, Len: 32 * 4096, Zero: true}}, 4*4096)
	if err != nil {
		t.Fatal(err)
	}
	covered := make([]bool, pages)
	var frames int
	for {
		f, ok, err := g.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		frames++
		if f.Len == 0 || f.Len > 4*4096 || f.Addr < area || f.Addr+f.Len > area+pages*4096 {
			t.Fatalf("frame %+v outside the runs, or too long", f)
		}
		got := make([]byte, f.Len)
		if _, err := io.ReadFull(l.Pipe, got); err != nil {
			t.Fatal(err)
		}
		off := f.Addr - area
		if !bytes.Equal(got, want[off:off+f.Len]) {
			t.Fatalf("frame at page %d: the pipe's bytes differ from the memory", off/4096)
		}
		parts := [][]byte{got[:f.Split], got[f.Split : 2*f.Split], got[2*f.Split:]}
		for k, part := range parts {
			if c := crc32.Checksum(part, crc32.MakeTable(crc32.Castagnoli)); c != f.Sums[k] {
				t.Fatalf("frame at page %d, third %d: crc %08x, want %08x", off/4096, k, f.Sums[k], c)
			}
		}
		for pg := off / 4096; pg < (off+f.Len)/4096; pg++ {
			covered[pg] = true
		}
	}
	if err := g.Finish(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(xstate(), xsBefore) {
		t.Errorf("the lender's thread has other vector registers (xsave area) than before")
	}
	for pg := range pages {
		if covered[pg] == zeroPages[pg] {
			t.Errorf("page %d: zeros %v, sent %v", pg, zeroPages[pg], covered[pg])
		}
	}
	if g.Zeros() != uint64(len(zeroPages)) || frames != 16 {
		t.Errorf("%d pages of zeros left out, %d frames; want %d and 16", g.Zeros(), frames, len(zeroPages))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := st.Unmap(s); err != nil {
		t.Fatal(err)
	}
	ret, err := s.Syscall(unix.SYS_MUNMAP, area, pages*4096)
	if err != nil || Errno(ret) != nil {
		t.Fatal(ret, err)
	}
	if err := s.End(nil); err != nil {
		t.Fatal(err)
	}
	before.check(t, look(t, p.Pid))
	if got := fdList(t, p.Pid); got != fdsBefore {
		t.Errorf("fds %s, were %s", got, fdsBefore)
	}
	if err := sys.PtraceDetach(p.Pid, 0); err != nil {
		t.Fatal(err)
	}
	if line, err := p.Next(5 * time.Second); err != nil || line != "slept ok" {
		t.Fatalf("target: %q, %v", line, err)
	}
}

func fdList(t *testing.T, pid int) string {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}

// TestLendRecovered: a tracer that dies while its lender folds (here:
// the thread stopped wherever it is and let go, as the kernel lets go of
// a dead tracer's tasks) leaves the thread's vector registers in the
// lender's mapping, and RecoverStub puts them back with the rest.
func TestLendRecovered(t *testing.T) {
	if _, ok := crc32c.FoldConstants(); !ok || !LendUsable() {
		t.Skip("this CPU cannot fold: the lender leaves the vector registers alone")
	}
	p, insn := seizedSleeper(t)
	xstate := func() []byte { return xstateOf(t, p.Pid) }
	xsBefore := xstate()
	s, err := Begin(p.Pid, insn)
	if err != nil {
		t.Fatal(err)
	}
	const pages = 64
	area := mapIn(t, s, pages)
	if err := WriteMem(p.Pid, area, bytes.Repeat([]byte("crpipe.."), pages*4096/8)); err != nil {
		t.Fatal(err)
	}
	_, l := lenderIn(t, s, p.Pid)
	g, err := l.Lend([]LendRun{{Addr: area, Len: pages * 4096}}, 4*4096)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := g.Next(); !ok || err != nil {
		t.Fatalf("the first frame: %v %v", ok, err)
	}
	if err := s.toEventStop(); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(xstate(), xsBefore) {
		t.Fatal("the fold left the vector registers as they were: nothing to recover")
	}
	l.Pipe.Close()
	if err := sys.PtraceDetach(p.Pid, 0); err != nil {
		t.Fatal(err)
	}
	if found, err := RecoverStub(p.Pid); !found || err != nil {
		t.Fatalf("RecoverStub: found %v, %v", found, err)
	}
	seizeStop(t, p.Pid)
	if !bytes.Equal(xstate(), xsBefore) {
		t.Errorf("after the recovery, the thread's vector registers (xsave area) are not as before")
	}
	if err := sys.PtraceDetach(p.Pid, 0); err != nil {
		t.Fatal(err)
	}
	if line, err := p.Next(5 * time.Second); err != nil || line != "slept ok" {
		t.Fatalf("target: %q, %v", line, err)
	}
}

// xstateOf is the xsave area of tid, at a ptrace stop.
func xstateOf(t *testing.T, tid int) []byte {
	t.Helper()
	xs, err := sys.PtraceGetXstate(tid, make([]byte, arch.XsaveBufSize))
	if err != nil {
		t.Fatal(err)
	}
	return xs
}

// lenderIn maps a stub through s and sets up a lender in pid with it.
func lenderIn(t *testing.T, s *Session, pid int) (*Stub, *Lender) {
	t.Helper()
	st, err := MapStub(s, []*Session{s})
	if err != nil {
		t.Fatal(err)
	}
	l, err := st.NewLender(s, pid)
	if err != nil {
		t.Fatal(err)
	}
	return st, l
}

// mapIn maps pages of fresh anonymous memory through s's thread.
func mapIn(t *testing.T, s *Session, pages uint64) uint64 {
	t.Helper()
	ret, err := s.Syscall(unix.SYS_MMAP, 0, pages*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil || Errno(ret) != nil {
		t.Fatal(ret, err)
	}
	return uint64(ret)
}
