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

// The code and stack segments of a 64-bit task in user space (the
// kernel's __USER_CS and __USER_DS). A dump takes only such tasks; other
// values are a 32-bit task or a segment of the task's own LDT, neither of
// which is dumped, and a thread given them dies on its way back to user
// space.
const (
	UserCS = 0x33
	UserSS = 0x2b
)

// CheckSegments refuses registers whose code or stack segment is not a
// 64-bit task's.
func CheckSegments(cs, ss uint64) error {
	if cs != UserCS {
		return fmt.Errorf("code segment %#x: only 64-bit tasks (%#x) are supported", cs, UserCS)
	}
	if ss != UserSS {
		return fmt.Errorf("stack segment %#x: only the 64-bit user stack segment (%#x) is supported, not one of the task's own", ss, UserSS)
	}
	return nil
}

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

// Layout of the xsave area (Intel SDM vol. 1, 13.4) as PTRACE_GETREGSET
// NT_X86_XSTATE returns it: the kernel stores the XCR0 it exposes to user
// space in the first word of the unused tail of the legacy area
// (xstate_fx_sw_bytes, USER_XSTATE_XCR0_WORD). Signal frames use that tail
// differently (struct _fpx_sw_bytes); this layout is the ptrace one.
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

	xcr0Offset = 464
)

// XsaveInfo is what an NT_X86_XSTATE area says about itself.
type XsaveInfo struct {
	// XCR0 is the set of user xfeatures the dumping kernel enabled.
	XCR0 uint64
	// Size is the length of the area.
	Size int
	// XstateBV is the header's bitmap of components holding non-init state.
	XstateBV uint64
}

// ParseXsave reads the XCR0 word and header of an NT_X86_XSTATE area.
func ParseXsave(b []byte) (XsaveInfo, error) {
	var x XsaveInfo
	if len(b) < XsaveMinSize {
		return x, fmt.Errorf("xsave area of %d bytes is shorter than %d", len(b), XsaveMinSize)
	}
	le := binary.LittleEndian
	x.XCR0 = le.Uint64(b[xcr0Offset:])
	x.Size = len(b)
	x.XstateBV = le.Uint64(b[XsaveHeaderOffset:])
	if x.XCR0&3 != 3 {
		return x, fmt.Errorf("xsave area has XCR0 %#x without x87 and SSE: not an NT_X86_XSTATE area", x.XCR0)
	}
	if x.XstateBV&^x.XCR0 != 0 {
		return x, fmt.Errorf("xsave area has state %#x outside its XCR0 %#x", x.XstateBV, x.XCR0)
	}
	return x, nil
}

// XsaveCompatible reports whether an xsave area dumped as x can be loaded
// where the kernel enables host (that kernel's XCR0): every component the
// dumped thread had in use must exist here.
func XsaveCompatible(x XsaveInfo, host uint64) error {
	if missing := x.XstateBV &^ host; missing != 0 {
		return fmt.Errorf("xsave components %#x in use by the dumped thread are not enabled here (XCR0 %#x)", missing, host)
	}
	return nil
}
