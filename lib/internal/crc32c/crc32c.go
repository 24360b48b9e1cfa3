// Package crc32c computes CRC-32C (Castagnoli), the image stream's frame
// checksum, as hash/crc32 does, faster where the CPU can fold the data
// with carry-less multiplies on 512-bit registers (VPCLMULQDQ): 54 GB/s
// against hash/crc32's 25 in the cache, 23 against 6.8 from memory, on
// the machines measured (doc/performance.md, 61).
package crc32c

import (
	"hash/crc32"
	"sync"
)

// table is hash/crc32's, made at its first use: making it sets up
// hash/crc32's tables for three streams of the crc32 instruction (~0.2 ms
// of every command's start on the PVM guest), which only a CPU that
// cannot fold needs (doc/performance.md, 69).
var table = sync.OnceValue(func() *crc32.Table { return crc32.MakeTable(crc32.Castagnoli) })

// foldMin: shorter data goes through the crc32 instruction a word at a
// time (the folding loads 256 bytes before its first step).
const foldMin = 256

// Update returns the CRC-32C of p continued from crc, like
// crc32.Update(crc, crc32.MakeTable(crc32.Castagnoli), p).
func Update(crc uint32, p []byte) uint32 {
	switch {
	case !canFold:
		return crc32.Update(crc, table(), p)
	case len(p) >= foldMin:
		return updateFold(crc, p)
	default:
		return updateShort(crc, p)
	}
}

// Checksum is the CRC-32C of p.
func Checksum(p []byte) uint32 { return Update(0, p) }

// The folding (crc32c_amd64.s) keeps 256 bytes in four 512-bit
// accumulators, each 128-bit lane a polynomial in the bit-reflected order
// of the data (the first bit the highest power). Moving a lane forward by
// d bits multiplies it by x^d modulo the CRC polynomial P: its first 64
// bits by x^(64+d-1) mod P and its last 64 by x^(d-1) mod P (the -1
// because a carry-less multiply of two reflected 64-bit values leaves the
// product one bit further on), and the lane d bits on is XORed in. What
// is left at the end, 128 bits and any bytes after them, goes through the
// crc32 instruction from zero; the initial crc is XORed into the first 32
// bits of the data, which is what a CRC's initial value amounts to.

// reflectedP is P, bit-reflected (as hash/crc32 and the crc32 instruction
// use it: x^0 is the top bit).
const reflectedP = 0x82f63b78

// xPowMod is x^n mod P, bit-reflected (bit 31-i is the coefficient of x^i).
func xPowMod(n uint) uint32 {
	r := uint32(1) << 31 // x^0
	for ; n > 0; n-- {
		if r&1 != 0 {
			r = r>>1 ^ reflectedP
		} else {
			r >>= 1
		}
	}
	return r
}

// foldConst is the pair of multipliers that moves a 128-bit lane d bits
// forward, as the assembly reads them: each in the high half of its
// 64-bit word, where a reflected 64-bit operand keeps x^31..x^0.
func foldConst(d uint) [2]uint64 {
	return [2]uint64{uint64(xPowMod(64+d-1)) << 32, uint64(xPowMod(d-1)) << 32}
}

// foldConsts, read by the assembly: [0:2] by 256 bytes (the main loop),
// [2:4] by 64 (one accumulator into the next), [4:12] the four lanes of
// the last accumulator into its last (by 48, 32, 16 bytes, and nothing),
// [12:14] by 16 (the last bytes).
var foldConsts [14]uint64

func init() {
	for i, d := range []uint{256 * 8, 64 * 8, 48 * 8, 32 * 8, 16 * 8} {
		c := foldConst(d)
		copy(foldConsts[2*i:], c[:])
	}
	copy(foldConsts[12:], foldConsts[8:10]) // by 16 bytes, as lane 2's
}

// Combine returns the CRC-32C of a‖b from the CRC-32C of a, that of b,
// and b's length: a's checksum is carried over len(b) zero bits (a
// multiplication by x^(8·len) modulo the polynomial) and added to b's.
func Combine(a, b uint32, n int64) uint32 {
	return gfMul(x8nMod(n), a) ^ b
}

// gfMul multiplies a and b modulo the polynomial, both bit-reversed
// (x^0 is the top bit).
func gfMul(a, b uint32) uint32 {
	var p uint32
	for m := uint32(1) << 31; m != 0; m >>= 1 {
		if a&m != 0 {
			p ^= b
		}
		if b&1 != 0 {
			b = b>>1 ^ reflectedP
		} else {
			b >>= 1
		}
	}
	return p
}

// x8nMod is x^(8n) modulo the polynomial: the product of x^(8·2^k) for
// the bits k of n, from a table (a frame of one page is one entry; by
// squaring each time, 60,000 small frames spent 5% of cr-pages here).
func x8nMod(n int64) uint32 {
	p := uint32(1) << 31 // x^0
	for k := 0; n > 0; k, n = k+1, n>>1 {
		if n&1 != 0 {
			p = gfMul(x8Pow2[k], p)
		}
	}
	return p
}

// x8Pow2[k] is x^(8·2^k) modulo the polynomial.
var x8Pow2 = func() (t [63]uint32) {
	t[0] = 1 << 23 // x^8
	for k := 1; k < len(t); k++ {
		t[k] = gfMul(t[k-1], t[k-1])
	}
	return t
}()

// FoldConstants are the constants of the fold (foldConsts) for code
// elsewhere that folds the same way, the page lender in a dumped process
// (pie/src/lend.c); ok is false where this CPU cannot fold.
func FoldConstants() (c [14]uint64, ok bool) { return foldConsts, canFold }
