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
}

// ErrNoVmaIter wraps the reason the iterator cannot be had here.
var ErrNoVmaIter = errors.New("no BPF task_vma iterator")

const (
	btfPath       = "/sys/kernel/btf/vmlinux"
	iterFunc      = "bpf_iter_task_vma"
	bpfSeqWrite   = 127 // BPF_FUNC_seq_write
	rawVmaSize    = 24
	iterLinkInfo  = 16             // sizeof(union bpf_iter_link_info)
	bpfLicense    = "Dual MIT/GPL" // bpf_seq_write is for GPL-compatible programs
	bpfLogSize    = 4096
	btfKindStruct = 4
	btfKindUnion  = 5
	btfKindFunc   = 12
)

// NewVmaIter loads the iterator's program: it writes start, end and
// vm_flags of each VMA, whose offsets in struct vm_area_struct come from
// the kernel's BTF.
func NewVmaIter() (*VmaIter, error) {
	fn, off, err := vmaLayout()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoVmaIter, err)
	}
	insns := vmaIterProgram(off)
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
	le.PutUint32(attr[108:], fn)
	fd, err := bpf(unix.BPF_PROG_LOAD, attr[:])
	if err != nil {
		if n := bytes.IndexByte(log, 0); n > 0 {
			return nil, fmt.Errorf("%w: BPF_PROG_LOAD: %v: %s", ErrNoVmaIter, err, bytes.TrimSpace(log[:n]))
		}
		return nil, fmt.Errorf("%w: BPF_PROG_LOAD: %v", ErrNoVmaIter, err)
	}
	return &VmaIter{prog: fd}, nil
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
			v := RawVma{Start: le.Uint64(b), End: le.Uint64(b[8:]), Flags: le.Uint64(b[16:])}
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

// vmaIterProgram is, in BPF instructions:
//
//	r6 = ctx->meta; r7 = ctx->vma; if r7 == 0 goto out
//	stack[-24..] = r7->vm_start, r7->vm_end, r7->vm_flags
//	bpf_seq_write(r6->seq, r10-24, 24)
//	out: return 0
func vmaIterProgram(off [3]int16) []byte {
	type insn struct {
		code     uint8
		dst, src uint8
		off      int16
		imm      int32
	}
	const (
		ldxDW  = 0x79 // BPF_LDX|BPF_MEM|BPF_DW
		stxDW  = 0x7b // BPF_STX|BPF_MEM|BPF_DW
		jeqK   = 0x15 // BPF_JMP|BPF_JEQ|BPF_K
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
		{code: jeqK, dst: 7, off: 11, imm: 0},
		{code: ldxDW, dst: 2, src: 7, off: off[0]},
		{code: stxDW, dst: 10, src: 2, off: -24},
		{code: ldxDW, dst: 2, src: 7, off: off[1]},
		{code: stxDW, dst: 10, src: 2, off: -16},
		{code: ldxDW, dst: 2, src: 7, off: off[2]},
		{code: stxDW, dst: 10, src: 2, off: -8},
		{code: ldxDW, dst: 1, src: 6, off: 0}, // meta->seq
		{code: movX, dst: 2, src: 10},
		{code: addK, dst: 2, imm: -rawVmaSize},
		{code: movK, dst: 3, imm: rawVmaSize},
		{code: call, imm: bpfSeqWrite},
		{code: movK, dst: 0, imm: 0}, // out
		{code: exit},
	}
	b := make([]byte, 0, 8*len(prog))
	for _, i := range prog {
		b = append(b, i.code, i.dst|i.src<<4)
		b = binary.LittleEndian.AppendUint16(b, uint16(i.off))
		b = binary.LittleEndian.AppendUint32(b, uint32(i.imm))
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

// vmaLayout finds, in the kernel's BTF, the type id of the iterator's
// function and the byte offsets of vm_start, vm_end and vm_flags in
// struct vm_area_struct (inside anonymous unions and structs on recent
// kernels).
func vmaLayout() (fn uint32, off [3]int16, err error) {
	raw, release, err := readBTF()
	if err != nil {
		return 0, off, err
	}
	defer release()
	b, err := parseBTF(raw)
	if err != nil {
		return 0, off, err
	}
	vma := b.find(btfKindStruct, "vm_area_struct")
	fn = b.find(btfKindFunc, iterFunc)
	if b.err != nil {
		return 0, off, fmt.Errorf("%s: %w", btfPath, b.err)
	}
	if fn == 0 || vma == 0 {
		return 0, off, fmt.Errorf("%s: no %s or struct vm_area_struct", btfPath, iterFunc)
	}
	for i, name := range []string{"vm_start", "vm_end", "vm_flags"} {
		o, ok := b.member(vma, name, 0, 0)
		if !ok || o%64 != 0 || o/8 > 1<<15-1 {
			return 0, off, fmt.Errorf("%s: struct vm_area_struct has no aligned %s", btfPath, name)
		}
		off[i] = int16(o / 8)
	}
	return fn, off, nil
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
// the kernel's 126,000 types: 0.6 ms of a whole parse's 1.3).
type btf struct {
	types   []byte
	strings []byte
	at      []uint32 // offset in types of each type parsed so far, by id (0 is void)
	next    int      // where the next type starts
	err     error    // damage found
}

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
	b := &btf{types: raw[hdr+typeOff : hdr+typeOff+typeLen], strings: raw[hdr+strOff : hdr+strOff+strLen]}
	b.at = append(make([]uint32, 0, typeLen/16), 0) // about 40 bytes a type
	return b, nil
}

// parseNext parses one more type: false at the end, or on damage (err).
func (b *btf) parseNext() bool {
	p := b.next
	if b.err != nil || p == len(b.types) {
		return false
	}
	if p+12 > len(b.types) {
		b.err = errors.New("BTF type truncated")
		return false
	}
	info := binary.LittleEndian.Uint32(b.types[p+4:])
	vlen, kind := int(info&0xffff), int(info>>24&0x1f)
	p += 12
	switch kind {
	case 1, 14, 17: // int, var, decl tag
		p += 4
	case 3: // array
		p += 12
	case btfKindStruct, btfKindUnion, 15, 19: // members, datasec vars, enum64 values
		p += 12 * vlen
	case 6, 13: // enum values, function parameters
		p += 8 * vlen
	case 2, 7, 8, 9, 10, 11, btfKindFunc, 16, 18:
	default:
		b.err = fmt.Errorf("BTF kind %d unknown", kind)
		return false
	}
	if p > len(b.types) {
		b.err = errors.New("BTF type truncated")
		return false
	}
	b.at = append(b.at, uint32(b.next))
	b.next = p
	return true
}

// typ returns type id, parsing up to it; nil if there is none.
func (b *btf) typ(id uint32) []byte {
	for int(id) >= len(b.at) && b.parseNext() {
	}
	if id == 0 || int(id) >= len(b.at) {
		return nil
	}
	return b.types[b.at[id]:]
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

// find returns the id of the first type of kind named name, 0 if none.
func (b *btf) find(kind int, name string) uint32 {
	le := binary.LittleEndian
	for id := uint32(1); ; id++ { // types start at id 1
		t := b.typ(id)
		if t == nil {
			return 0
		}
		if int(le.Uint32(t[4:])>>24&0x1f) == kind && string(b.name(le.Uint32(t))) == name {
			return id
		}
	}
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
