package sys

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestWriteMemory writes into this process's own anonymous memory through
// both doors: the bytes land whole (3 MiB, more than one call may take),
// a write that runs into a PROT_NONE page stops there and names where, and
// a process that does not exist is an error.
func TestWriteMemory(t *testing.T) {
	for _, w := range []struct {
		name  string
		write func(int, uint64, []byte) error
	}{{"ordinary", WriteMemory}, {"anon raw", WriteAnonMemory}} {
		t.Run(w.name, func(t *testing.T) {
			const pg = 4096
			mem, err := unix.Mmap(-1, 0, 3<<20+2*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Munmap(mem)
			base := uint64(uintptr(unsafe.Pointer(&mem[0])))
			src := make([]byte, 3<<20)
			for i := range src {
				src[i] = byte(rand.Uint32())
			}
			if err := w.write(os.Getpid(), base+pg, src); err != nil {
				t.Fatal(err)
			}
			zero := func(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }
			if !bytes.Equal(mem[pg:pg+len(src)], src) || !zero(mem[:pg]) || !zero(mem[pg+len(src):]) {
				t.Fatal("the memory does not hold what was written, where it was written")
			}
			if err := w.write(os.Getpid(), base, nil); err != nil {
				t.Fatalf("nothing to write: %v", err)
			}

			// The last page made inaccessible: the first call writes up
			// to it, the next fails there.
			guard := base + uint64(len(mem)) - pg
			if err := unix.Mprotect(mem[len(mem)-pg:], unix.PROT_NONE); err != nil {
				t.Fatal(err)
			}
			err = w.write(os.Getpid(), guard-pg, src[:2*pg])
			if !errors.Is(err, unix.EFAULT) || !strings.Contains(err.Error(), fmt.Sprintf("%#x+%d", guard, pg)) {
				t.Fatalf("write into a PROT_NONE page: %v, want EFAULT at %#x+%d", err, guard, pg)
			}
			if !bytes.Equal(mem[len(mem)-2*pg:len(mem)-pg], src[:pg]) {
				t.Fatal("the page before the PROT_NONE one was not written")
			}

			if err := w.write(1<<22+7, base, src[:pg]); !errors.Is(err, unix.ESRCH) {
				t.Fatalf("write into no process: %v, want ESRCH", err)
			}
		})
	}
}

// TestPreadInMemory reads a tmpfs file as os.File.ReadAt does: whole
// pieces, a short one at the end with io.EOF, an error on a closed file;
// a file on another filesystem is not InMemoryFile.
func TestPreadInMemory(t *testing.T) {
	f, err := os.CreateTemp("/dev/shm", "crpipe-test-")
	if err != nil {
		t.Skipf("no /dev/shm here: %v", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if !InMemoryFile(f) {
		t.Skipf("/dev/shm is not tmpfs here")
	}
	src := make([]byte, 1<<20+100)
	for i := range src {
		src[i] = byte(rand.Uint32())
	}
	if _, err := f.Write(src); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 256<<10)
	if n, err := PreadInMemory(f, b, 4096); err != nil || n != len(b) || !bytes.Equal(b, src[4096:4096+len(b)]) {
		t.Fatalf("a whole piece: %d bytes, %v, or other bytes", n, err)
	}
	n, err := PreadInMemory(f, b, int64(len(src)-1000))
	if n != 1000 || err != io.EOF || !bytes.Equal(b[:n], src[len(src)-1000:]) {
		t.Fatalf("the last piece: %d bytes, %v; want 1000, EOF", n, err)
	}

	g, err := os.CreateTemp(t.TempDir(), "crpipe-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	var st unix.Statfs_t
	if unix.Fstatfs(int(g.Fd()), &st) == nil && st.Type != unix.TMPFS_MAGIC && InMemoryFile(g) {
		t.Fatalf("%s is not on tmpfs, but InMemoryFile says it is", g.Name())
	}

	f.Close()
	if _, err := PreadInMemory(f, b, 0); err == nil {
		t.Fatal("a closed file read without an error")
	}
}
