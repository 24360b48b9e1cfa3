// Package pie embeds the restorer blob (restorer.elf, built from
// restorer.c by `make pie` and committed so that `go build` needs no C
// toolchain) and tells where its entry points are, and cr-pages' page
// lender (lend.bin, from lend.c, the same way).
package pie

import (
	"bytes"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
)

//go:embed restorer.elf
var restorer []byte

//go:embed lend.bin
var lend []byte

// Lend returns the page lender's code (pie/src/lend.c), a flat position
// independent binary whose entry point is its first byte.
func Lend() []byte { return lend }

// Restorer returns the restorer ELF image.
func Restorer() []byte { return restorer }

// Layout is what the coordinator needs to know of the blob.
type Layout struct {
	ImageSize   uint64 // bytes from the ELF header to _end: what OP_RELOCATE copies
	SyscallInsn uint64 // offset of the labelled syscall instruction
}

var (
	layoutOnce sync.Once
	layout     Layout
	layoutErr  error
)

// RestorerLayout reads the blob's symbols once.
func RestorerLayout() (Layout, error) {
	layoutOnce.Do(func() { layout, layoutErr = readLayout(restorer) })
	return layout, layoutErr
}

// readLayout finds the two symbols in the blob's symbol table. The ELF is
// read by hand, not with debug/elf: that package (with debug/dwarf and a
// zstd decoder it brings) made every command larger and took ~1 ms of
// cr-restore's start on the PVM guest to parse 3.6 KiB (doc/performance.md,
// 81). TestLayoutAgreesWithDebugElf checks this reading against debug/elf's.
func readLayout(blob []byte) (Layout, error) {
	syms, err := elfSymbols(blob)
	if err != nil {
		return Layout{}, fmt.Errorf("restorer blob: %w", err)
	}
	end, ok1 := syms["_end"]
	insn, ok2 := syms["crp_syscall_insn"]
	if !ok1 || !ok2 {
		return Layout{}, fmt.Errorf("restorer blob: symbols _end and crp_syscall_insn not found")
	}
	return Layout{ImageSize: end, SyscallInsn: insn}, nil
}

// ELF64 little-endian, as the Makefile builds it for x86-64.
const (
	elfHeaderSize  = 64
	elfSectionSize = 64
	elfSymbolSize  = 24
	elfSymtab      = 2 // SHT_SYMTAB
)

var errNotElf = errors.New("not a 64-bit little-endian ELF file")

// elfSymbols returns the value of each named symbol of the blob's symbol
// table, refusing offsets outside the blob.
func elfSymbols(b []byte) (map[string]uint64, error) {
	if len(b) < elfHeaderSize || string(b[:4]) != "\x7fELF" || b[4] != 2 || b[5] != 1 {
		return nil, errNotElf
	}
	le := binary.LittleEndian
	shoff, shentsize, shnum := le.Uint64(b[0x28:]), uint64(le.Uint16(b[0x3a:])), uint64(le.Uint16(b[0x3c:]))
	if shentsize != elfSectionSize || shoff > uint64(len(b)) || shnum > (uint64(len(b))-shoff)/elfSectionSize {
		return nil, errors.New("section headers outside the file")
	}
	section := func(i uint64) (typ uint32, off, size, link uint64) {
		h := b[shoff+i*elfSectionSize:]
		return le.Uint32(h[4:]), le.Uint64(h[0x18:]), le.Uint64(h[0x20:]), uint64(le.Uint32(h[0x28:]))
	}
	within := func(off, size uint64) bool { return off <= uint64(len(b)) && size <= uint64(len(b))-off }
	for i := range shnum {
		typ, off, size, link := section(i)
		if typ != elfSymtab {
			continue
		}
		if link >= shnum || !within(off, size) {
			return nil, errors.New("symbol table outside the file")
		}
		_, stroff, strsize, _ := section(link)
		if !within(stroff, strsize) {
			return nil, errors.New("string table outside the file")
		}
		strs := b[stroff : stroff+strsize]
		syms := map[string]uint64{}
		for s := off; s+elfSymbolSize <= off+size; s += elfSymbolSize {
			name := uint64(le.Uint32(b[s:]))
			if name >= uint64(len(strs)) {
				return nil, errors.New("symbol name outside the string table")
			}
			n := strs[name:]
			if z := bytes.IndexByte(n, 0); z >= 0 {
				n = n[:z]
			}
			syms[string(n)] = le.Uint64(b[s+8:])
		}
		return syms, nil
	}
	return nil, errors.New("no symbol table")
}
