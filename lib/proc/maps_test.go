package proc

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

const smapsSample = `55c8c89bf000-55c8c89c1000 r--p 00000000 fe:00 247026                     /usr/bin/cat
Size:                  8 kB
Rss:                   8 kB
Anonymous:             0 kB
AnonHugePages:         0 kB
Swap:                  0 kB
THPeligible:           0
VmFlags: rd mr mw me 
7f0000000000-7f0000400000 rw-p 00000000 00:00 0 
Rss:                4096 kB
Anonymous:          4096 kB
AnonHugePages:      2048 kB
VmFlags: rd wr mr mw me ac hg 
7f1000000000-7f1000001000 rw-s 00002000 00:01 1234                       /dev/zero (deleted)
7f2000000000-7f2000001000 r--p 00000000 08:01 42                         /tmp/a file\012with newline
7ffd85e7b000-7ffd85e9c000 rw-p 00000000 00:00 0                          [stack]
VmFlags: rd wr mr mw me gd ac 
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
`

func TestParseSmaps(t *testing.T) {
	ms, err := ParseSmaps(strings.NewReader(smapsSample))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 6 {
		t.Fatalf("%d mappings, want 6", len(ms))
	}
	m := ms[0]
	if m.Start != 0x55c8c89bf000 || m.End != 0x55c8c89c1000 || !m.Read || m.Write || m.Exec || m.Shared ||
		m.Major != 0xfe || m.Minor != 0 || m.Inode != 247026 || m.Path != "/usr/bin/cat" || !m.HasVmFlag("me") || m.HasVmFlag("wr") {
		t.Errorf("mapping 0: %+v", m)
	}
	if m := ms[1]; m.Path != "" || !m.HasVmFlag("hg") || !m.HasVmFlag("ac") || m.Len() != 4<<20 {
		t.Errorf("mapping 1: %+v", m)
	}
	if m := ms[2]; !m.Shared || m.Path != "/dev/zero" || !m.Deleted || m.Offset != 0x2000 || m.Minor != 1 {
		t.Errorf("mapping 2: %+v", m)
	}
	if m := ms[3]; m.Path != "/tmp/a file\nwith newline" || m.Major != 8 || m.Minor != 1 {
		t.Errorf("mapping 3: %+v", m)
	}
	if m := ms[4]; m.Path != "[stack]" || !m.HasVmFlag("gd") {
		t.Errorf("mapping 4: %+v", m)
	}
	if m := ms[5]; m.Path != "[vsyscall]" || m.Read || !m.Exec {
		t.Errorf("mapping 5: %+v", m)
	}
}

func TestParseMapsBad(t *testing.T) {
	for _, in := range []string{
		"Size: 4 kB\n",
		"7f00-7e00 rw-p 00000000 00:00 0\n",
		"7f00 rw-p 00000000 00:00 0\n",
		"7f00-7f01 rwxq 00000000 00:00 0\n",
		"7f00-7f01 rw-p 0000000g 00:00 0\n",
		"7f00-7f01 rw-p 00000000 0000 0\n",
		"7f00-7f01 rw-p 00000000 00:00 x\n",
		"7f00-7f01 rw-p\n",
	} {
		if _, err := ParseSmaps(strings.NewReader(in)); !errors.Is(err, ErrMapsSyntax) {
			t.Errorf("%q: %v, want ErrMapsSyntax", in, err)
		}
	}
}

