// Package pie embeds the restorer blob (restorer.elf, built from
// restorer.c by `make pie` and committed so that `go build` needs no C
// toolchain) and tells where its entry points are, and cr-pages' page
// lender (lend.bin, from lend.c, the same way).
package pie

import (
	"bytes"
	"debug/elf"
	_ "embed"
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

func readLayout(blob []byte) (Layout, error) {
	f, err := elf.NewFile(bytes.NewReader(blob))
	if err != nil {
		return Layout{}, fmt.Errorf("restorer blob: %w", err)
	}
	syms, err := f.Symbols()
	if err != nil {
		return Layout{}, fmt.Errorf("restorer blob: %w", err)
	}
	var l Layout
	found := 0
	for _, s := range syms {
		switch s.Name {
		case "_end":
			l.ImageSize = s.Value
			found++
		case "crp_syscall_insn":
			l.SyscallInsn = s.Value
			found++
		}
	}
	if found != 2 {
		return Layout{}, fmt.Errorf("restorer blob: symbols _end and crp_syscall_insn not found")
	}
	return l, nil
}
