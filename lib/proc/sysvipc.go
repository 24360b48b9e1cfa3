package proc

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/sys"
)

// SysvShm is one System V shared memory segment as /proc/sysvipc/shm shows
// it (ipc/shm.c, sysvipc_shm_proc_show).
type SysvShm struct {
	Key    int32
	ID     int32
	Mode   uint32 // shm_perm.mode: permission bits, SHM_DEST, SHM_LOCKED
	Size   uint64
	Nattch uint64
	UID    uint32
	GID    uint32
}

// The state bits the kernel keeps in shm_perm.mode beside the permissions
// (include/uapi/linux/shm.h, ipc/shm.c).
const (
	ShmDest   = 0o1000 // removed (IPC_RMID), still attached
	ShmLocked = 0o2000 // SHM_LOCK
)

// ReadSysvShm reads the System V shared memory segments of the IPC
// namespace of the caller (not of the process that opens the proc mount).
func ReadSysvShm() ([]SysvShm, error) {
	f, err := sys.Open("/proc/sysvipc/shm", unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	segs, err := ParseSysvShm(f)
	if err != nil {
		return nil, fmt.Errorf("/proc/sysvipc/shm: %w", err)
	}
	return segs, nil
}

// ParseSysvShm parses the text of /proc/sysvipc/shm: a header line, then a
// line per segment whose first columns are key, shmid, perms (octal), size,
// cpid, lpid, nattch, uid, gid.
func ParseSysvShm(r io.Reader) ([]SysvShm, error) {
	sc, done := lineScanner(r)
	defer done()
	if !sc.Scan() || !strings.HasPrefix(strings.TrimSpace(sc.Text()), "key") {
		if err := sc.Err(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("no header line: %w", ErrMapsSyntax)
	}
	var segs []SysvShm
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) < 9 {
			return nil, fmt.Errorf("line %q: %w", line, ErrMapsSyntax)
		}
		key, err1 := strconv.ParseInt(f[0], 10, 32)
		id, err2 := strconv.ParseInt(f[1], 10, 32)
		mode, err3 := strconv.ParseUint(f[2], 8, 32)
		size, err4 := strconv.ParseUint(f[3], 10, 64)
		nattch, err5 := strconv.ParseUint(f[6], 10, 64)
		uid, err6 := strconv.ParseUint(f[7], 10, 32)
		gid, err7 := strconv.ParseUint(f[8], 10, 32)
		for _, err := range []error{err1, err2, err3, err4, err5, err6, err7} {
			if err != nil {
				return nil, fmt.Errorf("line %q: %w", line, ErrMapsSyntax)
			}
		}
		segs = append(segs, SysvShm{Key: int32(key), ID: int32(id), Mode: uint32(mode), Size: size, Nattch: nattch, UID: uint32(uid), GID: uint32(gid)})
	}
	return segs, sc.Err()
}
