package sys

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// WriteMemory writes data at addr in process pid (process_vm_writev(2)),
// all of it or an error.
func WriteMemory(pid int, addr uint64, data []byte) error {
	return writeMemory(pid, addr, data, false)
}

// WriteAnonMemory is WriteMemory into private anonymous memory of a task
// this process made and holds (a task being restored), which goroutines,
// one per CPU, fill a piece after the other. Through the runtime's
// syscall path, a write longer than sysmon's tick (20 µs; a 256 KiB piece
// takes 25-45 µs on the PVM guest) has its P taken away while it runs, and
// with every P busy sysmon wakes every 20 µs to do that again: ~1 context
// switch for every 2.5 pieces, a loop of pread and write a quarter slower
// than the same loop in C (doc/performance.md 88). Made raw, the call
// keeps its P, as a C thread would. Only where a fault waits for nothing
// but memory: no file behind the pages to read, no userfaultfd registered
// (with every P held in such a call, no goroutine could answer a fault).
func WriteAnonMemory(pid int, addr uint64, data []byte) error {
	return writeMemory(pid, addr, data, true)
}

func writeMemory(pid int, addr uint64, data []byte, raw bool) error {
	for len(data) > 0 {
		local := unix.Iovec{Base: &data[0]}
		local.SetLen(len(data))
		remote := unix.RemoteIovec{Base: uintptr(addr), Len: len(data)}
		var n uintptr
		var e unix.Errno
		if raw {
			n, _, e = unix.RawSyscall6(unix.SYS_PROCESS_VM_WRITEV, uintptr(pid), uintptr(unsafe.Pointer(&local)), 1, uintptr(unsafe.Pointer(&remote)), 1, 0)
		} else {
			n, _, e = unix.Syscall6(unix.SYS_PROCESS_VM_WRITEV, uintptr(pid), uintptr(unsafe.Pointer(&local)), 1, uintptr(unsafe.Pointer(&remote)), 1, 0)
		}
		runtime.KeepAlive(data)
		switch {
		case e == unix.EINTR:
			continue
		case e != 0:
			return fmt.Errorf("process_vm_writev %#x+%d: %w", addr, len(data), e)
		case n == 0:
			return fmt.Errorf("process_vm_writev %#x: wrote nothing", addr)
		}
		data = data[n:]
		addr += uint64(n)
	}
	return nil
}

// InMemoryFile reports whether f's contents live in memory only (tmpfs,
// ramfs): a read of it waits for no device.
func InMemoryFile(f *os.File) bool {
	c, err := f.SyscallConn()
	if err != nil {
		return false
	}
	var st unix.Statfs_t
	c.Control(func(fd uintptr) { err = unix.Fstatfs(int(fd), &st) })
	return err == nil && (st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC)
}

// PreadInMemory reads len(b) bytes of f at off, f a file of InMemoryFile,
// with raw pread(2) calls (WriteAnonMemory says why): short only at the
// end of the file, with io.EOF, as os.File.ReadAt.
func PreadInMemory(f *os.File, b []byte, off int64) (int, error) {
	c, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	done := 0
	var rerr error
	err = c.Control(func(fd uintptr) { // the file stays open through the reads
		for done < len(b) {
			n, _, e := unix.RawSyscall6(unix.SYS_PREAD64, fd, uintptr(unsafe.Pointer(&b[done])), uintptr(len(b)-done), uintptr(off+int64(done)), 0, 0)
			switch {
			case e == unix.EINTR:
				continue
			case e != 0:
				rerr = &os.PathError{Op: "read", Path: f.Name(), Err: e}
				return
			case n == 0:
				rerr = io.EOF
				return
			}
			done += int(n)
		}
	})
	if err != nil {
		return done, err
	}
	return done, rerr
}
