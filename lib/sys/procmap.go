package sys

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PROCMAP_QUERY (Linux 6.11, include/uapi/linux/fs.h) looks one VMA up by
// address through an ioctl on /proc/PID/maps: no text to format and parse
// for the whole address space when one mapping is wanted.

// Protections of struct procmap_query's query_flags (what the VMA must
// have) and vma_flags (what it has).
const (
	VmaReadable   = 0x01
	VmaWritable   = 0x02
	VmaExecutable = 0x04
	VmaShared     = 0x08
)

// procmapQuery is struct procmap_query (104 bytes).
type procmapQuery struct {
	Size        uint64
	QueryFlags  uint64
	QueryAddr   uint64
	VmaStart    uint64
	VmaEnd      uint64
	VmaFlags    uint64
	VmaPageSize uint64
	VmaOffset   uint64
	Inode       uint64
	DevMajor    uint32
	DevMinor    uint32
	VmaNameSize uint32
	BuildIDSize uint32
	VmaNameAddr uint64
	BuildIDAddr uint64
}

// ioctlProcmapQuery is _IOWR('f', 17, struct procmap_query).
const ioctlProcmapQuery = 0xC0686611

// ErrNoProcmapQuery: the kernel has no PROCMAP_QUERY (before 6.11).
var ErrNoProcmapQuery = errors.New("PROCMAP_QUERY is not supported by this kernel")

// Vma is a mapping as PROCMAP_QUERY reports it: [Start, End) and its
// Vma* protections.
type Vma struct {
	Start, End, Flags uint64
}

// QueryVma returns the VMA of pid that covers addr and has at least the
// protections want (Vma* bits). os.ErrNotExist when there is none.
func QueryVma(pid int, addr, want uint64) (Vma, error) {
	f, err := Open(fmt.Sprintf("/proc/%d/maps", pid), unix.O_RDONLY)
	if err != nil {
		return Vma{}, err
	}
	defer f.Close()
	q := procmapQuery{Size: uint64(unsafe.Sizeof(procmapQuery{})), QueryFlags: want, QueryAddr: addr}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), ioctlProcmapQuery, uintptr(unsafe.Pointer(&q)))
	runtime.KeepAlive(f)
	switch errno {
	case 0:
		return Vma{Start: q.VmaStart, End: q.VmaEnd, Flags: q.VmaFlags}, nil
	case unix.ENOENT:
		return Vma{}, fmt.Errorf("pid %d: no mapping at %#x with protections %#x: %w", pid, addr, want, os.ErrNotExist)
	case unix.ENOTTY:
		return Vma{}, ErrNoProcmapQuery
	}
	return Vma{}, fmt.Errorf("pid %d: PROCMAP_QUERY at %#x: %w", pid, addr, errno)
}
