package proc

import (
	"errors"
	"fmt"
	"math/bits"
	"os"

	"crpipe/lib/sys"
)

// FastVmFlags reads the VmFlags of a process without smaps' page walk,
// through a BPF VMA iterator (sys.VmaIter), which reports the kernel's
// raw vm_flags. Which bit is which flag differs between kernel versions
// and configurations, so a bit is used only once it was seen on a
// mapping of this process whose smaps line agreed (NewFastVmFlags). A
// process with a VMA carrying any other bit is left to smaps (Read says
// so), as is what smaps alone tells: protection keys (their bits are
// never among the checked ones here). Whether pages may be shared it
// tells by the VMA's anon_vma (Read).
type FastVmFlags struct {
	it    *sys.VmaIter
	known uint64 // raw bits seen set, with smaps agreeing
}

// rawVmFlagGuess is where the kernel keeps each flag in vm_flags on
// x86-64 (include/linux/mm.h and fs/proc/task_mmu.c, Linux 6.x). A guess
// only: NewFastVmFlags keeps the bits smaps confirms.
var rawVmFlagGuess = [64]string{
	0: "rd", 1: "wr", 2: "ex", 3: "sh", 4: "mr", 5: "mw", 6: "me", 7: "ms",
	8: "gd", 9: "um", 10: "pf", 12: "uw", 13: "lo", 14: "io", 15: "sr",
	16: "rr", 17: "dc", 18: "de", 19: "lf", 20: "ac", 21: "nr", 22: "ht",
	23: "sf", 24: "ar", 25: "wf", 26: "dd", 27: "sd", 28: "mm", 29: "hg",
	30: "nh", 31: "mg", 37: "ss", 40: "dp", 41: "ui", 42: "sl",
}

// ErrFlagsDisagree: a probe's smaps line and its raw bits disagree.
var ErrFlagsDisagree = errors.New("the VMA iterator's flags disagree with smaps")

// NewFastVmFlags loads the iterator and checks its bits on probe
// mappings made in this process (sys.MakeFlagProbes) and on its own.
// An error means smaps it is: no CAP_BPF, no BTF, or a kernel whose
// bits are not where rawVmFlagGuess says.
func NewFastVmFlags() (*FastVmFlags, error) {
	it, err := sys.NewVmaIter()
	if err != nil {
		return nil, err
	}
	f := &FastVmFlags{it: it}
	release := sys.MakeFlagProbes()
	err = f.check()
	release()
	if err != nil {
		it.Close()
		return nil, err
	}
	return f, nil
}

func (f *FastVmFlags) check() error {
	self := os.Getpid()
	raw, err := f.it.Read(self)
	if err != nil {
		return err
	}
	shown, err := ReadVmFlags(self)
	if err != nil {
		return err
	}
	// The Go runtime may map memory between the two reads: compare the
	// VMAs both saw.
	byStart := make(map[uint64]VmaFlags, len(shown))
	for _, s := range shown {
		byStart[s.Start] = s
	}
	var seen uint64
	compared := 0
	for _, r := range raw {
		s, ok := byStart[r.Start]
		if !ok {
			continue
		}
		compared++
		if s.ProtectionKey != 0 {
			return fmt.Errorf("%w: a VMA of this process has protection key %d", ErrFlagsDisagree, s.ProtectionKey)
		}
		if got := guessFlags(r.Flags); got != s.VmFlags {
			return fmt.Errorf("%w: %#x..: raw %#x reads as %q, smaps says %q", ErrFlagsDisagree, r.Start, r.Flags, got, s.VmFlags)
		}
		seen |= r.Flags
	}
	if compared == 0 {
		return fmt.Errorf("%w: no VMA of this process to compare", ErrFlagsDisagree)
	}
	f.known = seen
	return nil
}

// guessFlags reads raw vm_flags with rawVmFlagGuess.
func guessFlags(raw uint64) VmFlags {
	var f VmFlags
	for raw != 0 {
		b := bits.TrailingZeros64(raw)
		raw &^= 1 << b
		if name := rawVmFlagGuess[b]; name != "" {
			f |= vmFlag(name)
		}
	}
	return f
}

// Read returns pid's VMAs as ReadVmFlags would, with MayShare set on
// every one but those whose anonymous pages no other VMA can map
// (sys.RawVma.Alone), private and not merged by KSM: smaps would count
// its file pages (a library's) shared, but the dump reads only the
// anonymous ones of a private mapping. ok is false when some VMA carries
// a bit not checked, or when the iterator failed: then read smaps.
func (f *FastVmFlags) Read(pid int) (flags []VmaFlags, ok bool) {
	raw, err := f.it.Read(pid)
	if err != nil || len(raw) == 0 {
		return nil, false
	}
	out := make([]VmaFlags, len(raw))
	mayShare := vmFlag("sh") | vmFlag("mg")
	for i, r := range raw {
		if r.Flags&^f.known != 0 {
			return nil, false
		}
		fl := guessFlags(r.Flags)
		out[i] = VmaFlags{Start: r.Start, VmFlags: fl, MayShare: !r.Alone || fl&mayShare != 0}
	}
	return out, true
}

// Close unloads the iterator.
func (f *FastVmFlags) Close() error { return f.it.Close() }
