package sys

import (
	"bytes"
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openTestPty opens a pty pair: its master and a slave description.
func openTestPty(t *testing.T) (m, s *os.File) {
	t.Helper()
	n, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no /dev/ptmx: %v", err)
	}
	m = os.NewFile(uintptr(n), "ptmx")
	if err := unix.IoctlSetPointerInt(n, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	s, err = PtyPeer(n, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	if err := CanTiocsti(int(s.Fd())); err != nil {
		t.Skip(err)
	}
	return m, s
}

func writeAll(t *testing.T, f *os.File, b string) {
	t.Helper()
	if _, err := f.Write([]byte(b)); err != nil {
		t.Fatal(err)
	}
}

func sameInput(a, b TtyInput) bool {
	if len(a.Lines) != len(b.Lines) || !bytes.Equal(a.Rest, b.Rest) {
		return false
	}
	for i := range a.Lines {
		if !bytes.Equal(a.Lines[i], b.Lines[i]) {
			return false
		}
	}
	return true
}

func (q TtyInput) String() string { return fmt.Sprintf("lines %q rest %q", q.Lines, q.Rest) }

// settle waits for the kernel's flip buffer worker to move what was written.
func settle() { time.Sleep(50 * time.Millisecond) }

// TestTtyQueueCanonical: lines (ICRNL, an erase, a literal ^C, VEOF ends),
// an unfinished line and echoed output are taken and put back; a second
// take finds the same, the termios is unchanged and nothing more is echoed.
func TestTtyQueueCanonical(t *testing.T) {
	m, s := openTestPty(t)
	tio0, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if tio0.Lflag&(unix.ICANON|unix.ECHO) != unix.ICANON|unix.ECHO || tio0.Oflag&unix.ONLCR == 0 {
		t.Fatalf("a new pty is not canonical with echo and ONLCR: %+v", tio0)
	}
	writeAll(t, m, "hello\rx\x16\x03y\nab\x7fc\n\x04tail\x04partial")
	writeAll(t, s, "out\n")
	settle()
	want := TtyInput{Lines: [][]byte{[]byte("hello\n"), []byte("x\x03y\n"), []byte("ac\n"), {}, []byte("tail")}, Rest: []byte("partial")}

	q, err := TakeTtyInput(s)
	if err != nil {
		t.Fatal(err)
	}
	if !sameInput(q, want) {
		t.Fatalf("took %v, want %v", q, want)
	}
	out, err := TakePtyOutput(m)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte("out\r\n")) || !bytes.Contains(out, []byte("hello\r\n")) {
		t.Fatalf("output %q: want out\\r\\n and the echo", out)
	}
	if err := PutTtyInput(s, q); err != nil {
		t.Fatal(err)
	}
	if err := PutPtyOutput(m, out); err != nil {
		t.Fatal(err)
	}
	settle()
	tio1, _ := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	if *tio1 != *tio0 {
		t.Errorf("termios changed:\n%+v\n%+v", tio1, tio0)
	}
	q2, err := TakeTtyInput(s)
	if err != nil {
		t.Fatal(err)
	}
	out2, err := TakePtyOutput(m)
	if err != nil {
		t.Fatal(err)
	}
	if !sameInput(q2, q) {
		t.Errorf("second take %v, first %v", q2, q)
	}
	if !bytes.Equal(out2, out) {
		t.Errorf("output after the refill %q, was %q", out2, out)
	}

	// A new pty with the same termios gets the same queue (a restore).
	m3, s3 := openTestPty(t)
	if err := PutTtyInput(s3, q); err != nil {
		t.Fatal(err)
	}
	settle()
	if q3, err := TakeTtyInput(s3); err != nil || !sameInput(q3, q) {
		t.Errorf("restored queue %v (%v), want %v", q3, err, q)
	}
	if o3, _ := TakePtyOutput(m3); len(o3) != 0 {
		t.Errorf("the refill echoed %q", o3)
	}
}

// TestTtyQueueRaw: in raw mode every byte (CR, ^C, ^Q, ^S, 0xff, NUL) is
// data, put back as it was.
func TestTtyQueueRaw(t *testing.T) {
	m, s := openTestPty(t)
	tio, _ := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	tio.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	tio.Iflag |= unix.IXON // flow control on: ^Q/^S in the queue must stay data
	if err := unix.IoctlSetTermios(int(s.Fd()), unix.TCSETS, tio); err != nil {
		t.Fatal(err)
	}
	data := "a\r\n\x03\x11\x13\xff\x00 raw"
	writeAll(t, m, "a\r\n\x03")
	settle()
	// ^Q and ^S written to the master would be flow control: queue them as
	// a restore would.
	if err := PutTtyInput(s, TtyInput{Rest: []byte("\x11\x13\xff\x00 raw")}); err != nil {
		t.Fatal(err)
	}
	q, err := TakeTtyInput(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(q.Lines) != 0 || string(q.Rest) != data {
		t.Fatalf("took %v, want rest %q", q, data)
	}
	if err := PutTtyInput(s, q); err != nil {
		t.Fatal(err)
	}
	q2, err := TakeTtyInput(s)
	if err != nil || !sameInput(q, q2) {
		t.Errorf("second take %v (%v), want %v", q2, err, q)
	}
	tio1, _ := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	if *tio1 != *tio {
		t.Errorf("termios changed")
	}
	if o, _ := TakePtyOutput(m); len(o) != 0 {
		t.Errorf("output %q", o)
	}
}

// TestTtyQueueFull: more than the buffer holds is refused before any byte
// is put.
func TestTtyQueueFull(t *testing.T) {
	_, s := openTestPty(t)
	err := PutTtyInput(s, TtyInput{Rest: bytes.Repeat([]byte("x"), TtyBufSize)})
	if err == nil {
		t.Fatal("4096 bytes put into a 4095-byte buffer")
	}
	if q, _ := TakeTtyInput(s); q.Len() != 0 {
		t.Errorf("a refused put left %d bytes", q.Len())
	}
}
