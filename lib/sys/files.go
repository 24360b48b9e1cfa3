package sys

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kcmp types (linux/kcmp.h).
const (
	KcmpFile     = 0
	KcmpVM       = 1
	KcmpFdTable  = 2 // KCMP_FILES: the fd tables
	KcmpFs       = 3
	kcmpEpollTfd = 7
)

// Kcmp compares kernel objects of two processes (Linux 3.5,
// CONFIG_KCMP or CONFIG_CHECKPOINT_RESTORE): it returns 0 when they are the
// same, 1 or 2 for an ordering that is stable while both exist (the kernel
// orders obfuscated pointers), so it can sort. idx2 may be a pointer
// converted to uintptr (see ptrace).
//
//go:uintptrescapes
func Kcmp(pid1, pid2, typ int, idx1, idx2 uintptr) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid1), uintptr(pid2), uintptr(typ), idx1, idx2, 0)
	if e != 0 {
		return 0, fmt.Errorf("kcmp: %w", e)
	}
	return int(r), nil
}

// KcmpFiles reports whether fd1 of pid1 and fd2 of pid2 are one open file
// description, and their order otherwise (-1 or 1).
func KcmpFiles(pid1, fd1, pid2, fd2 int) (int, error) {
	r, err := Kcmp(pid1, pid2, KcmpFile, uintptr(fd1), uintptr(fd2))
	if err != nil {
		return 0, err
	}
	switch r {
	case 0:
		return 0, nil
	case 1:
		return -1, nil
	case 2:
		return 1, nil
	}
	return 0, fmt.Errorf("kcmp: unexpected result %d", r)
}

// KcmpEpollTarget reports whether fd of pid is the file that epoll fd epfd
// of epPid watches under target fd number tfd (Linux 4.13).
func KcmpEpollTarget(pid, fd, epPid, epfd, tfd int) (bool, error) {
	slot := struct{ efd, tfd, toff uint32 }{uint32(epfd), uint32(tfd), 0}
	r, err := Kcmp(pid, epPid, kcmpEpollTfd, uintptr(fd), uintptr(unsafe.Pointer(&slot)))
	if errors.Is(err, unix.ENOENT) {
		return false, nil // no such watch, or no such fd
	}
	if err != nil {
		return false, err
	}
	return r == 0, nil
}

// tfdIocSetTicks is TFD_IOC_SET_TICKS, _IOW('T', 0, u64) (Linux 3.17,
// CONFIG_CHECKPOINT_RESTORE).
const tfdIocSetTicks = 0x40085400

// TimerfdSetTicks sets the number of expirations a timerfd reports as not
// yet read.
func TimerfdSetTicks(fd int, ticks uint64) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), tfdIocSetTicks, uintptr(unsafe.Pointer(&ticks)))
	if e != 0 {
		return fmt.Errorf("TFD_IOC_SET_TICKS: %w (needs CONFIG_CHECKPOINT_RESTORE)", e)
	}
	return nil
}

// KernelDev converts a dev_t as the kernel keeps it internally (major << 20
// | minor, what fdinfo's sdev shows) to the user-space encoding of st_dev.
func KernelDev(d uint64) uint64 { return unix.Mkdev(uint32(d>>20), uint32(d&0xfffff)) }

// UnixDiag is what sock_diag says about one AF_UNIX socket.
type UnixDiag struct {
	Inode    uint64
	Type     uint8
	State    uint8
	Name     []byte // sun_path bytes as bound (abstract: leading 0); nil when unbound
	VfsDev   uint64 // the socket file of a path name (st_dev encoding)
	VfsInode uint64
	Peer     uint64   // peer socket's inode; 0 when none (or the peer has no inode)
	HasPeer  bool     // the kernel reported a peer attribute
	Icons    []uint64 // listening: peers of the connections waiting in the queue
	RQueue   uint32   // listening: queued connections; else bytes in the receive queue
	WQueue   uint32   // listening: backlog; else bytes sent and not yet consumed
	Shutdown uint8
}

