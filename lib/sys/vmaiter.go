package sys

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A VmaIter lists a process's VMAs with their raw vm_flags through a BPF
// task_vma iterator (Linux 5.12): what /proc/PID/smaps shows as VmFlags,
// without smaps' walk of every page table entry (24 ms per GiB of
// touched memory, with the process's mmap lock held). It needs CAP_BPF
// and the kernel's BTF (/sys/kernel/btf/vmlinux).
//
// The bits of vm_flags are the kernel's own and move between versions
// and configurations: lib/proc maps them to VmFlags only after checking
// them against smaps (proc.FastVmFlags).
type VmaIter struct {
	prog int
}

// RawVma is one VMA as the iterator reports it.
type RawVma struct {
	Start, End, Flags uint64
	// Alone: no other VMA can map an anonymous page of this one. It has
	// an anon_vma, the one entry of its anon_vma_chain links it to that
	// anon_vma alone, and that anon_vma's interval tree holds that entry
	// alone: every anonymous page of the VMA belongs to an anon_vma in its
	// chain, and every VMA that maps such a page has an entry in that
	// anon_vma's tree (the rmap walk finds mappings so). A VMA whose
	// pages are shared since fork, or split in two, is not alone; nor is
	// one the iterator could not judge (NewVmaIter).
	Alone bool
}

// ErrNoVmaIter wraps the reason the iterator cannot be had here.
var ErrNoVmaIter = errors.New("no BPF task_vma iterator")

const (
	btfPath       = "/sys/kernel/btf/vmlinux"
	iterFunc      = "bpf_iter_task_vma"
	bpfSeqWrite   = 127 // BPF_FUNC_seq_write
	rawVmaSize    = 32
	iterLinkInfo  = 16             // sizeof(union bpf_iter_link_info)
	bpfLicense    = "Dual MIT/GPL" // bpf_seq_write is for GPL-compatible programs
	bpfLogSize    = 4096
	btfKindStruct = 4
	btfKindUnion  = 5
	btfKindFunc   = 12
)

// NewVmaIter loads the iterator's program: it writes start, end and
// vm_flags of each VMA, and whether it is alone (RawVma.Alone), with the
// offsets of the kernel's structures taken from its BTF. Where the BTF
// lacks what the part that follows pointers reads, or the verifier
// refuses that part (it compares kernel pointers, which needs
// CAP_PERFMON), the program without it is loaded and no VMA is alone.
func NewVmaIter() (*VmaIter, error) {
	l, err := readVmaLayout()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoVmaIter, err)
	}
	fd, err := -1, ErrNoVmaIter
	if l.alone {
		fd, err = loadVmaIter(l, true)
	}
	if err != nil {
		fd, err = loadVmaIter(l, false)
	}
	if err != nil {
		return nil, err
	}
	return &VmaIter{prog: fd}, nil
}

// loadVmaIter loads vmaIterProgram(l, alone).
func loadVmaIter(l vmaLayout, alone bool) (int, error) {
	insns := vmaIterProgram(l, alone)
	license := append([]byte(bpfLicense), 0)
	log := make([]byte, bpfLogSize)
	// union bpf_attr for BPF_PROG_LOAD, up to attach_btf_obj_fd.
	var attr [120]byte
	var pin runtime.Pinner
	defer pin.Unpin()
	le := binary.LittleEndian
	le.PutUint32(attr[0:], unix.BPF_PROG_TYPE_TRACING)
	le.PutUint32(attr[4:], uint32(len(insns)/8))
	le.PutUint64(attr[8:], pinned(&pin, insns))
	le.PutUint64(attr[16:], pinned(&pin, license))
	le.PutUint32(attr[24:], 1) // log_level: only read on failure
	le.PutUint32(attr[28:], uint32(len(log)))
	le.PutUint64(attr[32:], pinned(&pin, log))
	le.PutUint32(attr[68:], unix.BPF_TRACE_ITER)
	le.PutUint32(attr[108:], l.fn)
	fd, err := bpf(unix.BPF_PROG_LOAD, attr[:])
	if err != nil {
		if n := bytes.IndexByte(log, 0); n > 0 {
			return -1, fmt.Errorf("%w: BPF_PROG_LOAD: %v: %s", ErrNoVmaIter, err, bytes.TrimSpace(log[:n]))
		}
		return -1, fmt.Errorf("%w: BPF_PROG_LOAD: %v", ErrNoVmaIter, err)
	}
	return fd, nil
}

