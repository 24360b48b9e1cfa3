package inject

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// A session blocks every signal of its thread (Begin) before any stub
// can record what the thread had (recover.go), and keeps them blocked
// after the stub is gone, until End. A tracer killed then leaves the
// thread running its own code with every signal blocked: a SIGTERM sent
// to end the program waits for ever. So the masks are also kept outside
// the process, on the frozen cgroup (an xattr per process, as cr-freeze
// keeps its own state there): KeepMasks before the sessions begin,
// DropMasks once they have ended, and the thaw's PutBackMasks gives each
// thread still found with every signal blocked the mask recorded for it.

const masksXattr = "user.crpipe.masks." // + pid

func masksName(pid int) string { return masksXattr + strconv.Itoa(pid) }

// KeepMasks records on cgroup, the directory of the frozen cgroup, the
// signal masks of tids, threads of pid that the caller holds in ptrace
// stops and is about to begin sessions on. A process with too many
// threads for an xattr is not recorded, and says so in the log.
func KeepMasks(cgroup string, pid int, tids []int) error {
	st, err := proc.ReadStat(pid)
	if err != nil {
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	masks := make(map[uint64][]int)
	for _, tid := range tids {
		m, err := sys.PtraceGetSigmask(tid)
		if err != nil {
			return fmt.Errorf("pid %d tid %d: %w", pid, tid, err)
		}
		masks[m] = append(masks[m], tid)
	}
	err = unix.Setxattr(cgroup, masksName(pid), encodeMasks(st.StartTime, masks), 0)
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) {
		stage.Logf("pid %d: the signal masks of its %d threads do not fit on %s (%v); were this stage killed now, they could stay blocked", pid, len(tids), cgroup, err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("pid %d: record the signal masks on %s: %w", pid, cgroup, err)
	}
	return nil
}

// DropMasks removes the record KeepMasks made for pid.
func DropMasks(cgroup string, pid int) error {
	if err := removeRecord(cgroup, masksName(pid)); err != nil {
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	return nil
}

// removeRecord removes the xattr name from cgroup; none is no error.
func removeRecord(cgroup, name string) error {
	if err := unix.Removexattr(cgroup, name); err != nil && !errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("remove the record %s from %s: %w", name, cgroup, err)
	}
	return nil
}

// The record: the process's start time, then for each distinct mask the
// mask, the number of its threads and their tids (threads mostly share a
// mask: about 4 bytes a thread).
func encodeMasks(start uint64, masks map[uint64][]int) []byte {
	le := binary.LittleEndian
	b := le.AppendUint64(nil, start)
	for _, m := range slices.Sorted(maps.Keys(masks)) {
		b = le.AppendUint64(b, m)
		b = le.AppendUint32(b, uint32(len(masks[m])))
		for _, tid := range masks[m] {
			b = le.AppendUint32(b, uint32(tid))
		}
	}
	return b
}

func decodeMasks(b []byte) (start uint64, masks map[int]uint64, err error) {
	le := binary.LittleEndian
	bad := fmt.Errorf("malformed record of signal masks (%d bytes)", len(b))
	if len(b) < 8 {
		return 0, nil, bad
	}
	start, b = le.Uint64(b), b[8:]
	masks = map[int]uint64{}
	for len(b) > 0 {
		if len(b) < 12 {
			return 0, nil, bad
		}
		m, n := le.Uint64(b), uint64(le.Uint32(b[8:]))
		b = b[12:]
		if n*4 > uint64(len(b)) {
			return 0, nil, bad
		}
		for range n {
			masks[int(le.Uint32(b))] = m
			b = b[4:]
		}
	}
	return start, masks, nil
}

// PutBackMasks reads every record of signal masks on cgroup, gives each
// thread of a recorded process that is untraced and has every signal
// blocked the mask recorded for it, and removes the records; a stub left
// empty in such a process goes too (dropEmptyStub). The cgroup must be
// thawed. It returns the pids whose threads it put back, and those whose
// empty stub it unmapped.
func PutBackMasks(cgroup string) (fixed, unmapped []int, err error) {
	pids, err := masksRecords(cgroup)
	if err != nil {
		return nil, nil, err
	}
	var errs []error
	for _, pid := range pids {
		n, dropped, err := putBackMasksOf(cgroup, pid)
		if n > 0 {
			fixed = append(fixed, pid)
		}
		if dropped {
			unmapped = append(unmapped, pid)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("pid %d: %w", pid, err))
		}
		errs = append(errs, DropMasks(cgroup, pid))
	}
	return fixed, unmapped, errors.Join(errs...)
}

// ForgetMasks removes every record of signal masks from cgroup.
func ForgetMasks(cgroup string) error {
	pids, err := masksRecords(cgroup)
	for _, pid := range pids {
		err = errors.Join(err, DropMasks(cgroup, pid))
	}
	return err
}

// masksRecords lists the processes with a record of signal masks on
// cgroup.
func masksRecords(cgroup string) ([]int, error) {
	names, err := recordNames(cgroup, masksXattr)
	var pids []int
	for _, name := range names {
		if pid, err := strconv.Atoi(strings.TrimPrefix(name, masksXattr)); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, err
}

// recordNames lists the xattrs on cgroup whose names start with prefix.
func recordNames(cgroup, prefix string) ([]string, error) {
	buf := make([]byte, 4096)
	for {
		n, err := unix.Listxattr(cgroup, buf)
		if errors.Is(err, unix.ERANGE) && len(buf) < 1<<20 {
			buf = make([]byte, 2*len(buf))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list the xattrs of %s: %w", cgroup, err)
		}
		var names []string
		for name := range strings.SplitSeq(string(buf[:n]), "\x00") {
			if strings.HasPrefix(name, prefix) {
				names = append(names, name)
			}
		}
		return names, nil
	}
}

// putBackMasksOf puts back the masks of pid's threads that its record
// on cgroup holds, after unmapping a stub left empty, and says how many
// it put back and whether there was one.
func putBackMasksOf(cgroup string, pid int) (int, bool, error) {
	buf := make([]byte, 64<<10) // XATTR_SIZE_MAX
	n, err := unix.Getxattr(cgroup, masksName(pid), buf)
	if err != nil {
		return 0, false, fmt.Errorf("read %s on %s: %w", masksName(pid), cgroup, err)
	}
	start, masks, err := decodeMasks(buf[:n])
	if err != nil {
		return 0, false, err
	}
	if st, err := proc.ReadStat(pid); err != nil || st.StartTime != start {
		return 0, false, nil // gone, or another process since
	}
	tids := slices.Sorted(maps.Keys(masks))
	dropped, err := dropEmptyStub(pid, len(tids), tids)
	errs := []error{err}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fixed := 0
	for _, tid := range tids {
		mask := masks[tid]
		if mask == allBlocked {
			continue // its own: nothing to tell apart
		}
		st, err := proc.ReadStatus(tid)
		if err != nil || st.Tgid != pid || st.TracerPid != 0 || st.SigBlk != allBlocked {
			continue // gone, or held by a tracer alive, or its mask is its own
		}
		if err := setMaskUntraced(tid, mask); err != nil {
			errs = append(errs, fmt.Errorf("tid %d: %w", tid, err))
			continue
		}
		fixed++
	}
	return fixed, dropped, errors.Join(errs...)
}

// setMaskUntraced seizes tid, stops it, sets its signal mask and lets it
// go. The calling OS thread is locked.
func setMaskUntraced(tid int, mask uint64) error {
	if err := seizeStopped(tid, 0); err != nil {
		return err
	}
	defer sys.PtraceDetach(tid, 0)
	return sys.PtraceSetSigmask(tid, mask)
}