// sock_diag constants (linux/unix_diag.h, linux/sock_diag.h).
const (
	udiagShowName  = 0x1
	udiagShowVfs   = 0x2
	udiagShowPeer  = 0x4
	udiagShowIcons = 0x8
	udiagShowRqlen = 0x10 // the shutdown attribute comes always

	unixDiagName     = 0
	unixDiagVfs      = 1
	unixDiagPeer     = 2
	unixDiagIcons    = 3
	unixDiagRqlen    = 4
	unixDiagShutdown = 6

	unixDiagReqSize = 24 // struct unix_diag_req
	unixDiagMsgSize = 16 // struct unix_diag_msg
)

// UnixSockets lists every AF_UNIX socket of the caller's network namespace
// with sock_diag (Linux 3.3, CONFIG_UNIX_DIAG), by inode.
func UnixSockets() (map[uint64]*UnixDiag, error) {
	req := make([]byte, unixDiagReqSize)
	req[0] = unix.AF_UNIX
	binary.LittleEndian.PutUint32(req[4:], ^uint32(0)) // every state
	binary.LittleEndian.PutUint32(req[12:], udiagShowName|udiagShowVfs|udiagShowPeer|udiagShowIcons|udiagShowRqlen)
	out := map[uint64]*UnixDiag{}
	err := sockDiagDump(req, func(b []byte) error {
		if len(b) < unixDiagMsgSize {
			return fmt.Errorf("sock_diag: short unix_diag_msg")
		}
		d := &UnixDiag{Type: b[1], State: b[2], Inode: uint64(binary.LittleEndian.Uint32(b[4:]))}
		for a := b[unixDiagMsgSize:]; len(a) >= 4; {
			l := int(binary.LittleEndian.Uint16(a))
			typ := binary.LittleEndian.Uint16(a[2:]) & 0x3fff
			if l < 4 || l > len(a) {
				return fmt.Errorf("sock_diag: malformed attribute")
			}
			v := a[4:l]
			switch typ {
			case unixDiagName:
				d.Name = append([]byte{}, v...)
			case unixDiagVfs:
				if len(v) >= 8 {
					d.VfsInode = uint64(binary.LittleEndian.Uint32(v))
					d.VfsDev = KernelDev(uint64(binary.LittleEndian.Uint32(v[4:]))) // the superblock's s_dev
				}
			case unixDiagPeer:
				if len(v) >= 4 {
					d.Peer = uint64(binary.LittleEndian.Uint32(v))
					d.HasPeer = true
				}
			case unixDiagIcons:
				for i := 0; i+4 <= len(v); i += 4 {
					d.Icons = append(d.Icons, uint64(binary.LittleEndian.Uint32(v[i:])))
				}
			case unixDiagRqlen:
				if len(v) >= 8 {
					d.RQueue = binary.LittleEndian.Uint32(v)
					d.WQueue = binary.LittleEndian.Uint32(v[4:])
				}
			case unixDiagShutdown:
				if len(v) >= 1 {
					d.Shutdown = v[0]
				}
			}
			al := (l + 3) &^ 3
			if al >= len(a) {
				break
			}
			a = a[al:]
		}
		out[d.Inode] = d
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// sockDiagDump sends a SOCK_DIAG_BY_FAMILY dump request and calls fn with
// the payload of every answer.
func sockDiagDump(req []byte, fn func([]byte) error) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return fmt.Errorf("sock_diag socket: %w (needs CONFIG_INET_DIAG/CONFIG_UNIX_DIAG)", err)
	}
	defer unix.Close(fd)
	msg := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(req))
	binary.LittleEndian.PutUint32(msg[0:], uint32(unix.NLMSG_HDRLEN+len(req)))
	binary.LittleEndian.PutUint16(msg[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.LittleEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.LittleEndian.PutUint32(msg[8:], 1)
	msg = append(msg, req...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sock_diag send: %w", err)
	}
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("sock_diag receive: %w", err)
		}
		msgs, err := syscallParseNetlink(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			switch m.typ {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.data) >= 4 {
					if e := int32(binary.LittleEndian.Uint32(m.data)); e != 0 {
						return fmt.Errorf("sock_diag: %w", unix.Errno(-e))
					}
				}
				return nil
			}
			if err := fn(m.data); err != nil {
				return err
			}
		}
	}
}

