package restore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// File locks (Files.locks, lib/pb/locks.proto). Every lock is taken from
// inside the process that the dump names, after its fds are installed, on
// the fd it names: a POSIX lock belongs to the process that takes it (its fd
// table), so only the task itself can take it; flock and OFD locks belong to
// the open file description, which the coordinator's copies share, so they
// outlive the coordinator closing its copies. The dumped ranges are taken
// one by one, as the kernel had split or merged them; locks that coexisted
// at the dump never conflict with each other, so their order is free.
// Nothing closes an fd of the task after this (a close would drop its POSIX
// locks on that file). A lock someone else now holds fails the restore:
// F_SETLK and LOCK_NB do not wait.

func init() {
	registerProcessState(fileLocks)
	registerAborter(lockHint)
}

// lockCall prefixes the description of every lock call, for lockHint.
const lockCall = "file lock: "

func fileLocks(rc *Ctx, t *task, s *scratchWriter) ([]call, error) {
	defer t.closeSharedFiles(rc)
	var calls []call
	for _, l := range t.files.Locks {
		if l.VmaStart != 0 {
			if err := t.mappedLock(l); err != nil {
				return nil, err
			}
			continue
		}
		var fd *pb.Fd
		for _, f := range t.files.Fds {
			if f.Fd == l.Fd {
				fd = f
			}
		}
		if fd == nil {
			return nil, fmt.Errorf("pid %d: a file lock on fd %d, which the image does not give the process", t.pid, l.Fd)
		}
		kind := pb.FileLockKind(l.Kind)
		typ, op, what := lockOp(l, fmt.Sprintf("fd %d (%s)", l.Fd, fd.Path))
		switch kind {
		case pb.FileLockKind_LOCK_FLOCK:
			calls = append(calls, sc(what, unix.SYS_FLOCK, uint64(l.Fd), uint64(op|unix.LOCK_NB)))
		case pb.FileLockKind_LOCK_POSIX, pb.FileLockKind_LOCK_OFD:
			cmd := uint64(unix.F_SETLK)
			if kind == pb.FileLockKind_LOCK_OFD {
				cmd = unix.F_OFD_SETLK
			}
			// struct flock: short l_type, l_whence; off_t l_start, l_len;
			// pid_t l_pid (0: an OFD lock refuses any other).
			fl := make([]byte, 32)
			binary.LittleEndian.PutUint16(fl, uint16(typ))
			binary.LittleEndian.PutUint16(fl[2:], unix.SEEK_SET)
			binary.LittleEndian.PutUint64(fl[8:], uint64(l.Start))
			binary.LittleEndian.PutUint64(fl[16:], uint64(l.Length))
			calls = append(calls, sc(what, unix.SYS_FCNTL, uint64(l.Fd), cmd, s.put(fl)))
		default:
			return nil, fmt.Errorf("pid %d fd %d: file lock of unknown kind %d", t.pid, l.Fd, l.Kind)
		}
	}
	return calls, nil
}

func lockName(k pb.FileLockKind) string {
	return map[pb.FileLockKind]string{pb.FileLockKind_LOCK_POSIX: "POSIX", pb.FileLockKind_LOCK_FLOCK: "flock", pb.FileLockKind_LOCK_OFD: "OFD"}[k]
}

// lockOp gives the F_SETLK type and flock operation of lock l, and how
// errors name it: "file lock: KIND MODE lock on ON[, RANGE]".
func lockOp(l *pb.FileLock, on string) (typ uint64, op int, what string) {
	typ, op, mode := uint64(unix.F_RDLCK), unix.LOCK_SH, "read"
	if l.Write {
		typ, op, mode = unix.F_WRLCK, unix.LOCK_EX, "write"
	}
	kind := pb.FileLockKind(l.Kind)
	what = fmt.Sprintf("%s%s %s lock on %s", lockCall, lockName(kind), mode, on)
	if kind != pb.FileLockKind_LOCK_FLOCK {
		what += ", " + lockRange(l)
	}
	return typ, op, what
}

func lockRange(l *pb.FileLock) string {
	if l.Length == 0 {
		return fmt.Sprintf("bytes %d-EOF", l.Start)
	}
	return fmt.Sprintf("bytes %d-%d", l.Start, l.Start+l.Length-1)
}

// lockHint explains a lock that could not be taken.
func lockHint(_ *Ctx, err error) error {
	var se *SyscallError
	if errors.As(err, &se) && strings.HasPrefix(se.What, lockCall) && (se.Errno == unix.EAGAIN || se.Errno == unix.EACCES) {
		return stage.Hint(err, "another process holds a conflicting lock on the file now (see /proc/locks); release it, or restore where the file is not locked")
	}
	return err
}

// mappedLock takes a flock or OFD lock held through a shared mapping alone
// on the description cr-restore mapped the file with: the task's mapping
// holds that description, as the dumped one held the locked one, and the
// lock belongs to the description, whoever takes it.
func (t *task) mappedLock(l *pb.FileLock) error {
	f := t.sharedFiles[l.VmaStart]
	kind := pb.FileLockKind(l.Kind)
	if f == nil {
		return fmt.Errorf("pid %d: a %s lock through the mapping at %#x, which is no shared file mapping of the image", t.pid, lockName(kind), l.VmaStart)
	}
	typ, op, what := lockOp(l, fmt.Sprintf("%s, through the mapping at %#x", f.Name(), l.VmaStart))
	var err error
	switch kind {
	case pb.FileLockKind_LOCK_FLOCK:
		err = unix.Flock(int(f.Fd()), op|unix.LOCK_NB)
	case pb.FileLockKind_LOCK_OFD:
		fl := unix.Flock_t{Type: int16(typ), Whence: unix.SEEK_SET, Start: l.Start, Len: l.Length}
		err = unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &fl)
	default:
		return fmt.Errorf("pid %d: a lock of kind %d through the mapping at %#x: only flock and OFD locks can be", t.pid, l.Kind, l.VmaStart)
	}
	var errno unix.Errno
	if errors.As(err, &errno) {
		return &SyscallError{Pid: t.pid, What: what, Errno: errno} // for lockHint
	}
	return err
}

// closeSharedFiles closes what mapVmas kept for mappedLock.
func (t *task) closeSharedFiles(rc *Ctx) {
	closed := map[*os.File]bool{} // two mappings of a file share one
	for _, f := range t.sharedFiles {
		if !rc.owns(f) && !closed[f] {
			f.Close()
			closed[f] = true
		}
	}
	t.sharedFiles = nil
}
