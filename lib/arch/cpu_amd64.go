package arch

func xgetbv(index uint32) (eax, edx uint32)
func cpuid(leaf, sub uint32) (eax, ebx, ecx, edx uint32)

// HasXsave reports whether the CPU has XSAVE and the kernel enabled it
// (CPUID.1:ECX.OSXSAVE).
func HasXsave() bool {
	_, _, ecx, _ := cpuid(1, 0)
	return ecx&(1<<27) != 0
}

// HostXCR0 returns this machine's XCR0: the state components the kernel
// enabled. An image whose threads use components outside it cannot be
// restored here (XsaveCompatible). Zero without XSAVE.
func HostXCR0() uint64 {
	if !HasXsave() {
		return 0
	}
	lo, hi := xgetbv(0)
	return uint64(hi)<<32 | uint64(lo)
}

// HostXsaveSize returns the size of a standard-format xsave area for every
// component enabled in XCR0 (CPUID.(EAX=0DH,ECX=0):EBX): the size the
// kernel reports for NT_X86_XSTATE here. Zero without XSAVE.
func HostXsaveSize() int {
	if !HasXsave() {
		return 0
	}
	_, ebx, _, _ := cpuid(0xd, 0)
	return int(ebx)
}