type nlMsg struct {
	typ  uint16
	data []byte
}

func syscallParseNetlink(b []byte) ([]nlMsg, error) {
	var out []nlMsg
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.LittleEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return nil, fmt.Errorf("sock_diag: malformed netlink message")
		}
		out = append(out, nlMsg{typ: binary.LittleEndian.Uint16(b[4:]), data: b[unix.NLMSG_HDRLEN:l]})
		al := (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if al >= len(b) {
			break
		}
		b = b[al:]
	}
	return out, nil
}

// PidfdGetfd duplicates fd of pid into the caller (Linux 5.6), without
// stopping pid: the copy shares the open file description.
func PidfdGetfd(pidfd, fd int) (*os.File, error) {
	n, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_getfd: %w", err)
	}
	return os.NewFile(uintptr(n), fmt.Sprintf("fd %d", fd)), nil
}

// GetsockoptBytes reads a socket option into buf and returns the length the
// kernel reports, which may exceed len(buf) for options that say how much
// room they need (NETLINK_LIST_MEMBERSHIPS).
func GetsockoptBytes(fd, level, opt int, buf []byte) (int, error) {
	return getsockopt(fd, level, opt, buf, len(buf))
}

// getsockopt reads a socket option into buf with optlen as the length
// given to the kernel (in bytes for most options, in entries for
// SO_GET_FILTER) and returns the length it reports.
func getsockopt(fd, level, opt int, buf []byte, optlen int) (int, error) {
	l := uint32(optlen)
	var p unsafe.Pointer
	if len(buf) > 0 {
		p = unsafe.Pointer(&buf[0])
	}
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0, e
	}
	return int(l), nil
}

// RawPeer reads the destination a raw IP socket was connected to, which
// getpeername does not give (a raw socket has no port), from
// /proc/PID/net/raw or raw6 (pid's network namespace): the line of the
// socket's inode, in state 01 (connected), with the remote address as
// /proc/net/tcp writes it (32-bit words in host byte order, in hex).
func RawPeer(pid, family int, inode uint64) (addr []byte, connected bool, err error) {
	file := fmt.Sprintf("/proc/%d/net/raw", pid)
	if family == unix.AF_INET6 {
		file += "6"
	}
	b, err := ReadFile(file)
	if err != nil {
		return nil, false, err
	}
	want := strconv.FormatUint(inode, 10)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[9] != want {
			continue
		}
		if f[3] != "01" {
			return nil, false, nil
		}
		hexAddr, _, _ := strings.Cut(f[2], ":")
		if len(hexAddr)%8 != 0 {
			return nil, false, fmt.Errorf("%s: %q: bad address", file, line)
		}
		for i := 0; i < len(hexAddr); i += 8 {
			w, err := strconv.ParseUint(hexAddr[i:i+8], 16, 32)
			if err != nil {
				return nil, false, fmt.Errorf("%s: %q: bad address", file, line)
			}
			addr = binary.LittleEndian.AppendUint32(addr, uint32(w))
		}
		return addr, true, nil
	}
	return nil, false, fmt.Errorf("%s: no socket of inode %d", file, inode)
}

// ErrEBPFFilter: the socket has an eBPF filter (SO_ATTACH_BPF), which
// SO_GET_FILTER cannot read back.
var ErrEBPFFilter = errors.New("an eBPF socket filter (SO_ATTACH_BPF) is attached")

// SocketFilter returns the classic BPF program attached to socket fd
// (SO_ATTACH_FILTER) as struct sock_filter entries, 8 bytes each (nil:
// none), and whether it is locked (SO_LOCK_FILTER).
func SocketFilter(fd int) (prog []byte, locked bool, err error) {
	// SO_GET_FILTER counts in entries, not bytes: asked with no room, it
	// says how many there are.
	get := func(buf []byte, entries int) (int, error) {
		return getsockopt(fd, unix.SOL_SOCKET, unix.SO_GET_FILTER, buf, entries)
	}
	n, err := get(nil, 0)
	if err == unix.EACCES {
		return nil, false, ErrEBPFFilter
	}
	if err != nil {
		return nil, false, fmt.Errorf("SO_GET_FILTER: %w", err)
	}
	if n > 0 {
		prog = make([]byte, 8*n)
		if n, err = get(prog, n); err != nil {
			return nil, false, fmt.Errorf("SO_GET_FILTER: %w", err)
		}
		prog = prog[:8*n]
	}
	l, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_LOCK_FILTER)
	if err != nil {
		return nil, false, fmt.Errorf("SO_LOCK_FILTER: %w", err)
	}
	return prog, l != 0, nil
}