func TestReadMapsSelf(t *testing.T) {
	maps, err := ReadMaps(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	smaps, err := ReadSmaps(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if len(maps) < 5 || len(smaps) < 5 {
		t.Fatalf("%d maps, %d smaps entries", len(maps), len(smaps))
	}
	var stack bool
	for _, m := range smaps {
		if m.Path == "[stack]" && m.HasVmFlag("gd") {
			stack = true
		}
	}
	if !stack {
		t.Error("no [stack] with VmFlags gd in smaps")
	}
}

// TestReadRanges: the ranges are those ReadMaps reads (the process maps
// nothing in between: its other goroutines are idle).
func TestReadRanges(t *testing.T) {
	maps, err := ReadMaps(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	ranges, err := ReadRanges(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if len(ranges) != len(maps) {
		t.Fatalf("%d ranges, %d mappings", len(ranges), len(maps))
	}
	for i, r := range ranges {
		if r.Start != maps[i].Start || r.End != maps[i].End {
			t.Errorf("range %d: %x-%x, ReadMaps %x-%x", i, r.Start, r.End, maps[i].Start, maps[i].End)
		}
	}
	for _, c := range []struct {
		in string
		ok bool
		n  uint64
	}{{"ffffffffff600000", true, 0xffffffffff600000}, {"0", true, 0}, {"7f3a", true, 0x7f3a},
		{"", false, 0}, {"1g", false, 0}, {"1A", false, 0}, {"10000000000000000", false, 0}} {
		if n, ok := parseHex([]byte(c.in)); ok != c.ok || n != c.n {
			t.Errorf("parseHex(%q) = %x, %v; want %x, %v", c.in, n, ok, c.n, c.ok)
		}
	}
}

// ReadSharedFileMaps finds this process's shared mappings of files, of a
// deleted file too, and none of its shmem objects, private mappings or
// anonymous memory.
func TestReadSharedFileMaps(t *testing.T) {
	dir := t.TempDir()
	mapFile := func(name string, flags int) uintptr {
		f, err := os.Create(dir + "/" + name)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(4096); err != nil {
			t.Fatal(err)
		}
		return mapFd(t, int(f.Fd()), flags)
	}
	shared := mapFile("shared", unix.MAP_SHARED)
	mapFile("private", unix.MAP_PRIVATE)
	deleted := mapFile("deleted", unix.MAP_SHARED)
	if err := os.Remove(dir + "/deleted"); err != nil {
		t.Fatal(err)
	}
	memfd, err := unix.MemfdCreate("shared", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(memfd)
	if err := unix.Ftruncate(memfd, 4096); err != nil {
		t.Fatal(err)
	}
	mapFd(t, memfd, unix.MAP_SHARED)
	mapFd(t, -1, unix.MAP_SHARED|unix.MAP_ANONYMOUS)

	ms, err := ReadSharedFileMaps(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	got := map[uintptr]string{}
	for _, m := range ms {
		got[uintptr(m.Start)] = m.Path
		if !m.Shared || m.Inode == 0 {
			t.Errorf("%x-%x %s: shared %v, inode %d", m.Start, m.End, m.Path, m.Shared, m.Inode)
		}
	}
	if got[shared] != dir+"/shared" || got[deleted] != dir+"/deleted" || len(got) != 2 {
		t.Errorf("shared file mappings %v, want %s at %#x and %s at %#x alone", got, dir+"/shared", shared, dir+"/deleted", deleted)
	}
}

// mapFd maps a page of fd (or anonymous memory), unmapped at the test's end.
func mapFd(t *testing.T, fd, flags int) uintptr {
	t.Helper()
	b, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return uintptr(unsafe.Pointer(&b[0]))
}

func FuzzParseSmaps(f *testing.F) {
	f.Add([]byte(smapsSample))
	if b, err := os.ReadFile("/proc/self/smaps"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ms, err := ParseSmaps(bytes.NewReader(b))
		if err != nil {
			return
		}
		for _, m := range ms {
			if m.End < m.Start {
				t.Fatalf("mapping %x-%x ends before it starts", m.Start, m.End)
			}
		}
	})
}

func TestReadVmFlags(t *testing.T) {
	b, err := unix.Mmap(-1, 0, 3*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(b)
	// The middle page gets a VMA of its own.
	if err := unix.Madvise(b[4096:8192], unix.MADV_DONTFORK); err != nil {
		t.Fatal(err)
	}
	flags, err := ReadVmFlags(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	mid := uint64(uintptr(unsafe.Pointer(&b[4096])))
	got := flagsAt(t, flags, mid).VmFlags
	if !got.Has("dc") || !got.Has("rd") || !got.Has("wr") || flagsAt(t, flags, mid).ProtectionKey != 0 {
		t.Errorf("VmFlags of the DONTFORK page: %+v", flagsAt(t, flags, mid))
	}
	if first := flagsAt(t, flags, mid-4096); first.VmFlags.Has("dc") {
		t.Errorf("VmFlags of the page before it: %+v", first)
	}
	for i := 1; i < len(flags); i++ {
		if flags[i].Start <= flags[i-1].Start {
			t.Fatalf("VMA %d at %#x after one at %#x: not by address", i, flags[i].Start, flags[i-1].Start)
		}
	}
}

// flagsAt returns the flags of the VMA that starts at start.
func flagsAt(t *testing.T, flags []VmaFlags, start uint64) VmaFlags {
	t.Helper()
	for _, f := range flags {
		if f.Start == start {
			return f
		}
	}
	t.Fatalf("no VMA starts at %#x", start)
	return VmaFlags{}
}

var sink byte

// MayShare: a private mapping written by this process alone shares
// nothing; a file page mapped twice (mapcount 2) counts as shared in both
// VMAs, as a page shared since fork would.
func TestReadVmFlagsMayShare(t *testing.T) {
	own, err := unix.Mmap(-1, 0, 4*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(own)
	for i := range own {
		own[i] = 1
	}
	f, err := os.CreateTemp(t.TempDir(), "twice")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(bytes.Repeat([]byte{7}, 4096)); err != nil {
		t.Fatal(err)
	}
	var twice [2][]byte
	for i := range twice {
		if twice[i], err = unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ, unix.MAP_SHARED); err != nil {
			t.Fatal(err)
		}
		defer unix.Munmap(twice[i])
		sink += twice[i][0] // fault it in
	}
	flags, err := ReadVmFlags(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if f := flagsAt(t, flags, uint64(uintptr(unsafe.Pointer(&own[0])))); f.MayShare {
		t.Errorf("a private mapping written by this process alone may share pages, says smaps: %+v", f)
	}
	for i := range twice {
		if f := flagsAt(t, flags, uint64(uintptr(unsafe.Pointer(&twice[i][0])))); !f.MayShare {
			t.Errorf("mapping %d of a file page mapped twice shares no page, says smaps: %+v", i, f)
		}
	}
}

func TestVmFlags(t *testing.T) {
	if len(vmFlagNames) > 64 {
		t.Fatalf("%d VmFlags names do not fit in 64 bits", len(vmFlagNames))
	}
	f := parseVmFlags([]byte(" rd zz gd  sl "))
	for _, n := range vmFlagNames {
		if want := n == "rd" || n == "gd" || n == "sl"; f.Has(n) != want {
			t.Errorf("%q: Has %v, want %v", n, f.Has(n), want)
		}
	}
}
