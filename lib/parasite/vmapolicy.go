package parasite

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/inject"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
)

// A mapping's own NUMA memory policy (mbind(2)) shows nowhere outside the
// process but in numa_maps, which walks every page as smaps does (24 ms per
// GiB here). From inside, get_mempolicy(MPOL_F_ADDR) tells it for one
// address: the mapping's policy, or MPOL_DEFAULT where it has none (not
// the thread's). So cr-parasite asks it for the first page of every
// mapping, then the node masks of the few that have one, in batches of
// policyBatch calls: what it holds stays the same however many mappings
// the process has (65,530 at most).
const policyBatch = 1024

// kernelSpace is where the kernel's half of the address space begins on
// x86-64 (with 4- or 5-level page tables alike).
const kernelSpace = 1 << 63

// policies asks for the policies of a process's mappings, a chunk of
// them at a time: the first chunk in the thread's own batch (ask, before
// it runs), which spares a batch of its own (~0.25 ms a process here),
// the rest, if any, and the node masks in batches of their own (finish).
type policies struct {
	r     *reads
	first int          // the index in r of the first call asking
	asked []proc.Range // the mappings r asks about
	rest  []proc.Range // the mappings not asked about yet
}

// askPolicies queues in r the calls that ask for the policies of the
// first policyBatch mappings of pid.
func askPolicies(pid int, r *reads) (*policies, error) {
	maps, err := proc.ReadRanges(pid)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	p := &policies{rest: maps}
	p.ask(r)
	return p, nil
}

// ask queues in r the calls for the next chunk of mappings.
func (p *policies) ask(r *reads) {
	chunk := p.rest[:min(len(p.rest), policyBatch)]
	p.rest = p.rest[len(chunk):]
	p.r, p.first, p.asked = r, len(r.calls), nil
	for _, m := range chunk {
		if m.Start >= kernelSpace { // [vsyscall]: no VMA to ask about
			continue
		}
		r.add("get_mempolicy(MPOL_F_ADDR)", 4, 0, unix.SYS_GET_MEMPOLICY, 0, 0, 0, m.Start, unix.MPOL_F_ADDR)
		p.asked = append(p.asked, m)
	}
}

// finish reads the answers to the calls asked, once they have run, asks
// about the other mappings through run, and returns the mappings that
// have a policy of their own (none on a kernel without NUMA).
func (p *policies) finish(run func([]inject.Call) error) ([]*pb.VmaPolicy, error) {
	var found []*pb.VmaPolicy
	for {
		for i, m := range p.asked {
			_, out, err := p.r.result(p.first + i)
			if errors.Is(err, unix.ENOSYS) {
				return nil, nil // a kernel without NUMA
			}
			if err != nil {
				return nil, fmt.Errorf("vma %x-%x: %w", m.Start, m.End, err)
			}
			if mode := int32(binary.LittleEndian.Uint32(out)); mode != unix.MPOL_DEFAULT {
				found = append(found, &pb.VmaPolicy{Start: m.Start, End: m.End, Policy: &pb.Mempolicy{Mode: mode}})
			}
		}
		if len(p.rest) == 0 {
			break
		}
		p.ask(&reads{})
		if len(p.asked) > 0 {
			if err := run(p.r.calls); err != nil {
				return nil, err
			}
		}
	}
	for i := 0; i < len(found); i += policyBatch {
		if err := readNodeMasks(found[i:min(len(found), i+policyBatch)], run); err != nil {
			return nil, err
		}
	}
	return found, nil
}

// readNodeMasks reads the node mask of each mapping of ps, and refuses a
// mapping whose last page has another policy than its first. A mapping has
// one policy, but shared memory keeps its policies by range in the object:
// another process may have set one on a part of what this mapping shows
// (its mapping split there, this one not), and one mbind over the whole
// mapping would restore it wrong, for both.
func readNodeMasks(ps []*pb.VmaPolicy, run func([]inject.Call) error) error {
	var r reads
	for _, p := range ps {
		last := p.End - image.PageSize
		r.add("get_mempolicy(MPOL_F_ADDR, nodes)", nodeMaskBits/8, 1, unix.SYS_GET_MEMPOLICY, 0, 0, nodeMaskBits, p.Start, unix.MPOL_F_ADDR)
		r.add("get_mempolicy(MPOL_F_ADDR) of the last page", 4, 0, unix.SYS_GET_MEMPOLICY, 0, 0, 0, last, unix.MPOL_F_ADDR)
		r.add("get_mempolicy(MPOL_F_ADDR, nodes) of the last page", nodeMaskBits/8, 1, unix.SYS_GET_MEMPOLICY, 0, 0, nodeMaskBits, last, unix.MPOL_F_ADDR)
	}
	if err := run(r.calls); err != nil {
		return err
	}
	for i, p := range ps {
		var out [3][]byte
		for k := range out {
			var err error
			if _, out[k], err = r.result(3*i + k); err != nil {
				return fmt.Errorf("vma %x-%x: %w", p.Start, p.End, err)
			}
		}
		if int32(binary.LittleEndian.Uint32(out[1])) != p.Policy.Mode || !bytes.Equal(out[0], out[2]) {
			return fmt.Errorf("vma %x-%x: a memory policy that differs within the mapping (shared memory whose policy another mapping set on a part of it) is not supported yet", p.Start, p.End)
		}
		p.Policy.Nodes = append([]byte(nil), bytes.TrimRight(out[0], "\x00")...)
	}
	return nil
}