// Close unloads the program.
func (it *VmaIter) Close() error { return unix.Close(it.prog) }

// Read returns the VMAs of pid's thread pid (its whole address space), in
// address order.
//
// The kernel's iterator of one task starts over once it has listed the
// VMAs, when they took more than one read (Linux 6.18; 10,000 VMAs went
// round and round): the list ends where an address goes back.
func (it *VmaIter) Read(pid int) ([]RawVma, error) {
	info := make([]byte, iterLinkInfo)
	binary.LittleEndian.PutUint32(info[0:], uint32(pid)) // task.tid: this task only
	var attr [32]byte
	var pin runtime.Pinner
	defer pin.Unpin()
	le := binary.LittleEndian
	le.PutUint32(attr[0:], uint32(it.prog))
	le.PutUint32(attr[8:], unix.BPF_TRACE_ITER)
	le.PutUint64(attr[16:], pinned(&pin, info))
	le.PutUint32(attr[24:], uint32(len(info)))
	link, err := bpf(unix.BPF_LINK_CREATE, attr[:])
	if err != nil {
		return nil, fmt.Errorf("pid %d: BPF_LINK_CREATE for its VMAs: %w", pid, err)
	}
	defer unix.Close(link)
	var iattr [8]byte
	le.PutUint32(iattr[0:], uint32(link))
	fd, err := bpf(unix.BPF_ITER_CREATE, iattr[:])
	if err != nil {
		return nil, fmt.Errorf("pid %d: BPF_ITER_CREATE for its VMAs: %w", pid, err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("pid %d's VMA iterator", pid))
	defer f.Close()
	var out []RawVma
	buf := make([]byte, 64<<10)
	have := 0
	for {
		n, err := f.Read(buf[have:])
		have += n
		k := have - have%rawVmaSize
		for b := buf[:k]; len(b) > 0; b = b[rawVmaSize:] {
			v := RawVma{Start: le.Uint64(b), End: le.Uint64(b[8:]), Flags: le.Uint64(b[16:]), Alone: le.Uint64(b[24:]) == 1}
			if v.End <= v.Start || len(out) > 0 && v.Start < out[len(out)-1].End {
				return out, nil // round again
			}
			out = append(out, v)
		}
		have = copy(buf, buf[k:have])
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("pid %d: reading its VMA iterator: %w", pid, err)
		}
	}
	if have != 0 {
		return nil, fmt.Errorf("pid %d: VMA iterator: %d stray bytes", pid, have)
	}
	return out, nil
}

