package sys

import (
	"bytes"
	"errors"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestUffdCopy fills a registered mapping of this process: the pages
// copied hold their bytes, a page copied twice reports ErrPagePresent
// (never overwritten), and once unregistered the pages never copied read
// as zeros instead of waiting for a fault handler.
func TestUffdCopy(t *testing.T) {
	fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|UffdUserModeOnly, 0, 0)
	if e != 0 {
		t.Skipf("no userfaultfd here: %v", e)
	}
	u, err := NewUffd(os.NewFile(fd, "userfaultfd"))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	const pg, pages = 4096, 8
	mem, err := unix.Mmap(-1, 0, pages*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	base := uint64(uintptr(unsafe.Pointer(&mem[0])))
	if err := u.RegisterMissing(base, pages*pg); err != nil {
		t.Fatal(err)
	}
	src := make([]byte, 6*pg)
	for i := range src {
		src[i] = byte(i*7 + i/pg)
	}
	if n, err := u.Copy(base, src[:4*pg]); n != 4*pg || err != nil {
		t.Fatalf("Copy of pages 0-3: %d, %v", n, err)
	}
	if n, err := u.Copy(base+6*pg, src[4*pg:]); n != 2*pg || err != nil {
		t.Fatalf("Copy of pages 6-7: %d, %v", n, err)
	}
	if n, err := u.Copy(base+pg, make([]byte, pg)); n != 0 || !errors.Is(err, ErrPagePresent) {
		t.Fatalf("Copy over page 1: %d, %v; want 0, ErrPagePresent", n, err)
	}
	if err := u.Unregister(base, pages*pg); err != nil {
		t.Fatal(err)
	}
	if n, err := u.Copy(base+4*pg, src[:pg]); err == nil || errors.Is(err, ErrPagePresent) {
		t.Fatalf("Copy into an unregistered page: %d, %v; want an error", n, err)
	}
	want := append(append(append([]byte{}, src[:4*pg]...), make([]byte, 2*pg)...), src[4*pg:]...)
	if !bytes.Equal(mem, want) {
		for i := range mem {
			if mem[i] != want[i] {
				t.Fatalf("byte %d (page %d) is %d, want %d", i, i/pg, mem[i], want[i])
			}
		}
	}
}
