package crc32c

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"

	"golang.org/x/sys/unix"
)

// TestUpdate: every length up to a few KiB, every alignment of the start
// and initial values, against hash/crc32; folded where the CPU can, and
// without.
func TestUpdate(t *testing.T) {
	if !canFold {
		t.Logf("this CPU has no 512-bit carry-less multiply: hash/crc32 serves every length")
	}
	testUpdate(t)
	if canFold {
		canFold = false
		defer func() { canFold = true }()
		testUpdate(t)
	}
}

func testUpdate(t *testing.T) {
	if c := Checksum([]byte("123456789")); c != 0xe3069283 { // doc/stream-v1.md's check value
		t.Fatalf("check value %#x, want 0xe3069283", c)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 20000)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	for n := 0; n <= 4200; n++ {
		off := rng.IntN(64)
		init := rng.Uint32()
		p := buf[off : off+n]
		if got, want := Update(init, p), crc32.Update(init, table(), p); got != want {
			t.Fatalf("len %d at +%d from %#x: %#x, want %#x", n, off, init, got, want)
		}
	}
	for _, n := range []int{1 << 14, 19999} {
		if got, want := Checksum(buf[:n]), crc32.Checksum(buf[:n], table()); got != want {
			t.Fatalf("len %d: %#x, want %#x", n, got, want)
		}
	}
}

// TestUpdateSplit: a checksum continued piece by piece equals the whole's.
func TestUpdateSplit(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	buf := make([]byte, 1<<16)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	want := crc32.Checksum(buf, table())
	for range 200 {
		var c uint32
		for p := buf; len(p) > 0; {
			n := min(len(p), 1+rng.IntN(3000))
			c, p = Update(c, p[:n]), p[n:]
		}
		if c != want {
			t.Fatalf("%#x, want %#x", c, want)
		}
	}
}

// TestNoOverread: data between two pages nothing may read is summed
// without a fault, whatever its start and end (the folding's loads stay
// inside the data).
func TestNoOverread(t *testing.T) {
	const page = 4096
	m, err := unix.Mmap(-1, 0, 4*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	for _, guard := range [][]byte{m[:page], m[3*page:]} {
		if err := unix.Mprotect(guard, unix.PROT_NONE); err != nil {
			t.Fatal(err)
		}
	}
	data := m[page : 3*page]
	for i := range data {
		data[i] = byte(i * 13)
	}
	for n := 0; n <= len(data); n += 1 + n/64 {
		for _, p := range [][]byte{data[:n], data[len(data)-n:]} {
			if got, want := Checksum(p), crc32.Checksum(p, table()); got != want {
				t.Fatalf("%d bytes: %#x, want %#x", n, got, want)
			}
		}
	}
}

// TestZeros: data of zeros (the folding's products all zero) and of ones.
func TestZeros(t *testing.T) {
	for _, b := range []byte{0, 0xff} {
		p := make([]byte, 5000)
		for i := range p {
			p[i] = b
		}
		for _, n := range []int{256, 257, 511, 512, 4096, 5000} {
			if got, want := Checksum(p[:n]), crc32.Checksum(p[:n], table()); got != want {
				t.Fatalf("%d bytes of %#x: %#x, want %#x", n, b, got, want)
			}
		}
	}
}

func benchmark(b *testing.B, n int, f func([]byte) uint32) {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i * 7)
	}
	b.SetBytes(int64(n))
	for b.Loop() {
		f(p)
	}
}

func BenchmarkChecksum64K(b *testing.B) { benchmark(b, 64<<10, Checksum) }
func BenchmarkChecksum1M(b *testing.B)  { benchmark(b, 1<<20, Checksum) }
func BenchmarkChecksum256M(b *testing.B) {
	benchmark(b, 256<<20, Checksum)
}
func BenchmarkHashCRC32_64K(b *testing.B) {
	benchmark(b, 64<<10, func(p []byte) uint32 { return crc32.Checksum(p, table()) })
}
func BenchmarkHashCRC32_256M(b *testing.B) {
	benchmark(b, 256<<20, func(p []byte) uint32 { return crc32.Checksum(p, table()) })
}

// TestCombine: the checksum of a followed by b, from theirs, is the
// checksum of the whole, for lengths around the powers of two.
func TestCombine(t *testing.T) {
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>12)
	}
	whole := crc32.Checksum(data, table())
	for _, cut := range []int{0, 1, 7, 4095, 4096, 65537, 1 << 20, 3<<20 - 1, 3 << 20} {
		a, b := Checksum(data[:cut]), Checksum(data[cut:])
		if got := Combine(a, b, int64(len(data)-cut)); got != whole {
			t.Errorf("cut at %d: combined %08x, whole %08x", cut, got, whole)
		}
	}
}