// vmaIterProgram is, in BPF instructions (alone: with the part that
// follows pointers; loads through them cannot fault, the verifier makes
// them probing reads):
//
//	r6 = ctx->meta; r7 = ctx->vma; if r7 == 0 goto out
//	stack[-32..] = r7->vm_start, r7->vm_end, r7->vm_flags, 0
//	r2 = r7->anon_vma; if r2 == 0 goto write
//	r3 = r7->anon_vma_chain.next; r4 = &r7->anon_vma_chain
//	if r3 == r4 goto write; r3 = r3->next; if r3 != r4 goto write
//	r3 = r2->rb_root.rb_root.rb_node; if r3 == 0 goto write
//	r5 = r3->rb_left; if r5 != 0 goto write
//	r5 = r3->rb_right; if r5 != 0 goto write
//	stack[-8] = 1
//	write: bpf_seq_write(r6->seq, r10-32, 32)
//	out: return 0
func vmaIterProgram(l vmaLayout, alone bool) []byte {
	type insn struct {
		code     uint8
		dst, src uint8
		off      int16
		imm      int32
		to       string // jumps: the label to go to
		label    string // this instruction's label
	}
	const (
		ldxDW  = 0x79 // BPF_LDX|BPF_MEM|BPF_DW
		stxDW  = 0x7b // BPF_STX|BPF_MEM|BPF_DW
		stDW   = 0x7a // BPF_ST|BPF_MEM|BPF_DW
		jeqK   = 0x15 // BPF_JMP|BPF_JEQ|BPF_K
		jneK   = 0x55 // BPF_JMP|BPF_JNE|BPF_K
		jeqX   = 0x1d // BPF_JMP|BPF_JEQ|BPF_X
		jneX   = 0x5d // BPF_JMP|BPF_JNE|BPF_X
		movX   = 0xbf // BPF_ALU64|BPF_MOV|BPF_X
		movK   = 0xb7 // BPF_ALU64|BPF_MOV|BPF_K
		addK   = 0x07 // BPF_ALU64|BPF_ADD|BPF_K
		call   = 0x85
		exit   = 0x95
		ctxVma = 16 // struct bpf_iter__task_vma: meta, task, vma
	)
	prog := []insn{
		{code: ldxDW, dst: 6, src: 1, off: 0},
		{code: ldxDW, dst: 7, src: 1, off: ctxVma},
		{code: jeqK, dst: 7, to: "out", imm: 0},
		{code: ldxDW, dst: 2, src: 7, off: l.start},
		{code: stxDW, dst: 10, src: 2, off: -32},
		{code: ldxDW, dst: 2, src: 7, off: l.end},
		{code: stxDW, dst: 10, src: 2, off: -24},
		{code: ldxDW, dst: 2, src: 7, off: l.flags},
		{code: stxDW, dst: 10, src: 2, off: -16},
		{code: stDW, dst: 10, off: -8, imm: 0},
	}
	if alone {
		prog = append(prog,
			insn{code: ldxDW, dst: 2, src: 7, off: l.anonVma},
			insn{code: jeqK, dst: 2, to: "write", imm: 0},
			insn{code: ldxDW, dst: 3, src: 7, off: l.chain},
			insn{code: movX, dst: 4, src: 7},
			insn{code: addK, dst: 4, imm: int32(l.chain)},
			insn{code: jeqX, dst: 3, src: 4, to: "write"},
			insn{code: ldxDW, dst: 3, src: 3, off: 0}, // list_head.next
			insn{code: jneX, dst: 3, src: 4, to: "write"},
			insn{code: ldxDW, dst: 3, src: 2, off: l.tree},
			insn{code: jeqK, dst: 3, to: "write", imm: 0},
			insn{code: ldxDW, dst: 5, src: 3, off: l.left},
			insn{code: jneK, dst: 5, to: "write", imm: 0},
			insn{code: ldxDW, dst: 5, src: 3, off: l.right},
			insn{code: jneK, dst: 5, to: "write", imm: 0},
			insn{code: stDW, dst: 10, off: -8, imm: 1},
		)
	}
	prog = append(prog,
		insn{label: "write", code: ldxDW, dst: 1, src: 6, off: 0}, // meta->seq
		insn{code: movX, dst: 2, src: 10},
		insn{code: addK, dst: 2, imm: -rawVmaSize},
		insn{code: movK, dst: 3, imm: rawVmaSize},
		insn{code: call, imm: bpfSeqWrite},
		insn{label: "out", code: movK, dst: 0, imm: 0},
		insn{code: exit},
	)
	at := map[string]int{}
	for i, in := range prog {
		if in.label != "" {
			at[in.label] = i
		}
	}
	b := make([]byte, 0, 8*len(prog))
	for i, in := range prog {
		if in.to != "" {
			in.off = int16(at[in.to] - i - 1)
		}
		b = append(b, in.code, in.dst|in.src<<4)
		b = binary.LittleEndian.AppendUint16(b, uint16(in.off))
		b = binary.LittleEndian.AppendUint32(b, uint32(in.imm))
	}
	return b
}

