package e2e

import (
	"debug/elf"
	"testing"
)

// Every command is a static binary: no program interpreter, no libc. A
// command that linked the C runtime (the net package does as soon as it is
// imported where cgo is available) started ~3-5 ms slower on the PVM guest
// (ld.so, libc and cgo's thread set-up at every start, six to seven starts
// a dump), and could not be copied to a machine with another libc, where
// a migrated image is restored (doc/performance.md, 69).
func TestCommandsStatic(t *testing.T) {
	need(t, commands...)
	for _, c := range commands {
		f, err := elf.Open(bin(c))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s is dynamically linked (it asks for a program interpreter): it imports a package that needs cgo (go list -deps ./cmd/%s | grep -x runtime/cgo)", c, c)
			}
		}
		f.Close()
	}
}
