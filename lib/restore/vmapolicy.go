package restore

import (
	"fmt"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
)

// vmaPolicies gives the mappings of a task their own NUMA memory policies
// back (mbind(2), recorded by cr-parasite), each right after its mmap and
// before any page is written, so that the pages go where the policy says.
// A mapping kept from the parent since fork keeps the parent's policy: it
// is set to the task's own, or to the default where the parent had
// policies and the task has none there.
type vmaPolicies struct {
	own           map[uint64]*pb.Mempolicy // by start address, until given
	masks         map[string]uint64        // node mask → its address in scratch
	parentHasSome bool
}

// newVmaPolicies lays out t's node masks in its scratch area and writes
// them there.
func newVmaPolicies(rc *Ctx, t *task) (*vmaPolicies, error) {
	si := states(rc)
	vp := &vmaPolicies{own: map[uint64]*pb.Mempolicy{}, masks: map[string]uint64{}}
	if t.parent != nil {
		if pi := si.pinside[t.parent.proc.Pid]; pi != nil {
			vp.parentHasSome = len(pi.VmaPolicies) > 0
		}
	}
	pi := si.pinside[t.proc.Pid]
	if pi == nil || len(pi.VmaPolicies) == 0 {
		return vp, nil
	}
	s := &scratchWriter{base: t.scratch}
	for _, p := range pi.VmaPolicies {
		if p.Policy == nil {
			return nil, fmt.Errorf("pid %d: vma %#x-%#x: a memory policy record without its policy", t.pid, p.Start, p.End)
		}
		vp.own[p.Start] = p.Policy
		key := string(p.Policy.Nodes)
		if _, ok := vp.masks[key]; !ok && len(p.Policy.Nodes) > 0 {
			vp.masks[key], _ = nodeMask(s, p.Policy.Nodes)
		}
	}
	if err := t.flushScratch(s); err != nil {
		return nil, err
	}
	return vp, nil
}

// calls are those that give v its policy (none where it keeps the default;
// kept tells that v was kept from the parent).
func (vp *vmaPolicies) calls(v *vma, kept bool) []call {
	p := vp.own[v.Start]
	if p != nil {
		delete(vp.own, v.Start)
	} else {
		if !kept || !vp.parentHasSome {
			return nil
		}
		p = &pb.Mempolicy{Mode: unix.MPOL_DEFAULT}
	}
	var mask, maxnode uint64
	if len(p.Nodes) > 0 {
		mask, maxnode = vp.masks[string(p.Nodes)], nodeMaskBits(p.Nodes)
	}
	return []call{vmaCall(fmt.Sprintf("mbind %#x", p.Mode), v, unix.SYS_MBIND, v.Start, v.End-v.Start, uint64(uint32(p.Mode)), mask, maxnode, 0)}
}

// nodeMask puts a node mask (little-endian words, as recorded) into
// scratch, and returns its address and the maxnode argument that covers
// it.
func nodeMask(s *scratchWriter, nodes []byte) (addr, maxnode uint64) {
	words := append([]byte(nil), nodes...)
	for len(words)%8 != 0 {
		words = append(words, 0) // the kernel reads whole words
	}
	return s.put(words), nodeMaskBits(nodes)
}

// nodeMaskBits is the maxnode argument for a mask of len(nodes) bytes
// rounded up to words: set_mempolicy and mbind read maxnode - 1 bits.
func nodeMaskBits(nodes []byte) uint64 { return uint64((len(nodes)+7)&^7)*8 + 1 }

// check refuses policies recorded for mappings the image does not have
// (a damaged or mismatched image): their memory would go elsewhere. calls
// has taken out of own those it gave.
func (vp *vmaPolicies) check(pid int) error {
	for start, p := range vp.own {
		return fmt.Errorf("pid %d: a memory policy %#x is recorded for a mapping at %#x, which the image does not have", pid, p.Mode, start)
	}
	return nil
}
