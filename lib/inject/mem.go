package inject

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/proc"
	"crpipe/lib/sys"
)

// ReadMem reads len(buf) bytes at addr of process pid (process_vm_readv).
func ReadMem(pid int, addr uint64, buf []byte) error {
	for done := 0; done < len(buf); {
		n, err := unix.ProcessVMReadv(pid,
			[]unix.Iovec{{Base: &buf[done], Len: uint64(len(buf) - done)}},
			[]unix.RemoteIovec{{Base: uintptr(addr) + uintptr(done), Len: len(buf) - done}}, 0)
		if err != nil {
			return fmt.Errorf("pid %d: read %d bytes at %#x: %w", pid, len(buf)-done, addr+uint64(done), err)
		}
		if n == 0 {
			return fmt.Errorf("pid %d: read at %#x: short read", pid, addr+uint64(done))
		}
		done += n
	}
	return nil
}

// WriteMem writes buf at addr of process pid (process_vm_writev; the
// target memory must be writable).
func WriteMem(pid int, addr uint64, buf []byte) error {
	if err := sys.WriteMemory(pid, addr, buf); err != nil {
		return fmt.Errorf("pid %d: %w", pid, err)
	}
	return nil
}

// redZone is the x86_64 ABI's area below rsp that leaf functions may use
// without moving rsp: the task may hold live data there.
const redZone = 128

// Scratch reserves size bytes of the task's stack below the red zone for
// syscall results, saving their contents; End writes them back, so the
// task's memory is unchanged. Successive calls return areas further down.
func (s *Session) Scratch(size int) (uint64, error) {
	if size <= 0 || size > 64<<10 {
		return 0, fmt.Errorf("inject: scratch of %d bytes", size)
	}
	top := s.regs.Rsp - redZone
	if n := len(s.saved); n > 0 {
		top = s.saved[n-1].addr
	}
	addr := (top - uint64(size)) &^ 15
	save := make([]byte, top-addr)
	if err := ReadMem(s.tid, addr, save); err != nil {
		return 0, fmt.Errorf("scratch below the stack pointer: %w", err)
	}
	s.saved = append(s.saved, scratchSave{addr: addr, data: save})
	return addr, nil
}

// ReadMem reads task memory (e.g. a syscall result in scratch).
func (s *Session) ReadMem(addr uint64, buf []byte) error { return ReadMem(s.tid, addr, buf) }

// WriteMem writes task memory (e.g. a syscall argument in scratch).
func (s *Session) WriteMem(addr uint64, buf []byte) error { return WriteMem(s.tid, addr, buf) }

// ErrNoSyscallInsn is returned when no mapping holds a syscall instruction.
var ErrNoSyscallInsn = errors.New("no syscall instruction found in the task's executable mappings")

type mapping struct {
	start, end uint64
	path       string
}

// FindSyscallInsn returns the address of a `syscall` instruction (0f 05)
// in pid's [vdso], or failing that in another readable executable mapping.
// Decoding starts wherever rip points, so the bytes need not sit on an
// instruction boundary of the surrounding code.
func FindSyscallInsn(pid int) (uint64, error) {
	if at, ok := vdsoSyscallInsn(pid); ok {
		return at, nil
	}
	return scanSyscallInsn(pid)
}

// scanSyscallInsn looks through every readable executable mapping the
// maps list, the vDSO first.
func scanSyscallInsn(pid int) (uint64, error) {
	b, err := sys.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, err
	}
	var vdso, other []mapping
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 || len(f[1]) < 3 || f[1][0] != 'r' || f[1][2] != 'x' {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		m := mapping{start: start, end: end}
		if len(f) >= 6 {
			m.path = f[5]
		}
		switch m.path {
		case "[vdso]":
			vdso = append(vdso, m)
		case "[vsyscall]":
			// Not readable through process_vm_readv.
		default:
			other = append(other, m)
		}
	}
	buf := make([]byte, 64<<10)
	for _, m := range append(vdso, other...) {
		for at := m.start; at < m.end; {
			n := min(uint64(len(buf)), m.end-at)
			if err := ReadMem(pid, at, buf[:n]); err != nil {
				break
			}
			if i := bytes.Index(buf[:n], []byte{0x0f, 0x05}); i >= 0 {
				return at + uint64(i), nil
			}
			// Keep one byte of overlap so a pair split across chunks is found.
			if n <= 1 {
				break
			}
			at += n - 1
		}
	}
	return 0, fmt.Errorf("pid %d: %w", pid, ErrNoSyscallInsn)
}

// vdsoSyscallInsn looks for the instruction in the vDSO where the
// process's auxv says it is, found with one PROCMAP_QUERY: a tenth of the
// cost of reading and parsing the whole maps (0.14 ms per process, twice
// per process and dump). false: look through the maps instead (a kernel
// before 6.11, a vDSO moved or unmapped since exec).
func vdsoSyscallInsn(pid int) (uint64, bool) {
	auxv, err := proc.ReadAuxv(pid)
	if err != nil {
		return 0, false
	}
	base := proc.AuxvValue(auxv, proc.AtSysinfoEhdr)
	if base == 0 {
		return 0, false
	}
	v, err := sys.QueryVma(pid, base, sys.VmaReadable|sys.VmaExecutable)
	if err != nil {
		return 0, false
	}
	buf := make([]byte, min(v.End-v.Start, 64<<10))
	if err := ReadMem(pid, v.Start, buf); err != nil {
		return 0, false
	}
	if i := bytes.Index(buf, []byte{0x0f, 0x05}); i >= 0 {
		return v.Start + uint64(i), true
	}
	return 0, false
}
