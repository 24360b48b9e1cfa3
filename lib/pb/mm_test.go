package pb

import (
	"bytes"
	"testing"

	"crpipe/lib/pb/protomsg"
)

func TestMmVmasField(t *testing.T) {
	if n := (&protomsg.Mm{}).ProtoReflect().Descriptor().Fields().ByName("vmas").Number(); int32(n) != int32(MmVmasField) {
		t.Fatalf("Mm.vmas is field %d, MmVmasField says %d", n, MmVmasField)
	}
}

// MarshalMm gives the bytes of Marshal (those of proto.Marshal:
// TestCodecAgreesWithProto), and UnmarshalMm gives the record back, its
// VMAs one by one.
func TestMarshalMmRoundTrip(t *testing.T) {
	vmas := []*Vma{
		{Start: 0x1000, End: 0x3000, Prot: 5, Flags: 2, Path: "/usr/bin/x", Kind: uint32(VmaKind_VMA_FILE_PRIVATE), Dev: 0x801, Inode: 42, FileSize: 9, MtimeNsec: 7, Pgoff: 0x2000, HasPages: true},
		{Start: 0x10000, End: 0x20000, Prot: 3, Flags: 0x22, Path: "[heap]", Advice: AdviceHugepage, Huge: true, HasPages: true,
			Inherited: []*PageRange{{Start: 0x10000, End: 0x12000}}},
		{Start: 0x40000, End: 0x41000, Prot: 1, Flags: 1, Kind: uint32(VmaKind_VMA_SYSV_SHM), Sysv: &SysvShm{Id: 3, Key: 1, Size: 4096}},
		{Start: 0x50000, End: 0x51000, Prot: 1, Flags: 1, Kind: uint32(VmaKind_VMA_SHARED_ANON), Memfd: &MemfdState{Name: "m", Size: 4096}},
	}
	mm := &Mm{Pid: 4242, StartCode: 0x1000, Brk: 0x20000, Auxv: []byte{1, 2, 3}, Exe: "/usr/bin/x", PagesTotal: 99}
	got, err := MarshalMm(mm, len(vmas), func(i int, v *Vma) { *v = *vmas[i] })
	if err != nil {
		t.Fatal(err)
	}
	whole := *mm
	whole.Vmas = vmas
	want, err := Marshal(&whole)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("MarshalMm gave %d bytes, Marshal %d: they differ", len(got), len(want))
	}
	var back Mm
	var seen []*Vma
	if err := UnmarshalMm(got, &back, func(v *Vma) error { c := *v; seen = append(seen, &c); return nil }); err != nil {
		t.Fatal(err)
	}
	back.Vmas = seen
	if !Equal(&back, &whole) {
		t.Fatalf("decoded %+v, want %+v", &back, &whole)
	}
	for _, bad := range [][]byte{got[:len(got)-1], append([]byte{0x12, 0x7f}, got...)} {
		if err := UnmarshalMm(bad, &back, func(*Vma) error { return nil }); err == nil {
			t.Errorf("a damaged record (%d bytes) decoded", len(bad))
		}
	}
}
