package arch

import (
	"encoding/binary"
	"os/exec"
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"crpipe/lib/sys"
)

func TestRegsRoundTrip(t *testing.T) {
	var r unix.PtraceRegs
	// Distinct values in every field catch a swapped pair.
	p := (*[27]uint64)(unsafe.Pointer(&r))
	for i := range p {
		p[i] = uint64(i+1) * 0x0101010101
	}
	back, err := RegsFromPB(RegsToPB(&r))
	if err != nil {
		t.Fatal(err)
	}
	if back != r {
		t.Fatalf("round trip changed registers:\n got %+v\nwant %+v", back, r)
	}
	if _, err := RegsFromPB(nil); err == nil {
		t.Fatal("nil registers accepted")
	}
}

func TestParseXsave(t *testing.T) {
	b := make([]byte, 832)
	le := binary.LittleEndian
	le.PutUint64(b[464:], 0x207)
	le.PutUint64(b[512:], 3)
	x, err := ParseXsave(b)
	if err != nil {
		t.Fatal(err)
	}
	if x.XCR0 != 0x207 || x.Size != 832 || x.XstateBV != 3 {
		t.Fatalf("got %+v", x)
	}
	if err := XsaveCompatible(x, 7); err != nil {
		t.Fatal(err)
	}
	if err := XsaveCompatible(x, 1); err == nil {
		t.Fatal("missing component accepted")
	}
	if _, err := ParseXsave(b[:100]); err == nil {
		t.Fatal("short area accepted")
	}
	le.PutUint64(b[512:], 0x10)
	if _, err := ParseXsave(b); err == nil {
		t.Fatal("state outside XCR0 accepted")
	}
	le.PutUint64(b[464:], 0)
	if _, err := ParseXsave(b); err == nil {
		t.Fatal("XCR0 0 accepted")
	}
}

// TestHostXsave compares CPUID/XGETBV with what ptrace reports for a live
// child: the same XCR0 and area size.
func TestHostXsave(t *testing.T) {
	if !HasXsave() {
		t.Skip("CPU or kernel without XSAVE")
	}
	xcr0, size := HostXCR0(), HostXsaveSize()
	if xcr0&3 != 3 || size < XsaveMinSize || size > XsaveBufSize {
		t.Fatalf("XCR0 %#x, size %d", xcr0, size)
	}
	cmd := exec.Command("/bin/sleep", "10")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := sys.PtraceSeize(pid, 0); err != nil {
		t.Fatal(err)
	}
	defer sys.PtraceDetach(pid, 0)
	sys.PtraceInterrupt(pid)
	if _, err := sys.PtraceWait(pid); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, XsaveBufSize)
	n, err := sys.PtraceGetRegset(pid, sys.NT_X86_XSTATE, buf)
	if err != nil {
		t.Fatal(err)
	}
	x, err := ParseXsave(buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	// The kernel may withhold supervisor or dynamically enabled features
	// from user space, never add any.
	if x.XCR0&^xcr0 != 0 || n > size {
		t.Fatalf("ptrace: XCR0 %#x, %d bytes; CPU: XCR0 %#x, %d bytes", x.XCR0, n, xcr0, size)
	}
	if err := XsaveCompatible(x, xcr0); err != nil {
		t.Fatal(err)
	}
	t.Logf("XCR0 %#x, xsave area %d bytes (ptrace %d)", xcr0, size, n)
}

// TestCheckSegments: only a 64-bit task's code and stack segments pass.
func TestCheckSegments(t *testing.T) {
	for _, c := range []struct {
		cs, ss uint64
		ok     bool
	}{{UserCS, UserSS, true}, {0x23, UserSS, false}, {UserCS, 0, false}, {UserCS, 0xffff, false}, {0x7fffffffffffffff, UserSS, false}} {
		if err := CheckSegments(c.cs, c.ss); (err == nil) != c.ok {
			t.Errorf("CheckSegments(%#x, %#x) = %v, want ok %v", c.cs, c.ss, err, c.ok)
		}
	}
}
