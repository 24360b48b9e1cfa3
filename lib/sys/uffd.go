package sys

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// userfaultfd(2) ioctls (linux/userfaultfd.h), for filling another
// process's fresh anonymous memory: UFFDIO_COPY allocates each page and
// copies into it in one step, where a write through process_vm_writev
// faults in a zeroed page first and then copies over it
// (doc/performance.md).
const (
	UffdUserModeOnly = 1 // UFFD_USER_MODE_ONLY: a fault from the kernel fails instead of waiting

	uffdAPI             = 0xaa
	uffdioAPI           = 0xc018aa3f // _IOWR(0xaa, 0x3f, struct uffdio_api)
	uffdioRegister      = 0xc020aa00 // _IOWR(0xaa, 0x00, struct uffdio_register)
	uffdioUnregister    = 0x8010aa01 // _IOR(0xaa, 0x01, struct uffdio_range)
	uffdioCopy          = 0xc028aa03 // _IOWR(0xaa, 0x03, struct uffdio_copy)
	uffdRegisterMissing = 1          // UFFDIO_REGISTER_MODE_MISSING
	uffdCopyDontWake    = 1          // UFFDIO_COPY_MODE_DONTWAKE: nothing waits on these pages
)

// Uffd is a userfaultfd, possibly of another process's memory (taken with
// pidfd_getfd): its ioctls act on the memory of the process that made it.
type Uffd struct{ f *os.File }

// NewUffd takes ownership of f, a userfaultfd, and does the API handshake
// every other ioctl needs first.
func NewUffd(f *os.File) (*Uffd, error) {
	api := struct{ api, features, ioctls uint64 }{api: uffdAPI}
	if err := ioctlPtr(f, uffdioAPI, unsafe.Pointer(&api)); err != nil {
		f.Close()
		return nil, fmt.Errorf("UFFDIO_API: %w", err)
	}
	return &Uffd{f: f}, nil
}

// RegisterMissing registers [start, start+size) for missing-page faults,
// which lets Copy fill it.
func (u *Uffd) RegisterMissing(start, size uint64) error {
	reg := struct{ start, len, mode, ioctls uint64 }{start: start, len: size, mode: uffdRegisterMissing}
	if err := ioctlPtr(u.f, uffdioRegister, unsafe.Pointer(&reg)); err != nil {
		return fmt.Errorf("UFFDIO_REGISTER %#x+%d: %w", start, size, err)
	}
	return nil
}

// Unregister undoes RegisterMissing: the range faults as before.
func (u *Uffd) Unregister(start, size uint64) error {
	r := struct{ start, len uint64 }{start, size}
	if err := ioctlPtr(u.f, uffdioUnregister, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("UFFDIO_UNREGISTER %#x+%d: %w", start, size, err)
	}
	return nil
}

// ErrPagePresent: Copy found a page already there (UFFDIO_COPY never
// overwrites).
var ErrPagePresent = errors.New("a page is already present")

// Copy fills the registered, not yet present pages at addr with data (whole
// pages). It returns how many bytes were placed before an error.
func (u *Uffd) Copy(addr uint64, data []byte) (int, error) {
	done, stalled := 0, 0
	for done < len(data) {
		c := struct {
			dst, src, len, mode uint64
			copied              int64
		}{dst: addr + uint64(done), src: uint64(uintptr(unsafe.Pointer(&data[done]))), len: uint64(len(data) - done), mode: uffdCopyDontWake}
		err := ioctlPtr(u.f, uffdioCopy, unsafe.Pointer(&c))
		runtime.KeepAlive(data)
		if c.copied > 0 {
			done += int(c.copied)
			stalled = 0
		}
		switch err {
		case nil:
		case unix.EAGAIN, unix.EINTR: // the address space changed under the copy: go on
			if stalled++; stalled > 1000 {
				return done, fmt.Errorf("UFFDIO_COPY %#x: no progress: %w", addr+uint64(done), err)
			}
		case unix.EEXIST:
			return done, ErrPagePresent
		default:
			return done, fmt.Errorf("UFFDIO_COPY %#x+%d: %w", addr+uint64(done), len(data)-done, err)
		}
	}
	return done, nil
}

// Close releases the userfaultfd; once the last copy of it is closed, the
// kernel unregisters whatever is still registered.
func (u *Uffd) Close() error { return u.f.Close() }

func ioctlPtr(f *os.File, req uintptr, p unsafe.Pointer) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), req, uintptr(p))
	if e != 0 {
		return e
	}
	return nil
}
