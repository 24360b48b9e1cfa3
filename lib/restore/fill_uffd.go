package restore

// Filling a task's fresh anonymous memory with UFFDIO_COPY (issue 10,
// speed). process_vm_writev into a fresh mapping faults in a zeroed page
// and then copies over it; UFFDIO_COPY allocates the page and copies into
// it in one step, with no zeroing and no pinning: 1 GiB in 0.35 s here
// against 0.57 s for the least a write can do (MADV_POPULATE_WRITE, then
// memcpy), doc/performance.md. The task makes the userfaultfd (it acts on
// the memory of its maker), the coordinator takes a copy with pidfd_getfd
// and fills through it; the registration ends before anything else
// happens to the task (its children are forked from it, its state set).

import (
	"errors"
	"fmt"
	"sort"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// uffdMinBytes: a task with less memory than this to fill by UFFDIO_COPY
// is written with process_vm_writev, which needs no setup (two commands to
// the restorer and a pidfd_getfd, ~0.2 ms).
const uffdMinBytes = 1 << 20

// uffdFill is the memory of a task being filled by UFFDIO_COPY.
type uffdFill struct {
	u          *sys.Uffd
	registered []span       // registered ranges, by address: eligible VMAs that touch are one range
	copied     atomic.Int64 // bytes placed by UFFDIO_COPY (by the writers of a frame at once)
}

// uffdEligible: private anonymous memory mapped fresh for the restore
// (with pages to place, or none: see uffdRanges).
// Not inherited VMAs (their pages came from the parent with fork), nor
// file, shared or droppable memory (userfaultfd's missing mode is for
// anonymous memory; a droppable VMA refuses it), nor memory that had
// transparent huge pages: UFFDIO_COPY places 4 KiB pages, and a 2 MiB
// page faulted in whole is faster still.
func uffdEligible(v *vma) bool {
	return pb.VmaKind(v.Kind) == pb.VmaKind_VMA_ANON && len(v.inherited()) == 0 &&
		v.Flags&unix.MAP_DROPPABLE == 0 && len(thpAdvice(v)) == 0
}

// uffdRanges are the ranges of vmas (by address) to register, and the
// bytes of their VMAs with pages: each eligible VMA, joined with the
// eligible VMAs it touches, with pages or not (the guard page between two
// thread stacks). One registration per range, not per VMA: 60,000 VMAs
// took 60,000 ioctls to register and as many to unregister (0.27 s).
func uffdRanges(vmas []vma) (ranges []span, total uint64) {
	ranges = make([]span, 0, len(vmas)) // at most one a VMA: grown, it allocated 5 MB for 60,000
	withPages := false
	for i := range vmas {
		v := &vmas[i]
		if !uffdEligible(v) {
			continue
		}
		if n := len(ranges); n > 0 && ranges[n-1].hi == v.Start {
			ranges[n-1].hi = v.End
		} else {
			if n > 0 && !withPages {
				ranges = ranges[:n-1]
			}
			ranges, withPages = append(ranges, span{v.Start, v.End}), false
		}
		if v.HasPages {
			total += v.End - v.Start
			withPages = true
		}
	}
	if n := len(ranges); n > 0 && !withPages {
		ranges = ranges[:n-1]
	}
	sort.Slice(ranges, func(i, j int) bool { return ranges[i].lo < ranges[j].lo })
	return ranges, total
}

// makeUffd is the call that makes t's userfaultfd, with the ranges to
// register, or false where t's pages are not placed by UFFDIO_COPY. It
// runs last in the batch that maps t's VMAs (mapVmas), a round trip less.
func (t *task) makeUffd(rc *Ctx) (call, []span, bool) {
	if rc.noUffd {
		return call{}, nil, false
	}
	ranges, total := uffdRanges(t.vmas)
	if total < uffdMinBytes {
		return call{}, nil, false
	}
	return sc("userfaultfd", unix.SYS_USERFAULTFD, unix.O_CLOEXEC|sys.UffdUserModeOnly), ranges, true
}

// startUffd registers ranges of t, mapped, with the userfaultfd that
// makeUffd's call made as fd in t, or gave err. Where userfaultfd is not
// available (an old kernel, a seccomp policy) the pages are written with
// process_vm_writev, as they are everywhere else.
func (t *task) startUffd(rc *Ctx, fd int64, ranges []span, err error) error {
	var se *SyscallError
	if errors.As(err, &se) && se.Nr == unix.SYS_USERFAULTFD {
		stage.Logf("pid %d: userfaultfd: %v: its pages are written with process_vm_writev", t.pid, se.Errno)
		return nil
	}
	if err != nil {
		return err
	}
	f, err := t.takeFd(int(fd), "its userfaultfd")
	if err != nil {
		return err
	}
	u, err := sys.NewUffd(f)
	if err != nil {
		stage.Logf("pid %d: %v: its pages are written with process_vm_writev", t.pid, err)
		return nil
	}
	fill := &uffdFill{u: u, registered: ranges[:0]} // in place: a range is kept or dropped
	for _, r := range ranges {
		if err := u.RegisterMissing(r.lo, r.hi-r.lo); err != nil {
			stage.Logf("pid %d: %v: written with process_vm_writev", t.pid, err)
			continue
		}
		fill.registered = append(fill.registered, r)
	}
	t.uffd = fill
	return nil
}

// isRegistered: v lies in a registered range.
func (f *uffdFill) isRegistered(v *vma) bool {
	i := sort.Search(len(f.registered), func(i int) bool { return f.registered[i].hi > v.Start })
	return i < len(f.registered) && f.registered[i].lo <= v.Start && v.End <= f.registered[i].hi
}

// copyPages places data at addr (inside v) by UFFDIO_COPY; it reports
// false when v is not registered, for process_vm_writev to do it.
func (t *task) copyPages(v *vma, addr uint64, data []byte) (bool, error) {
	if t.uffd == nil || !t.uffd.isRegistered(v) {
		return false, nil
	}
	for len(data) > 0 {
		n, err := t.uffd.u.Copy(addr, data)
		t.uffd.copied.Add(int64(n))
		addr, data = addr+uint64(n), data[n:]
		if err == nil {
			break
		}
		if !errors.Is(err, sys.ErrPagePresent) {
			return true, fmt.Errorf("pid %d: %w", t.pid, err)
		}
		// The stream wrote this page before: overwrite it, as a write
		// would have.
		if err := t.writev(addr, data[:pageSize]); err != nil {
			return true, err
		}
		addr, data = addr+pageSize, data[pageSize:]
	}
	return true, nil
}

// endUffd ends the filling of t: every registered VMA faults as any
// other again, before t forks, runs or is dumped (a VMA still registered
// would show in its smaps and be refused by the next dump).
func (t *task) endUffd() error {
	f := t.uffd
	if f == nil {
		return nil
	}
	t.uffd = nil
	var err error
	for _, r := range f.registered {
		if e := f.u.Unregister(r.lo, r.hi-r.lo); e != nil && err == nil {
			err = fmt.Errorf("pid %d: %w", t.pid, e)
		}
	}
	if e := f.u.Close(); e != nil && err == nil {
		err = fmt.Errorf("pid %d: closing its userfaultfd: %w", t.pid, e)
	}
	stage.Logf("pid %d: %d MiB of pages placed with UFFDIO_COPY", t.pid, f.copied.Load()>>20)
	return err
}