// pinned is the address of b's bytes for a field of a bpf_attr: pinned,
// so that the object is on the heap and stays where the kernel is told
// it is (a stack may move at the next call).
func pinned(pin *runtime.Pinner, b []byte) uint64 {
	pin.Pin(&b[0])
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

func bpf(cmd int, attr []byte) (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_BPF, uintptr(cmd), uintptr(unsafe.Pointer(&attr[0])), uintptr(len(attr)))
	runtime.KeepAlive(attr)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

// vmaLayout is where the iterator's program finds what it reads: the
// type id of the iterator's function, and byte offsets in the kernel's
// structures.
type vmaLayout struct {
	fn                uint32
	start, end, flags int16 // in struct vm_area_struct
	// alone: the BTF gives the offsets below, which the part of the
	// program that tells RawVma.Alone reads.
	alone          bool
	anonVma, chain int16 // in struct vm_area_struct: anon_vma, anon_vma_chain
	tree           int16 // in struct anon_vma: rb_root.rb_root.rb_node
	left, right    int16 // in struct rb_node
}

// readVmaLayout finds the layout in the kernel's BTF (the members of
// struct vm_area_struct sit inside anonymous unions and structs on
// recent kernels).
func readVmaLayout() (l vmaLayout, err error) {
	raw, release, err := readBTF()
	if err != nil {
		return l, err
	}
	defer release()
	b, err := parseBTF(raw)
	if err != nil {
		return l, err
	}
	ids := b.findAll([]btfName{
		{btfKindFunc, iterFunc}, {btfKindStruct, "vm_area_struct"}, {btfKindStruct, "anon_vma"},
		{btfKindStruct, "rb_node"}, {btfKindStruct, "rb_root_cached"}, {btfKindStruct, "rb_root"}, {btfKindStruct, "list_head"},
	})
	if b.err != nil {
		return l, fmt.Errorf("%s: %w", btfPath, b.err)
	}
	fn, vma, anon, node, cached, root, list := ids[0], ids[1], ids[2], ids[3], ids[4], ids[5], ids[6]
	if fn == 0 || vma == 0 {
		return l, fmt.Errorf("%s: no %s or struct vm_area_struct", btfPath, iterFunc)
	}
	l.fn = fn
	off := func(id uint32, name string) (int16, error) {
		o, ok := b.member(id, name, 0, 0)
		if !ok || o%64 != 0 || o/8 > 1<<15-1 {
			return 0, fmt.Errorf("%s: no aligned %s in struct type %d", btfPath, name, id)
		}
		return int16(o / 8), nil
	}
	type member struct {
		id   uint32
		name string
		to   *int16
	}
	for _, m := range []member{{vma, "vm_start", &l.start}, {vma, "vm_end", &l.end}, {vma, "vm_flags", &l.flags}} {
		if *m.to, err = off(m.id, m.name); err != nil {
			return l, err
		}
	}
	// The program reads the tree's root node and a list's next pointer at
	// the start of their structures (offset 0).
	var first int16
	for _, m := range []member{
		{vma, "anon_vma", &l.anonVma}, {vma, "anon_vma_chain", &l.chain}, {anon, "rb_root", &l.tree},
		{node, "rb_left", &l.left}, {node, "rb_right", &l.right},
		{cached, "rb_root", &first}, {root, "rb_node", &first}, {list, "next", &first},
	} {
		if *m.to, err = off(m.id, m.name); err != nil || first != 0 {
			return l, nil // no VMA is alone
		}
	}
	l.alone = true
	return l, nil
}

// readBTF maps the kernel's BTF (Linux 6.16), or reads it: 5 MB, in
// reads of a page each.
func readBTF() (raw []byte, release func(), err error) {
	f, err := os.Open(btfPath)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_PRIVATE); err == nil {
		return m, func() { unix.Munmap(m) }, nil
	}
	raw, err = io.ReadAll(f)
	return raw, func() {}, err
}

// btf is the type section of a BTF blob, indexed by type id, parsed only
// as far as a lookup needs (the iterator's function is about half-way in
// the kernel's 126,000 types). The index keeps the offset of every
// btfMark-th type only: one of every type was 0.8 MB of fresh memory (~200
// page faults at 11 µs on the PVM guest), and finding the end of every
// type's name (findAll) cost as much again: the lookup of the layout
// took 4.3 ms here, 1.8 without either (in a warm process).
type btf struct {
	types   []byte
	strings []byte
	marks   []uint32 // offset in types of types 1, 1+btfMark, 1+2·btfMark...
	parsed  uint32   // types 1..parsed are parsed (0 is void)
	next    int      // where type parsed+1 starts
	err     error    // damage found
}

