package pages

import (
	"bytes"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/sys"
)

func requirePagemapScan(t testing.TB) {
	t.Helper()
	if err := sys.ProbePagemapScan(); err != nil {
		t.Skipf("kernel lacks it: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (reads another process's memory)")
	}
}

// pagesIn returns the page numbers (relative to r) of dumped pages inside r.
func pagesIn(d *dumpOut, r region) []int {
	var got []int
	for _, f := range d.pages {
		for a := f.addr; a < f.addr+uint64(len(f.data)); a += image.PageSize {
			if a >= r.start && a < r.end {
				got = append(got, int((a-r.start)/image.PageSize))
			}
		}
	}
	sort.Ints(got)
	return got
}

func seq(from, to, step int) []int {
	var s []int
	for i := from; i < to; i += step {
		s = append(s, i)
	}
	return s
}

func vmaAt(mm *pb.Mm, addr uint64) *pb.Vma {
	for _, v := range mm.Vmas {
		if addr >= v.Start && addr < v.End {
			return v
		}
	}
	return nil
}

func TestLayout(t *testing.T) {
	requirePagemapScan(t)
	p := startStopped(t, "layout", t.TempDir())
	d, err := runFilter(t, inputStream(t, p.pid))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.mms) != 1 {
		t.Fatalf("%d mm records, want 1", len(d.mms))
	}
	mm := d.mms[0]
	if want := []image.Type{image.TypeProcess, image.TypeMm}; d.frames[0] != want[0] || d.frames[1] != want[1] {
		t.Fatalf("frames start %v, want %v", d.frames[:2], want)
	}

	// Every page frame holds exactly the process's memory, inside a VMA
	// that says it has pages, and no page appears twice.
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", p.pid))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	var total uint64
	seen := map[uint64]bool{}
	for _, f := range d.pages {
		if f.pid != uint32(p.pid) {
			t.Fatalf("page frame of pid %d", f.pid)
		}
		if len(f.data) == 0 || len(f.data) > 4<<20 {
			t.Fatalf("page frame at %#x with %d bytes", f.addr, len(f.data))
		}
		v := vmaAt(mm, f.addr)
		if v == nil || !v.HasPages || f.addr+uint64(len(f.data)) > v.End {
			t.Fatalf("page frame %#x+%d not inside a VMA with pages (%v)", f.addr, len(f.data), v)
		}
		want := make([]byte, len(f.data))
		if _, err := mem.ReadAt(want, int64(f.addr)); err != nil {
			t.Fatalf("read /proc/%d/mem at %#x: %v", p.pid, f.addr, err)
		}
		if !bytes.Equal(f.data, want) {
			t.Fatalf("page frame at %#x differs from the process's memory", f.addr)
		}
		for a := f.addr; a < f.addr+uint64(len(f.data)); a += image.PageSize {
			if seen[a] {
				t.Fatalf("page %#x dumped twice", a)
			}
			seen[a] = true
		}
		total += uint64(len(f.data) / image.PageSize)
	}
	// pages_total is an upper bound: pages of zeros are left out.
	if total > mm.PagesTotal || mm.PagesTotal-total < 5 {
		t.Errorf("mm says %d pages, frames hold %d: want at most that, and the 5 pages of zeros left out", mm.PagesTotal, total)
	}

	r := p.regions
	check := func(name string, want []int) {
		t.Helper()
		if got := pagesIn(d, r[name]); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: dumped pages %v, want %v", name, got, want)
		}
	}
	check("anon", seq(0, 1024, 2))          // written pages only
	check("private", []int{2, 3, 10, 12})   // COWed pages only (12 with zeros)
	check("shared", nil)                    // in the file
	check("big", nil)                       // never touched
	check("zero", nil)                      // the zero page
	check("shanon", []int{0, 5})            // shmem holds both, though 5 is not mapped
	check("none", seq(0, 16, 1))            // PROT_NONE, via /proc/PID/mem
	check("ro", seq(0, 8, 1))               // read-only
	check("thp", seq(0, 1024, 1))           // 4 MiB
	check("heap", seq(0, 300*1024/4096, 1)) // malloc'ed and filled
	check("zeroed", []int{4, 5, 6, 7})      // pages of zeros left out
	if got := pagesIn(d, r["stack"]); len(got) < 16 {
		t.Errorf("stack: %d pages dumped, want all 16 of the filled array", len(got))
	}
	// Untouched and zero pages cost nothing: all that is dumped is what was written.
	if total > 8<<20/image.PageSize {
		t.Errorf("%d pages dumped: more than the ~6 MiB written", total)
	}

	kind := func(name string) *pb.Vma {
		t.Helper()
		v := vmaAt(mm, r[name].start)
		if v == nil {
			t.Fatalf("no VMA for %s", name)
		}
		return v
	}
	for _, c := range []struct {
		name  string
		kind  pb.VmaKind
		pages bool
		prot  uint32
		flags uint32
	}{
		{"anon", pb.VmaKind_VMA_ANON, true, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS},
		{"private", pb.VmaKind_VMA_FILE_PRIVATE, true, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_PRIVATE},
		{"shared", pb.VmaKind_VMA_FILE_SHARED, false, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_SHARED},
		{"big", pb.VmaKind_VMA_ANON, false, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_NORESERVE},
		{"shanon", pb.VmaKind_VMA_SHARED_ANON, true, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_SHARED | unix.MAP_ANONYMOUS},
		{"none", pb.VmaKind_VMA_ANON, true, 0, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS},
		{"ro", pb.VmaKind_VMA_ANON, true, unix.PROT_READ, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS},
		{"stack", pb.VmaKind_VMA_ANON, true, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_GROWSDOWN},
	} {
		v := kind(c.name)
		if pb.VmaKind(v.Kind) != c.kind || v.HasPages != c.pages || v.Prot != c.prot || v.Flags != c.flags {
			t.Errorf("%s: vma %v, want kind %v has_pages %v prot %d flags %#x", c.name, v, c.kind, c.pages, c.prot, c.flags)
		}
	}
	priv := kind("private")
	if priv.Inode == 0 || priv.FileSize != 16*image.PageSize || priv.MtimeNsec == 0 || !strings.HasSuffix(priv.Path, "/private") {
		t.Errorf("private file mapping: %v", priv)
	}
	if v := kind("heap"); v.Path != "[heap]" || mm.Brk != v.End || mm.StartBrk == 0 || mm.StartBrk > v.Start {
		t.Errorf("heap %v, start_brk %#x brk %#x", v, mm.StartBrk, mm.Brk)
	}
	if thp := kind("thp"); !thp.Huge {
		if b, _ := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled"); !bytes.Contains(b, []byte("[never]")) {
			t.Errorf("thp: vma %v has no huge flag", thp)
		}
	}
	var kinds []string
	for _, v := range mm.Vmas {
		switch pb.VmaKind(v.Kind) {
		case pb.VmaKind_VMA_VDSO, pb.VmaKind_VMA_VVAR, pb.VmaKind_VMA_VVAR_VCLOCK, pb.VmaKind_VMA_VSYSCALL:
			kinds = append(kinds, v.Path)
			if v.HasPages {
				t.Errorf("%s has pages", v.Path)
			}
		}
	}
	if len(kinds) < 2 {
		t.Errorf("vdso/vvar VMAs: %v", kinds)
	}
	if mm.Exe != memtest || len(mm.Auxv) == 0 || len(mm.Auxv)%16 != 0 || mm.StartCode == 0 || mm.ArgStart == 0 || mm.EnvEnd <= mm.EnvStart {
		t.Errorf("mm layout: exe %q auxv %d bytes code %#x args %#x env %#x-%#x", mm.Exe, len(mm.Auxv), mm.StartCode, mm.ArgStart, mm.EnvStart, mm.EnvEnd)
	}
}

