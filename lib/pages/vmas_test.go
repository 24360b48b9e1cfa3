package pages

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/proc"
)

// encodeMm gives the bytes proto.Marshal gives for the Mm record with
// every Vma record in it, for VMAs of every kind.
func TestEncodeMmAsMarshal(t *testing.T) {
	file := &unix.Stat_t{Dev: 0x801, Ino: 42, Size: 12345, Mtim: unix.Timespec{Sec: 7, Nsec: 9}}
	vmas := []vma{
		{m: &proc.Mapping{Start: 0x1000, End: 0x3000, Read: true, Exec: true, Path: "/usr/bin/x", Offset: 0x2000, Major: 8, Minor: 1, Inode: 42},
			obj: &vmaObject{file: file}, kind: pb.VmaKind_VMA_FILE_PRIVATE, flags: unix.MAP_PRIVATE, scan: scanFilePrivate, hasPages: true},
		{m: &proc.Mapping{Start: 0x3000, End: 0x4000, Read: true, Shared: true, Path: "/tmp/gone", Deleted: true},
			obj: &vmaObject{file: file}, kind: pb.VmaKind_VMA_FILE_SHARED, flags: unix.MAP_SHARED},
		{m: &proc.Mapping{Start: 0x10000, End: 0x20000, Read: true, Write: true, Path: "[heap]"},
			kind: pb.VmaKind_VMA_ANON, flags: unix.MAP_PRIVATE | unix.MAP_ANONYMOUS, advice: pb.AdviceFlags[0].Bit, hasPages: true, huge: true},
		{m: &proc.Mapping{Start: 0x20000, End: 0x30000, Read: true, Write: true, Shared: true, Path: "/dev/zero", Deleted: true, Offset: 0x1000, Major: 0, Minor: 1, Inode: 77},
			kind: pb.VmaKind_VMA_SHARED_ANON, flags: unix.MAP_SHARED | unix.MAP_ANONYMOUS, hasPages: true},
		{m: &proc.Mapping{Start: 0x30000, End: 0x31000, Read: true, Shared: true, Path: "/memfd:x", Deleted: true, Minor: 1, Inode: 78},
			kind: pb.VmaKind_VMA_SHARED_ANON, flags: unix.MAP_SHARED, obj: &vmaObject{memfd: &pb.MemfdState{Name: "x", Size: 4096}}},
		{m: &proc.Mapping{Start: 0x40000, End: 0x41000, Read: true, Shared: true, Path: "/SYSV00000001", Deleted: true, Minor: 1, Inode: 3},
			kind: pb.VmaKind_VMA_SYSV_SHM, flags: unix.MAP_SHARED, obj: &vmaObject{sysv: &pb.SysvShm{Id: 3, Key: 1, Size: 4096}}},
		{m: &proc.Mapping{Start: 0x7ff00000, End: 0x7ff02000, Read: true, Exec: true, Path: "[vdso]"}, kind: pb.VmaKind_VMA_VDSO, flags: unix.MAP_PRIVATE},
	}
	inherited := map[uint32][]*pb.PageRange{2: {{Start: 0x10000, End: 0x12000}}}
	mm := &pb.Mm{Pid: 4242, StartCode: 0x1000, Brk: 0x20000, Auxv: []byte{1, 2, 3}, Exe: "/usr/bin/x", PagesTotal: 99}
	got, err := encodeMm(mm, vmas, inherited)
	if err != nil {
		t.Fatal(err)
	}
	copied := *mm
	whole := &copied
	for i := range vmas {
		v := new(pb.Vma)
		vmas[i].fill(v, inherited[uint32(i)])
		whole.Vmas = append(whole.Vmas, v)
	}
	want, err := pb.Marshal(whole)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("encodeMm gave %d bytes, pb.Marshal %d: they differ", len(got), len(want))
	}
	if whole.Vmas[1].Path != "/tmp/gone (deleted)" || whole.Vmas[0].Pgoff != 0x2000 || whole.Vmas[0].MtimeNsec != 7_000_000_009 ||
		whole.Vmas[3].Dev != unix.Mkdev(0, 1) || whole.Vmas[3].Inode != 77 || whole.Vmas[5].Pgoff != 0 || whole.Vmas[0].Prot != unix.PROT_READ|unix.PROT_EXEC {
		t.Fatalf("records: %v", whole.Vmas)
	}
}