const btfMark = 32

func parseBTF(raw []byte) (*btf, error) {
	le := binary.LittleEndian
	if len(raw) < 24 || le.Uint16(raw) != 0xeb9f {
		return nil, errors.New("not BTF")
	}
	hdr := le.Uint32(raw[4:])
	typeOff, typeLen := le.Uint32(raw[8:]), le.Uint32(raw[12:])
	strOff, strLen := le.Uint32(raw[16:]), le.Uint32(raw[20:])
	end := func(o, n uint32) bool { return uint64(hdr)+uint64(o)+uint64(n) > uint64(len(raw)) }
	if end(typeOff, typeLen) || end(strOff, strLen) {
		return nil, errors.New("BTF sections out of bounds")
	}
	return &btf{types: raw[hdr+typeOff : hdr+typeOff+typeLen], strings: raw[hdr+strOff : hdr+strOff+strLen]}, nil
}

// size is the length of the type at p, 0 on damage (err).
func (b *btf) size(p int) int {
	if p+12 > len(b.types) {
		b.err = errors.New("BTF type truncated")
		return 0
	}
	info := binary.LittleEndian.Uint32(b.types[p+4:])
	vlen, kind := int(info&0xffff), int(info>>24&0x1f)
	n := 12
	switch kind {
	case 1, 14, 17: // int, var, decl tag
		n += 4
	case 3: // array
		n += 12
	case btfKindStruct, btfKindUnion, 15, 19: // members, datasec vars, enum64 values
		n += 12 * vlen
	case 6, 13: // enum values, function parameters
		n += 8 * vlen
	case 2, 7, 8, 9, 10, 11, btfKindFunc, 16, 18:
	default:
		b.err = fmt.Errorf("BTF kind %d unknown", kind)
		return 0
	}
	if p+n > len(b.types) {
		b.err = errors.New("BTF type truncated")
		return 0
	}
	return n
}

// parseNext parses one more type, type parsed (after the call), and
// returns its offset: false at the end, or on damage (err).
func (b *btf) parseNext() (int, bool) {
	p := b.next
	if b.err != nil || p == len(b.types) {
		return 0, false
	}
	n := b.size(p)
	if n == 0 {
		return 0, false
	}
	if b.parsed%btfMark == 0 {
		b.marks = append(b.marks, uint32(p))
	}
	b.parsed++
	b.next = p + n
	return p, true
}

// offset is where type id starts, parsing up to it; false if there is none.
func (b *btf) offset(id uint32) (int, bool) {
	for id > b.parsed {
		if _, ok := b.parseNext(); !ok {
			break
		}
	}
	if id == 0 || id > b.parsed {
		return 0, false
	}
	p := int(b.marks[(id-1)/btfMark])
	for range (id - 1) % btfMark {
		p += b.size(p) // parsed before: whole
	}
	return p, true
}

// typ returns type id, parsing up to it; nil if there is none.
func (b *btf) typ(id uint32) []byte {
	p, ok := b.offset(id)
	if !ok {
		return nil
	}
	return b.types[p:]
}

func (b *btf) name(off uint32) []byte {
	if int(off) >= len(b.strings) {
		return nil
	}
	s := b.strings[off:]
	if n := bytes.IndexByte(s, 0); n >= 0 {
		return s[:n]
	}
	return nil
}

// btfName is a type to look for: its kind and name.
type btfName struct {
	kind int
	name string
}

// findAll returns the id of the first type of each kind and name in
// want, 0 for those not there, in one pass over the types.
func (b *btf) findAll(want []btfName) []uint32 {
	le := binary.LittleEndian
	ids := make([]uint32, len(want))
	left := len(want)
	for id := uint32(1); left > 0; id++ { // types start at id 1
		// The next type straight from the parse: offset would walk from
		// the last mark again.
		p, ok := 0, false
		if id <= b.parsed {
			p, ok = b.offset(id)
		} else {
			p, ok = b.parseNext()
		}
		if !ok {
			break
		}
		t := b.types[p:]
		kind, off := int(le.Uint32(t[4:])>>24&0x1f), le.Uint32(t)
		for i, w := range want {
			// The kind first, and the name's bytes in place: finding the
			// end of every type's name was most of a lookup.
			if ids[i] == 0 && w.kind == kind && b.named(off, w.name) {
				ids[i] = id
				left--
			}
		}
	}
	return ids
}

