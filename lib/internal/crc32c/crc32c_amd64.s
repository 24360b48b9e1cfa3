#include "textflag.h"

// FOLD(k, a, t, next): a = a moved forward by k (crc32c.go), XOR next.
#define FOLD(k, a, t, next) \
	VPCLMULQDQ $0x00, k, a, t; \
	VPCLMULQDQ $0x11, k, a, a; \
	VPTERNLOGQ $0x96, next, t, a

// FOLDINTO(k, a, t, u, into): into ^= a moved forward by k.
#define FOLDINTO(k, a, t, u, into) \
	VPCLMULQDQ $0x00, k, a, t; \
	VPCLMULQDQ $0x11, k, a, u; \
	VPTERNLOGQ $0x96, u, t, into

// func updateFold(crc uint32, p []byte) uint32
// len(p) >= 256. The method: crc32c.go.
TEXT ·updateFold(SB), NOSPLIT, $0-36
	MOVL crc+0(FP), AX
	NOTL AX
	MOVQ p_base+8(FP), SI
	MOVQ p_len+16(FP), CX

	// The first 256 bytes, the initial crc XORed into the first 32 bits.
	VMOVDQU64 0(SI), Z0
	VMOVDQU64 64(SI), Z1
	VMOVDQU64 128(SI), Z2
	VMOVDQU64 192(SI), Z3
	VMOVD AX, X4
	VPXORQ Z4, Z0, Z0
	ADDQ $256, SI
	SUBQ $256, CX
	VBROADCASTI32X4 ·foldConsts+0(SB), Z8

loop256:
	CMPQ CX, $256
	JB   fold64
	FOLD(Z8, Z0, Z4, 0(SI))
	FOLD(Z8, Z1, Z5, 64(SI))
	FOLD(Z8, Z2, Z6, 128(SI))
	FOLD(Z8, Z3, Z7, 192(SI))
	ADDQ $256, SI
	SUBQ $256, CX
	JMP  loop256

fold64:
	// Each accumulator into the next, 64 bytes on.
	VBROADCASTI32X4 ·foldConsts+16(SB), Z8
	FOLDINTO(Z8, Z0, Z4, Z5, Z1)
	FOLDINTO(Z8, Z1, Z4, Z5, Z2)
	FOLDINTO(Z8, Z2, Z4, Z5, Z3)

	// The four lanes of Z3 into its last.
	VMOVDQU64 ·foldConsts+32(SB), Z8
	VPCLMULQDQ $0x00, Z8, Z3, Z4
	VPCLMULQDQ $0x11, Z8, Z3, Z5
	VPXORQ Z5, Z4, Z4
	VEXTRACTI32X4 $3, Z3, X0
	VEXTRACTI32X4 $1, Z4, X1
	VEXTRACTI32X4 $2, Z4, X2
	VPTERNLOGQ $0x96, X2, X1, X0
	VPXORQ X4, X0, X0
	VMOVDQU64 ·foldConsts+96(SB), X8

loop16:
	CMPQ CX, $16
	JB   last
	FOLD(X8, X0, X4, 0(SI))
	ADDQ $16, SI
	SUBQ $16, CX
	JMP  loop16

last:
	// The 128 bits left, then the last bytes, through crc32 from zero.
	VMOVQ X0, DX
	VPEXTRQ $1, X0, BX
	XORL AX, AX
	CRC32Q DX, AX
	CRC32Q BX, AX

loop1:
	TESTQ CX, CX
	JZ    done
	CRC32B (SI), AX
	INCQ  SI
	DECQ  CX
	JMP   loop1

done:
	VZEROUPPER
	NOTL AX
	MOVL AX, ret+32(FP)
	RET

// func updateShort(crc uint32, p []byte) uint32
// The crc32 instruction, 8 bytes at a time, then the last bytes one by one.
TEXT ·updateShort(SB), NOSPLIT, $0-36
	MOVL crc+0(FP), AX
	NOTL AX
	MOVQ p_base+8(FP), SI
	MOVQ p_len+16(FP), CX

short8:
	CMPQ CX, $8
	JB   short1
	CRC32Q (SI), AX
	ADDQ $8, SI
	SUBQ $8, CX
	JMP  short8

short1:
	TESTQ CX, CX
	JZ    shortdone
	CRC32B (SI), AX
	INCQ  SI
	DECQ  CX
	JMP   short1

shortdone:
	NOTL AX
	MOVL AX, ret+32(FP)
	RET
