package crc32c

import "golang.org/x/sys/cpu"

// canFold: the CPU has 512-bit carry-less multiplies and the kernel saves
// the 512-bit registers (x/sys/cpu checks both).
var canFold = cpu.X86.HasAVX512F && cpu.X86.HasAVX512VL && cpu.X86.HasAVX512VPCLMULQDQ && cpu.X86.HasPCLMULQDQ && cpu.X86.HasSSE42

// updateFold is Update for len(p) >= foldMin (crc32c_amd64.s).
//
//go:noescape
func updateFold(crc uint32, p []byte) uint32

// updateShort is Update for len(p) < foldMin where the CPU folds (it has
// the crc32 instruction then).
//
//go:noescape
func updateShort(crc uint32, p []byte) uint32
