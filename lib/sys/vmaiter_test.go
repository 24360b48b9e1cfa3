package sys

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"testing"
)

// TestVmaIter: the iterator lists this process's mappings as
// /proc/self/maps does (but the gate VMA, [vsyscall], which is in no
// process's address space), with the read, write, exec and shared bits
// of vm_flags as maps shows them.
func TestVmaIter(t *testing.T) {
	it, err := NewVmaIter()
	if errors.Is(err, ErrNoVmaIter) {
		t.Skipf("no BPF VMA iterator on this machine: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	got, err := it.Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	byStart := map[uint64]RawVma{}
	for i, v := range got {
		if i > 0 && v.Start < got[i-1].End {
			t.Errorf("VMA %d at %#x overlaps or precedes the one before (%#x-%#x)", i, v.Start, got[i-1].Start, got[i-1].End)
		}
		byStart[v.Start] = v
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		var start, end uint64
		var perms string
		if _, err := fmt.Sscanf(sc.Text(), "%x-%x %s", &start, &end, &perms); err != nil {
			t.Fatalf("maps line %q: %v", sc.Text(), err)
		}
		if start == 0xffffffffff600000 {
			continue
		}
		n++
		v, ok := byStart[start]
		if !ok {
			// The Go runtime may have mapped it after the iterator ran.
			t.Logf("%#x-%#x %s: not listed by the iterator", start, end, perms)
			continue
		}
		want := uint64(0)
		for i, c := range []byte{'r', 'w', 'x', 's'} {
			if perms[i] == c {
				want |= 1 << i
			}
		}
		if v.End != end || v.Flags&0xf != want {
			t.Errorf("%#x-%#x %s: the iterator says %#x-%#x flags %#x", start, end, perms, v.Start, v.End, v.Flags)
		}
	}
	if n < len(got)/2 || len(got) == 0 {
		t.Errorf("the iterator lists %d VMAs, maps %d", len(got), n)
	}
}

// TestVmaIterPlain: the program without the part that follows pointers
// (loaded where the verifier refuses that part) lists the VMAs and calls
// none alone.
func TestVmaIterPlain(t *testing.T) {
	l, err := readVmaLayout()
	if err != nil {
		t.Skipf("no kernel BTF: %v", err)
	}
	fd, err := loadVmaIter(l, false)
	if err != nil {
		t.Fatal(err)
	}
	it := &VmaIter{prog: fd}
	defer it.Close()
	got, err := it.Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < 5 {
		t.Fatalf("%d VMAs listed", len(got))
	}
	for _, v := range got {
		if v.Alone || v.End <= v.Start {
			t.Errorf("%#x-%#x flags %#x alone %v", v.Start, v.End, v.Flags, v.Alone)
		}
	}
}

// TestParseBTFDamaged: a BTF blob cut short or with sections out of bounds
// is refused with an error, never a panic (the kernel's own is whole, and
// lookups parse only as far as they need).
func TestParseBTFDamaged(t *testing.T) {
	raw, release, err := readBTF()
	if err != nil {
		t.Skipf("no kernel BTF: %v", err)
	}
	defer release()
	whole, err := parseBTF(raw)
	if err == nil {
		err = whole.parseAll()
	}
	if err != nil {
		t.Fatalf("the kernel's own BTF: %v", err)
	}
	le := binary.LittleEndian
	hdr := le.Uint32(raw[4:])
	typeEnd := int(hdr + le.Uint32(raw[8:]) + le.Uint32(raw[12:]))
	cases := map[string][]byte{
		"empty":             nil,
		"header only":       raw[:24],
		"types cut":         raw[:typeEnd/2],
		"wrong magic":       append([]byte{0, 0}, raw[2:64]...),
		"type length large": func() []byte { b := append([]byte(nil), raw[:4096]...); le.PutUint32(b[12:], 1<<31); return b }(),
		"type cut mid-way": func() []byte {
			at, _ := whole.offset(10)
			cut := uint32(at) + 5 // inside the tenth type's header
			b := append([]byte(nil), raw[:hdr+cut]...)
			le.PutUint32(b[8:], 0)
			le.PutUint32(b[12:], cut)
			le.PutUint32(b[16:], 0)
			le.PutUint32(b[20:], 0)
			return b
		}(),
	}
	for name, raw := range cases {
		b, err := parseBTF(raw)
		if err == nil {
			err = b.parseAll()
		}
		if err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func (b *btf) parseAll() error {
	for {
		if _, ok := b.parseNext(); !ok {
			return b.err
		}
	}
}

// BenchmarkVmaLayout: finding vm_area_struct's layout in the kernel's BTF,
// done once per dump that sets the iterator up (4.3 ms before it stopped
// indexing every type and reading every name, 1.8 after, on the PVM guest).
func BenchmarkVmaLayout(b *testing.B) {
	if _, release, err := readBTF(); err != nil {
		b.Skipf("no kernel BTF: %v", err)
	} else {
		release()
	}
	for b.Loop() {
		if _, err := readVmaLayout(); err != nil {
			b.Fatal(err)
		}
	}
}