func TestGoneProcess(t *testing.T) {
	requirePagemapScan(t)
	p := startStopped(t, "hog", "1")
	in := inputStream(t, p.pid)
	p.cmd.Process.Kill()
	p.cmd.Wait()
	_, err := runFilter(t, in)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", p.pid)) {
		t.Fatalf("dump of a dead process: %v", err)
	}
}

func TestWrongStartTime(t *testing.T) {
	requirePagemapScan(t)
	p := startStopped(t, "hog", "1")
	var buf bytes.Buffer
	w, _ := image.NewWriter(&buf, image.WriterOptions{})
	w.WriteMessage(image.TypeProcess, &pb.Process{Pid: uint32(p.pid), StartTime: 1})
	w.Close()
	_, err := runFilter(t, buf.Bytes())
	if err == nil || !strings.Contains(err.Error(), "not the process that was frozen") {
		t.Fatalf("dump with a wrong start time: %v", err)
	}
}

func openFds(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestShortReads makes every process_vm_readv stop halfway through its
// request: the rest must come from /proc/PID/mem, byte-exact.
func TestShortReads(t *testing.T) {
	requirePagemapScan(t)
	p := startStopped(t, "layout", t.TempDir())
	var calls atomic.Int64 // copiers call it concurrently
	processVMReadv = func(pid int, local []unix.Iovec, remote []unix.RemoteIovec, flags uint) (int, error) {
		// Alternate: a short read inside the first range, or a failure.
		if calls.Add(1)%2 == 0 {
			return 0, unix.EFAULT
		}
		r := remote[:1]
		r[0].Len = max(r[0].Len/2, 1)
		l := []unix.Iovec{{Base: local[0].Base, Len: uint64(r[0].Len)}}
		return unix.ProcessVMReadv(pid, l, r, flags)
	}
	t.Cleanup(func() { processVMReadv = unix.ProcessVMReadv })
	d, err := runFilter(t, inputStream(t, p.pid))
	if err != nil {
		t.Fatal(err)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", p.pid))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	for _, f := range d.pages {
		want := make([]byte, len(f.data))
		if _, err := mem.ReadAt(want, int64(f.addr)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(f.data, want) {
			t.Fatalf("page frame at %#x differs from the process's memory", f.addr)
		}
	}
	if calls.Load() < 2 || len(d.pages) == 0 {
		t.Fatalf("%d calls, %d frames", calls.Load(), len(d.pages))
	}
}

// TestTwoProcesses: one Mm and its pages per process, in stream order, and
// no fd left open.
func TestTwoProcesses(t *testing.T) {
	requirePagemapScan(t)
	a := startStopped(t, "hog", "8")
	b := startStopped(t, "hog", "3")
	before := openFds(t)
	d, err := runFilter(t, inputStream(t, a.pid, b.pid))
	if err != nil {
		t.Fatal(err)
	}
	if after := openFds(t); after != before {
		t.Errorf("%d fds open before the dump, %d after", before, after)
	}
	if len(d.mms) != 2 || d.mms[0].Pid != uint32(a.pid) || d.mms[1].Pid != uint32(b.pid) {
		t.Fatalf("mm records %v", d.mms)
	}
	// Frames: process, process, mm(a), pages(a)..., mm(b), pages(b)..., end.
	var owner uint32
	mms, pages := 0, 0
	for _, ty := range d.frames {
		switch ty {
		case image.TypeMm:
			owner = d.mms[mms].Pid
			mms++
		case image.TypePages:
			if d.pages[pages].pid != owner {
				t.Fatalf("page frame of pid %d after the mm of pid %d", d.pages[pages].pid, owner)
			}
			pages++
		}
	}
	for _, c := range []struct {
		p   *testProc
		mib int
	}{{a, 8}, {b, 3}} {
		r, n := c.p.regions["hog"], 0
		for _, f := range d.pages {
			for a := f.addr; f.pid == uint32(c.p.pid) && a < f.addr+uint64(len(f.data)); a += image.PageSize {
				if a >= r.start && a < r.end {
					n++
				}
			}
		}
		if n != c.mib<<8 {
			t.Errorf("pid %d: %d pages of its %d MiB hog", c.p.pid, n, c.mib)
		}
	}
}

// TestSharedObjects: a part of a shared memory object is dumped by the
// first VMA that claims it, again by that VMA (a second pass), and by no
// other: of another process, or of the same one (a memfd mapped twice).
func TestSharedObjects(t *testing.T) {
	o := sharedObjects{}
	k := objectKey{1, 2}
	if got := o.missing(k, 10, 3, 0, 8192); !reflect.DeepEqual(got, [][2]int64{{0, 8192}}) {
		t.Fatalf("nothing claimed: %v", got)
	}
	o.claim(k, 10, 3, 4096, 8192)
	o.claim(k, 10, 3, 12288, 16384)
	for _, c := range []struct {
		pid, vma int
		lo, hi   int64
		want     [][2]int64
	}{
		{10, 3, 0, 16384, [][2]int64{{0, 16384}}},
		{10, 4, 0, 16384, [][2]int64{{0, 4096}, {8192, 12288}}},
		{11, 3, 0, 16384, [][2]int64{{0, 4096}, {8192, 12288}}},
		{11, 3, 4096, 8192, nil},
		{11, 0, 6000, 20000, [][2]int64{{8192, 12288}, {16384, 20000}}},
	} {
		if got := o.missing(k, c.pid, c.vma, c.lo, c.hi); !reflect.DeepEqual(got, c.want) {
			t.Errorf("pid %d vma %d [%d, %d): %v, want %v", c.pid, c.vma, c.lo, c.hi, got, c.want)
		}
	}
	if got := o.missing(objectKey{1, 3}, 11, 0, 0, 4096); len(got) != 1 {
		t.Errorf("another object: %v", got)
	}
}

// TestWarmBuffers: the buffers warmed while a pipeline starts are the
// ones the stream then takes, the first huge page already in.
func TestWarmBuffers(t *testing.T) {
	bufCache.Lock()
	if bufCache.inUse {
		bufCache.Unlock()
		t.Fatal("buffers in use")
	}
	if bufCache.release != nil {
		bufCache.release()
	}
	bufCache.bufs, bufCache.release = nil, nil
	bufCache.Unlock()

	WarmBuffers()
	_, n := copierCount()
	bufs, release, err := buffers(n)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	bufCache.Lock()
	warmed := bufCache.bufs
	bufCache.Unlock()
	if len(warmed) != n || &bufs[0][0] != &warmed[0][0] {
		t.Fatalf("the stream took other buffers than the warmed ones")
	}
	vec := make([]byte, sys.HugePage/image.PageSize)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&bufs[0][0])), sys.HugePage, uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	for i, v := range vec {
		if v&1 == 0 {
			t.Fatalf("page %d of the first buffer's huge page is not resident", i)
		}
	}
}
