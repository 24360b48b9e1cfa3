package image_test

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"testing"

	"crpipe/lib/image"
	"crpipe/lib/pb"
)

// The helpers in this file build streams from doc/stream-v1.md alone (they
// do not use the Writer's internals), so the vectors check the codec against
// the document, not against itself.

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// rawHeader is a stream header with any version and flags.
func rawHeader(magic [8]byte, major, minor uint16, flags uint32) []byte {
	b := make([]byte, 16)
	copy(b, magic[:])
	binary.LittleEndian.PutUint16(b[8:], major)
	binary.LittleEndian.PutUint16(b[10:], minor)
	binary.LittleEndian.PutUint32(b[12:], flags)
	return b
}

// rawFrame encodes one frame with a correct CRC32C.
func rawFrame(t image.Type, flags uint32, payload []byte) []byte {
	b := make([]byte, 16, 16+len(payload))
	binary.LittleEndian.PutUint32(b[0:], uint32(t))
	binary.LittleEndian.PutUint32(b[4:], flags)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(payload)))
	c := crc32.Update(0, castagnoli, b[:12])
	c = crc32.Update(c, castagnoli, payload)
	binary.LittleEndian.PutUint32(b[12:], c)
	return append(b, payload...)
}

// rawPages is a pages payload: preamble and contents.
func rawPages(pid, flags uint32, addr uint64, data []byte) []byte {
	b := make([]byte, 16, 16+len(data))
	binary.LittleEndian.PutUint32(b[0:], pid)
	binary.LittleEndian.PutUint32(b[4:], flags)
	binary.LittleEndian.PutUint64(b[8:], addr)
	return append(b, data...)
}

