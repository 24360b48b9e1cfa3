package parasite

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"

	"crpipe/lib/inject"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
)

// A mapping's own NUMA memory policy (mbind(2)) shows nowhere outside the
// process but in numa_maps, which walks every page as smaps does (24 ms per
// GiB here). From inside, get_mempolicy(MPOL_F_ADDR) tells it for one
// address: the mapping's policy, or MPOL_DEFAULT where it has none (not
// the thread's). So cr-parasite asks it for the first page of every
// mapping, in the leader's batch, and the node mask in a second batch for
// the few that have one.
type vmaPolicies struct {
	maps  []proc.Range
	calls []int // per mapping, its get_mempolicy(mode) call; -1: not asked
	found []*pb.VmaPolicy
}

// plan queues a get_mempolicy(MPOL_F_ADDR) of each mapping's mode.
func (v *vmaPolicies) plan(r *reads, pid int) error {
	maps, err := proc.ReadRanges(pid)
	if err != nil {
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	v.maps, v.calls = maps, make([]int, len(maps))
	r.calls, r.what = slices.Grow(r.calls, len(maps)), slices.Grow(r.what, len(maps))
	for i, m := range maps {
		v.calls[i] = -1
		if m.Start >= kernelSpace { // [vsyscall]: no VMA to ask about
			continue
		}
		v.calls[i] = r.add("get_mempolicy(MPOL_F_ADDR)", 4, 0, unix.SYS_GET_MEMPOLICY, 0, 0, 0, m.Start, unix.MPOL_F_ADDR)
	}
	return nil
}

// kernelSpace is where the kernel's half of the address space begins on
// x86-64 (with 4- or 5-level page tables alike).
const kernelSpace = 1 << 63

// decode keeps the mappings whose policy is not MPOL_DEFAULT, without
// their node masks (masks). A kernel without NUMA (ENOSYS) has none.
func (v *vmaPolicies) decode(r *reads) error {
	for i, c := range v.calls {
		if c < 0 {
			continue
		}
		_, out, err := r.result(c)
		if errors.Is(err, unix.ENOSYS) {
			return nil
		}
		m := &v.maps[i]
		if err != nil {
			return fmt.Errorf("vma %#x-%#x: %w", m.Start, m.End, err)
		}
		if mode := int32(binary.LittleEndian.Uint32(out)); mode != unix.MPOL_DEFAULT {
			v.found = append(v.found, &pb.VmaPolicy{Start: m.Start, End: m.End, Policy: &pb.Mempolicy{Mode: mode}})
		}
	}
	v.maps, v.calls = nil, nil
	return nil
}

// masks reads the node mask of each mapping decode found with a policy,
// through run, and returns the policies.
func (v *vmaPolicies) masks(run func([]inject.Call) error) ([]*pb.VmaPolicy, error) {
	if len(v.found) == 0 {
		return nil, nil
	}
	var r reads
	for _, f := range v.found {
		r.add("get_mempolicy(MPOL_F_ADDR, nodes)", nodeMaskBits/8, 1, unix.SYS_GET_MEMPOLICY, 0, 0, nodeMaskBits, f.Start, unix.MPOL_F_ADDR)
	}
	if err := run(r.calls); err != nil {
		return nil, err
	}
	for i, f := range v.found {
		_, nodes, err := r.result(i)
		if err != nil {
			return nil, fmt.Errorf("vma %#x-%#x: %w", f.Start, f.End, err)
		}
		f.Policy.Nodes = append([]byte(nil), bytes.TrimRight(nodes, "\x00")...)
	}
	return v.found, nil
}