// AttachSocketFilter attaches prog (as SocketFilter returns it) to socket
// fd, and locks it with locked.
func AttachSocketFilter(fd int, prog []byte, locked bool) error {
	if len(prog) == 0 || len(prog)%8 != 0 || len(prog)/8 > 0xffff {
		return fmt.Errorf("socket filter of %d bytes: not whole 8-byte entries", len(prog))
	}
	fp := unix.SockFprog{Len: uint16(len(prog) / 8), Filter: (*unix.SockFilter)(unsafe.Pointer(&prog[0]))}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fp); err != nil {
		return fmt.Errorf("SO_ATTACH_FILTER: %w", err)
	}
	if locked {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_LOCK_FILTER, 1); err != nil {
			return fmt.Errorf("SO_LOCK_FILTER: %w", err)
		}
	}
	return nil
}

// PtyPeer opens the slave of pty master fd (TIOCGPTPEER, Linux 4.13)
// without a path lookup, with open flags (O_RDWR|O_NOCTTY ...).
func PtyPeer(master int, flags int) (*os.File, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(master), unix.TIOCGPTPEER, uintptr(flags))
	if e != 0 {
		return nil, fmt.Errorf("TIOCGPTPEER: %w", e)
	}
	return os.NewFile(r, "pty-slave"), nil
}

// Open opens a file of procfs or sysfs (or a device) with flag, as
// os.OpenFile does but without the runtime poller (ReadFile): for files
// read as a stream (smaps, maps) or at offsets (pagemap, mem).
func Open(path string, flag int) (*os.File, error) {
	fd, err := unix.Open(path, flag|unix.O_CLOEXEC, 0)
	for err == unix.EINTR {
		fd, err = unix.Open(path, flag|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// ReadFile reads a small file (of procfs or sysfs) whole, as os.ReadFile
// does but without the runtime poller: os.Open tries to register every
// file with epoll and sets it non-blocking and back, four system calls
// more per file, a quarter of the cost of reading /proc/PID/stat. Errors
// are *os.PathError, so errors.Is(err, os.ErrNotExist) works.
func ReadFile(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	for err == unix.EINTR {
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	b := make([]byte, 0, 512)
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := unix.Read(fd, b[len(b):cap(b)])
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		case n == 0:
			return b, nil
		}
		b = b[:len(b)+n]
	}
}

// FileOwner is who gets the signals of an open file description
// (struct f_owner_ex).
type FileOwner struct {
	Type int32 // OwnerTID, OwnerPID, OwnerPGRP
	Pid  int32
}

// FileOwner.Type (F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP of
// include/uapi/asm-generic/fcntl.h).
const (
	OwnerTID  = 0
	OwnerPID  = 1
	OwnerPGRP = 2
)

// GetFileOwner reads fd's owner with F_GETOWN_EX.
func GetFileOwner(fd int) (FileOwner, error) {
	var o FileOwner
	_, _, errno := unix.Syscall(unix.SYS_FCNTL, uintptr(fd), unix.F_GETOWN_EX, uintptr(unsafe.Pointer(&o)))
	if errno != 0 {
		return o, errno
	}
	return o, nil
}

// Dup returns a second *os.File, close-on-exec, for f's open file
// description.
func Dup(f *os.File) (*os.File, error) {
	n, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup: %w", err)
	}
	return os.NewFile(uintptr(n), f.Name()), nil
}

// Pipe makes a pipe, close-on-exec, whose ends block as a shell's do
// (their users splice on the descriptors); name names both files.
func Pipe(name string) (r, w *os.File, err error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil, nil, fmt.Errorf("pipe: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), name), os.NewFile(uintptr(fds[1]), name), nil
}