// named says whether the string at off is name.
func (b *btf) named(off uint32, name string) bool {
	end := uint64(off) + uint64(len(name))
	return end < uint64(len(b.strings)) && b.strings[end] == 0 && string(b.strings[off:end]) == name
}

// member returns the bit offset of member name in struct or union id,
// looking into anonymous members (depth levels down already); base is
// id's own offset.
func (b *btf) member(id uint32, name string, base uint32, depth int) (uint32, bool) {
	le := binary.LittleEndian
	t := b.typ(id)
	if t == nil || depth > 8 {
		return 0, false
	}
	info := le.Uint32(t[4:])
	kind, vlen, bitfields := int(info>>24&0x1f), int(info&0xffff), info>>31 == 1
	if kind != btfKindStruct && kind != btfKindUnion {
		return 0, false
	}
	for i := 0; i < vlen; i++ {
		m := t[12+12*i:]
		mname, mtype, moff := le.Uint32(m), le.Uint32(m[4:]), le.Uint32(m[8:])
		if bitfields {
			moff &= 0xffffff
		}
		if mname == 0 {
			if o, ok := b.member(mtype, name, base+moff, depth+1); ok {
				return o, true
			}
			continue
		}
		if string(b.name(mname)) == name {
			return base + moff, true
		}
	}
	return 0, false
}

// MakeFlagProbes maps, in this process, small mappings that each carry
// a VmFlag of their own (madvise advice, mlock, MAP_NORESERVE, sealing...),
// for proc.FastVmFlags to check the iterator's bits against smaps.
// Probes the kernel refuses are left out. release unmaps them.
func MakeFlagProbes() (release func()) {
	const size = 2 << 12
	var maps [][]byte
	probe := func(prot, flags int, then func(b []byte) error) {
		b, err := unix.Mmap(-1, 0, size, prot, flags|unix.MAP_ANONYMOUS)
		if err != nil {
			return
		}
		if then != nil && then(b) != nil {
			unix.Munmap(b)
			return
		}
		maps = append(maps, b)
	}
	rw, priv := unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE
	probe(unix.PROT_READ, priv, nil)
	probe(unix.PROT_READ|unix.PROT_EXEC, priv, nil)
	probe(unix.PROT_NONE, priv, nil)
	probe(rw, unix.MAP_SHARED, nil)
	probe(unix.PROT_READ, unix.MAP_SHARED, nil)
	probe(rw, priv|unix.MAP_NORESERVE, nil)
	probe(rw, priv|unix.MAP_GROWSDOWN, nil)
	probe(rw, unix.MAP_DROPPABLE, nil)
	for _, advice := range []int{unix.MADV_DONTDUMP, unix.MADV_DONTFORK, unix.MADV_WIPEONFORK, unix.MADV_HUGEPAGE,
		unix.MADV_NOHUGEPAGE, unix.MADV_SEQUENTIAL, unix.MADV_RANDOM, unix.MADV_MERGEABLE} {
		probe(rw, priv, func(b []byte) error { return unix.Madvise(b, advice) })
	}
	probe(rw, priv, unix.Mlock)
	call := func(nr, arg uintptr) func(b []byte) error {
		return func(b []byte) error {
			if _, _, errno := unix.Syscall(nr, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), arg); errno != 0 {
				return errno
			}
			return nil
		}
	}
	probe(rw, priv, call(unix.SYS_MLOCK2, unix.MLOCK_ONFAULT))
	probe(rw, priv, call(unix.SYS_MSEAL, 0))
	return func() {
		for _, b := range maps {
			unix.Munlock(b)
			unix.Munmap(b) // a sealed probe stays: 8 KiB
		}
	}
}
