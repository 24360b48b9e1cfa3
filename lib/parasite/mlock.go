package parasite

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"crpipe/lib/inject"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// What mlockall(MCL_FUTURE) leaves is the mm's default flags, which show
// nowhere in /proc; a mapping made while the process is frozen gets them,
// and shows them. It counts in VmLck at once (VM_LOCKED), and the kernel
// populates it at once unless MCL_ONFAULT was given (VM_LOCKONFAULT).
// cr-parasite looks at the stub it maps anyway (inject.MapStub), or at a
// page it maps for the purpose where there is no stub.

// lockedKB is the process's VmLck.
func lockedKB(pid int) (uint64, error) {
	st, err := proc.ReadStatus(pid)
	if err != nil {
		return 0, fmt.Errorf("pid %d: %w", pid, err)
	}
	return st.VmLck, nil
}

// futureLock gives the mlockall flags (MCL_FUTURE, MCL_ONFAULT) in force in
// process pid from a mapping of size bytes made just after VmLck read
// before kB, and a page of it nothing has touched since.
func futureLock(pid int, before, size, untouched uint64) (uint32, error) {
	after, err := lockedKB(pid)
	if err != nil {
		return 0, err
	}
	switch after {
	case before:
		return 0, nil
	case before + size>>10:
	default:
		// The process is frozen: nothing else maps or locks memory now.
		return 0, fmt.Errorf("pid %d: VmLck went from %d to %d kB with a mapping of %d kB: cannot tell what mlockall left", pid, before, after, size>>10)
	}
	pm, err := sys.OpenPagemap(pid)
	if err != nil {
		return 0, fmt.Errorf("pid %d: %w", pid, err)
	}
	defer pm.Close()
	var e [1]uint64
	if err := pm.Entries(untouched, e[:]); err != nil {
		return 0, fmt.Errorf("pid %d: %w", pid, err)
	}
	if e[0]&sys.PagemapPresent != 0 {
		return unix.MCL_FUTURE, nil
	}
	return unix.MCL_FUTURE | unix.MCL_ONFAULT, nil
}

// probeFutureLock maps a page into the process through s, a session on a
// thread of it, to see what mlockall left (futureLock), and unmaps it.
// A process with no room for the page (the reason it has no stub, often)
// gets its soft RLIMIT_AS and RLIMIT_MEMLOCK raised for the moment of the
// mapping and put back at once: the page counts against both.
func probeFutureLock(s *inject.Session, pid int) (uint32, error) {
	const page = 4096
	before, err := lockedKB(pid)
	if err != nil {
		return 0, err
	}
	mapPage := func() (int64, error) {
		addr, err := s.Syscall(unix.SYS_MMAP, 0, page, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
		if err == nil {
			err = inject.Errno(addr)
		}
		return addr, err
	}
	addr, err := mapPage()
	if err == unix.ENOMEM || err == unix.EAGAIN {
		err = withoutLimits(pid, func() error {
			addr, err = mapPage()
			return err
		})
	}
	if err != nil {
		return 0, stage.Hint(fmt.Errorf("pid %d: cannot tell whether mlockall(MCL_FUTURE) is in force: mapping a page to look failed: %w", pid, err),
			"the process has no room left for one more page under its hard RLIMIT_AS or RLIMIT_MEMLOCK, or vm.max_map_count")
	}
	flags, err := futureLock(pid, before, page, uint64(addr))
	ret, uerr := s.Syscall(unix.SYS_MUNMAP, uint64(addr), page)
	if uerr == nil {
		uerr = inject.Errno(ret)
	}
	if uerr != nil {
		return 0, fmt.Errorf("pid %d: unmapping the page mapped to look for mlockall at %#x: %w", pid, addr, uerr)
	}
	return flags, err
}

// withoutLimits runs f with the process's soft RLIMIT_AS and RLIMIT_MEMLOCK
// raised to their hard limits (raising a hard limit needs
// CAP_SYS_RESOURCE), and puts them back as they were.
func withoutLimits(pid int, f func() error) (err error) {
	for _, res := range []int{unix.RLIMIT_AS, unix.RLIMIT_MEMLOCK} {
		var old unix.Rlimit
		if perr := unix.Prlimit(pid, res, nil, &old); perr != nil {
			return fmt.Errorf("reading resource limit %d: %w", res, perr)
		}
		if old.Cur == old.Max {
			continue
		}
		if perr := unix.Prlimit(pid, res, &unix.Rlimit{Cur: old.Max, Max: old.Max}, nil); perr != nil {
			return fmt.Errorf("raising resource limit %d: %w", res, perr)
		}
		defer func() {
			if perr := unix.Prlimit(pid, res, &old, nil); perr != nil {
				err = errors.Join(err, fmt.Errorf("pid %d: putting back resource limit %d: %w", pid, res, perr))
			}
		}()
	}
	return f()
}
