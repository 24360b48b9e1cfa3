package restore

import (
	"encoding/binary"
	"errors"
	"fmt"
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
	var calls []call
	for _, l := range t.files.Locks {
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
		typ, op, mode := uint64(unix.F_RDLCK), uint64(unix.LOCK_SH), "read"
		if l.Write {
			typ, op, mode = unix.F_WRLCK, unix.LOCK_EX, "write"
		}
		what := fmt.Sprintf("%s%s %s lock on fd %d (%s)", lockCall, lockName(kind), mode, l.Fd, fd.Path)
		if kind != pb.FileLockKind_LOCK_FLOCK {
			what += ", " + lockRange(l)
		}
		switch kind {
		case pb.FileLockKind_LOCK_FLOCK:
			calls = append(calls, sc(what, unix.SYS_FLOCK, uint64(l.Fd), op|unix.LOCK_NB))
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