func mustMarshal(m pb.Message) []byte {
	b, err := pb.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// rawEnd is an End frame with the given counts.
func rawEnd(frames, pageFrames, pageBytes uint64, complete bool) []byte {
	return rawFrame(image.TypeEnd, 0, mustMarshal(&pb.End{Frames: frames, PageFrames: pageFrames, PageBytes: pageBytes, Complete: complete}))
}

// pattern fills n bytes deterministically from seed.
func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// sampleFrame is one frame of the sample process.
type sampleFrame struct {
	t       image.Type
	flags   uint32
	payload []byte
}

const samplePid = 4242

// sampleFrames is a plausible single-process checkpoint with one frame of
// every record type, in pipeline order.
func sampleFrames() []sampleFrame {
	const (
		text  = 0x555555554000
		heap  = 0x555555577000
		anon  = 0x7ffff7fb0000
		stack = 0x7ffffffde000
		vdso  = 0x7ffff7fc5000
	)
	msg := func(t image.Type, m pb.Message) sampleFrame { return sampleFrame{t, 0, mustMarshal(m)} }
	return []sampleFrame{
		msg(image.TypeInventory, &pb.Inventory{RootPid: samplePid, Hostname: "vectors", Kernel: "6.18.0", CreatedUnixNano: 1700000000000000000, ToolVersion: "crpipe-test", BootId: "6f1c2b4e-0000-4000-8000-000000000001", PageSize: 4096}),
		msg(image.TypeFreeze, &pb.Freeze{Method: "cgroup2-transient", Cgroup: "/sys/fs/cgroup/unified/crpipe-4242", Transient: true, Original: []*pb.TaskCgroup{{Pid: samplePid, Cgroup2: "/sys/fs/cgroup/unified/user.slice"}}}),
		msg(image.TypeProcess, &pb.Process{Pid: samplePid, Ppid: 1, Pgid: samplePid, Sid: samplePid, Threads: []uint32{samplePid}, Comm: "counter", StartTime: 123456, State: "S"}),
		msg(image.TypeThreadCore, &pb.ThreadCore{Pid: samplePid, Tid: samplePid, Regs: &pb.X86Regs{Rip: text + 0x1234, Rsp: stack + 0x1f000, Rax: 0xfffffffffffffdfc, OrigRax: 230, Cs: 0x33, Ss: 0x2b, Eflags: 0x246, FsBase: 0x7ffff7d8a740}, Xsave: pattern(9, 832), Sigmask: 1 << 12, Rseq: &pb.Rseq{AbiPointer: 0x7ffff7d8ae00, AbiSize: 32, Signature: 0x53053053}}),
		msg(image.TypeTaskState, &pb.TaskState{Pid: samplePid, Tid: samplePid, ClearChildTid: 0x7ffff7d8aa10, Sigactions: []*pb.Sigaction{
			{Signo: 15, Handler: text + 0x1100, Flags: 0x04000000, Restorer: 0x7ffff7dc4050, Mask: 1 << 1},
			{Signo: 13, Handler: 1},
		}}),
		msg(image.TypeMm, &pb.Mm{Pid: samplePid, Vmas: []*pb.Vma{
			{Start: text, End: text + 0x2000, Prot: 5, Flags: 2, Path: "/usr/local/bin/counter", Kind: uint32(pb.VmaKind_VMA_FILE_PRIVATE), Dev: 0x801, Inode: 1234, FileSize: 16384, MtimeNsec: 1700000000123456789},
			{Start: heap, End: heap + 0x21000, Prot: 3, Flags: 2, Path: "[heap]", Kind: uint32(pb.VmaKind_VMA_ANON), HasPages: true},
			{Start: anon, End: anon + 0x4000, Prot: 3, Flags: 2 | 0x20, Kind: uint32(pb.VmaKind_VMA_ANON), HasPages: true},
			{Start: vdso, End: vdso + 0x2000, Prot: 5, Flags: 2, Path: "[vdso]", Kind: uint32(pb.VmaKind_VMA_VDSO)},
			{Start: stack, End: stack + 0x21000, Prot: 3, Flags: 2 | 0x100, Path: "[stack]", Kind: uint32(pb.VmaKind_VMA_ANON), HasPages: true},
		}, StartCode: text, EndCode: text + 0x2000, StartBrk: heap, Brk: heap + 0x21000, StartStack: stack + 0x20ff0, Auxv: pattern(3, 64), Exe: "/usr/local/bin/counter", PagesTotal: 4}),
		{image.TypePages, 0, rawPages(samplePid, 0, heap, pattern(1, 2*image.PageSize))},
		{image.TypePages, 0, rawPages(samplePid, 0, anon+0x1000, pattern(2, image.PageSize))},
		{image.TypePages, 0, rawPages(samplePid, 0, stack+0x20000, pattern(4, image.PageSize))},
		msg(image.TypeFiles, &pb.Files{Pid: samplePid, Fds: []*pb.Fd{
			{Fd: 0, Kind: uint32(pb.FdKind_FD_CHARDEV), Path: "/dev/null", Flags: 0, Rdev: 0x103, Mode: 0o20666},
			{Fd: 1, Kind: uint32(pb.FdKind_FD_REGULAR), Path: "/tmp/counter.log", Flags: 01 | 02000, Offset: 8192, Dev: 0x801, Inode: 99, Mode: 0o100644},
			{Fd: 2, Kind: uint32(pb.FdKind_FD_REGULAR), Path: "/tmp/counter.log", Flags: 01 | 02000, Offset: 8192, Dev: 0x801, Inode: 99, Mode: 0o100644},
			{Fd: 3, Cloexec: true, Kind: uint32(pb.FdKind_FD_REGULAR), Path: "/var/lib/counter/state", Flags: 02, Offset: 17, Dev: 0x801, Inode: 100, Mode: 0o100600},
		}, Cwd: "/var/lib/counter", Root: "/", Exe: "/usr/local/bin/counter", Umask: 0o022}),
	}
}

// rawStream assembles a stream from a header and frames, closed by a
// correct End frame when end is set.
func rawStream(hdr []byte, frames []sampleFrame, end bool) []byte {
	var b bytes.Buffer
	b.Write(hdr)
	var pageFrames, pageBytes uint64
	for _, f := range frames {
		b.Write(rawFrame(f.t, f.flags, f.payload))
		if f.t == image.TypePages {
			pageFrames++
			pageBytes += uint64(len(f.payload) - 16)
		}
	}
	if end {
		b.Write(rawEnd(uint64(len(frames)), pageFrames, pageBytes, true))
	}
	return b.Bytes()
}

func v1Header() []byte { return rawHeader(image.Magic, 1, 0, 0) }

// frameOffsets returns the offset of every frame of an uncompressed stream.
func frameOffsets(s []byte) []int {
	var offs []int
	for off := 16; off+16 <= len(s); {
		offs = append(offs, off)
		off += 16 + int(binary.LittleEndian.Uint32(s[off+8:]))
	}
	return offs
}

// writeSample writes the sample through the Writer.
func writeSample(t testing.TB, opt image.WriterOptions) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := image.NewWriter(&b, opt)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range sampleFrames() {
		if err := w.WriteFrame(f.t, f.flags, f.payload); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
