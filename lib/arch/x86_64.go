// Package arch holds what crpipe knows about x86_64 CPU state: the
// conversion between the kernel's user_regs_struct and the image's
// pb.X86Regs, and the layout of the xsave area the kernel returns for
// NT_X86_XSTATE. Dump and restore share it; it knows no stream.
package arch

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
)

// RegsToPB converts the registers ptrace returned into the image record.
func RegsToPB(r *unix.PtraceRegs) *pb.X86Regs {
	return &pb.X86Regs{
		R15: r.R15, R14: r.R14, R13: r.R13, R12: r.R12,
		Rbp: r.Rbp, Rbx: r.Rbx, R11: r.R11, R10: r.R10,
		R9: r.R9, R8: r.R8, Rax: r.Rax, Rcx: r.Rcx,
		Rdx: r.Rdx, Rsi: r.Rsi, Rdi: r.Rdi, OrigRax: r.Orig_rax,
		Rip: r.Rip, Cs: r.Cs, Eflags: r.Eflags, Rsp: r.Rsp,
		Ss: r.Ss, FsBase: r.Fs_base, GsBase: r.Gs_base,
		Ds: r.Ds, Es: r.Es, Fs: r.Fs, Gs: r.Gs,
	}
}

// RegsFromPB converts an image record back into ptrace registers. A nil
// record is an error, not zero registers.
func RegsFromPB(p *pb.X86Regs) (unix.PtraceRegs, error) {
	if p == nil {
		return unix.PtraceRegs{}, errors.New("thread core has no registers")
	}
	return unix.PtraceRegs{
		R15: p.R15, R14: p.R14, R13: p.R13, R12: p.R12,
		Rbp: p.Rbp, Rbx: p.Rbx, R11: p.R11, R10: p.R10,
		R9: p.R9, R8: p.R8, Rax: p.Rax, Rcx: p.Rcx,
		Rdx: p.Rdx, Rsi: p.Rsi, Rdi: p.Rdi, Orig_rax: p.OrigRax,
		Rip: p.Rip, Cs: p.Cs, Eflags: p.Eflags, Rsp: p.Rsp,
		Ss: p.Ss, Fs_base: p.FsBase, Gs_base: p.GsBase,
		Ds: p.Ds, Es: p.Es, Fs: p.Fs, Gs: p.Gs,
	}, nil
}

// Layout of the xsave area (Intel SDM vol. 1, 13.4) and of the software
// bytes the kernel stores in the unused tail of the legacy area (struct
// _fpx_sw_bytes in arch/x86/include/uapi/asm/sigcontext.h).
const (
	// XsaveLegacySize is the fxsave area (x87, SSE).
	XsaveLegacySize = 512
	// XsaveHeaderOffset is where xstate_bv and xcomp_bv live.
	XsaveHeaderOffset = 512
	// XsaveMinSize is the legacy area plus the 64-byte xsave header.
	XsaveMinSize = 576
	// XsaveBufSize is large enough for any xsave area the kernel reports
	// today (AMX tile data included); PTRACE_GETREGSET shortens the iovec to
	// the real size, so callers read into a buffer this big and keep the
	// prefix the kernel filled.
	XsaveBufSize = 16 << 10

	swBytesOffset  = 464
	fpXstateMagic1 = 0x46505853 // "SXPF"
)

// XsaveInfo is what the kernel says about an xsave area it produced.
type XsaveInfo struct {
	// Features is the set of user xfeatures the kernel enabled (XCR0 as the
	// kernel exposes it to user space).
	Features uint64
	// Size is the xsave area size for Features (xstate_size).
	Size uint32
	// ExtendedSize is the signal-frame size including the trailing magic.
	ExtendedSize uint32
	// XstateBV is the header's bitmap of components holding non-init state.
	XstateBV uint64
}

// ParseXsave reads the software bytes and header of an NT_X86_XSTATE area.
func ParseXsave(b []byte) (XsaveInfo, error) {
	var x XsaveInfo
	if len(b) < XsaveMinSize {
		return x, fmt.Errorf("xsave area of %d bytes is shorter than %d", len(b), XsaveMinSize)
	}
	le := binary.LittleEndian
	if m := le.Uint32(b[swBytesOffset:]); m != fpXstateMagic1 {
		return x, fmt.Errorf("xsave area has no kernel software bytes (magic %#x)", m)
	}
	x.ExtendedSize = le.Uint32(b[swBytesOffset+4:])
	x.Features = le.Uint64(b[swBytesOffset+8:])
	x.Size = le.Uint32(b[swBytesOffset+16:])
	x.XstateBV = le.Uint64(b[XsaveHeaderOffset:])
	if int(x.Size) != len(b) {
		return x, fmt.Errorf("xsave area is %d bytes but says %d", len(b), x.Size)
	}
	return x, nil
}

// XsaveCompatible reports whether an xsave area dumped with features img can
// be loaded on a CPU whose kernel enables host: every component the dumped
// thread had in use must exist here.
func XsaveCompatible(dumped XsaveInfo, host uint64) error {
	if missing := dumped.XstateBV &^ host; missing != 0 {
		return fmt.Errorf("xsave components %#x in use by the dumped thread are not enabled here (XCR0 %#x)", missing, host)
	}
	return nil
}
