package restore

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

const (
	pageSize     = 4096
	stackSize    = 256 << 10
	scratchSize  = 1 << 20
	lowestHole   = 1 << 32 // above where non-PIE executables and their heaps live
	highestHole  = 0x7ffffffff000
	holeGuardGap = 1 << 20 // keep clear of neighbours, e.g. a stack's growth
)

func pageUp(n uint64) uint64 { return (n + pageSize - 1) &^ (pageSize - 1) }

type span struct{ lo, hi uint64 }

// findGap returns the lowest address >= lowestHole where size bytes (plus
// guard gaps) overlap none of the given spans.
func findGap(used []span, size uint64) (uint64, error) {
	sort.Slice(used, func(i, j int) bool { return used[i].lo < used[j].lo })
	cand := uint64(lowestHole)
	for _, u := range used {
		if u.hi+holeGuardGap <= cand {
			continue
		}
		if cand+size+holeGuardGap <= u.lo {
			return cand, nil
		}
		if u.hi+holeGuardGap > cand {
			cand = pageUp(u.hi + holeGuardGap)
		}
	}
	if cand+size <= highestHole {
		return cand, nil
	}
	return 0, fmt.Errorf("no free address range of %d bytes for the restorer", size)
}

func isVdsoKind(k pb.VmaKind) bool {
	return k == pb.VmaKind_VMA_VDSO || k == pb.VmaKind_VMA_VVAR || k == pb.VmaKind_VMA_VVAR_VCLOCK || k == pb.VmaKind_VMA_VSYSCALL
}

var vdsoNames = map[string]pb.VmaKind{
	"[vdso]":        pb.VmaKind_VMA_VDSO,
	"[vvar]":        pb.VmaKind_VMA_VVAR,
	"[vvar_vclock]": pb.VmaKind_VMA_VVAR_VCLOCK,
	"[vsyscall]":    pb.VmaKind_VMA_VSYSCALL,
}

// vmaFlagsKnown are the Vma.flags cr-pages writes.
const vmaFlagsKnown = unix.MAP_SHARED | unix.MAP_PRIVATE | unix.MAP_DROPPABLE | unix.MAP_ANONYMOUS | unix.MAP_GROWSDOWN | unix.MAP_NORESERVE

// setupMm turns the fresh task into an empty copy of the dumped address
// space: the restorer moves to a hole, everything else of the helper's is
// unmapped, the vDSO moves to its dumped place, and every dumped VMA is
// mapped (writable for now where pages will be written into it).
func (t *task) setupMm(rc *Ctx) error {
	cur, err := taskMaps(t.pid)
	if err != nil {
		return err
	}
	var used []span
	for i := range t.vmas {
		v := &t.vmas[i]
		if v.End <= v.Start || v.Start%pageSize != 0 || v.End%pageSize != 0 {
			return fmt.Errorf("pid %d: vma %#x-%#x: not page aligned", t.pid, v.Start, v.End)
		}
		// Bits this restore does not know would be dropped, or passed to
		// mmap as something else: a protection or a mapping not dumped.
		// cr-pages writes a droppable mapping as private with MAP_DROPPABLE.
		typ := v.Flags & 0x0f // MAP_TYPE
		known := typ == unix.MAP_SHARED || typ == unix.MAP_PRIVATE || typ == unix.MAP_PRIVATE|unix.MAP_DROPPABLE
		if !known || v.Prot&^(unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC) != 0 || v.Flags&^vmaFlagsKnown != 0 || v.Advice&^pb.AdviceKnown != 0 {
			return fmt.Errorf("pid %d: vma %#x-%#x: protection %#x, flags %#x or advice %#x with bits this restore does not know: %w",
				t.pid, v.Start, v.End, v.Prot, v.Flags, v.Advice, image.ErrCorrupt)
		}
		// In address order, as maps lists them: what is kept from the
		// parent is looked up by address (inherit.go).
		if n := len(used); n > 0 && v.Start < used[n-1].hi {
			return fmt.Errorf("pid %d: vma %#x-%#x: not after the vma before it, which ends at %#x", t.pid, v.Start, v.End, used[n-1].hi)
		}
		used = append(used, span{v.Start, v.End})
	}
	for _, v := range cur {
		used = append(used, span{v.start, v.end})
	}
	imgSize := pageUp(t.r.layout.ImageSize)
	t.holeSize = imgSize + stackSize + scratchSize + uint64(len(t.proc.Threads))*threadStackSize
	hole, err := findGap(used, t.holeSize)
	if err != nil {
		return fmt.Errorf("pid %d: %w", t.pid, err)
	}
	t.hole = hole
	t.scratch = hole + imgSize + stackSize
	t.stacks = t.scratch + scratchSize
	if _, err := t.r.run(sc("map restorer area", unix.SYS_MMAP, hole, t.holeSize,
		unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0)); err != nil {
		return err
	}
	if err := t.r.relocate(hole, hole+imgSize+stackSize); err != nil {
		return err
	}
	// Drop the helper's image and stack, or what the fork from the parent
	// brought that is not kept: only the vDSO block and the VMAs with
	// inherited pages stay.
	kept, err := t.keptSpans()
	if err != nil {
		return err
	}
	var calls []call
	curVdso := map[pb.VmaKind]taskVma{}
	for _, v := range cur {
		if k, ok := vdsoNames[v.name]; ok {
			curVdso[k] = v
			continue
		}
		for _, s := range subtractSpans(span{v.start, v.end}, kept) {
			calls = append(calls, sc(fmt.Sprintf("unmap %s %#x-%#x", v.name, s.lo, s.hi), unix.SYS_MUNMAP, s.lo, s.hi-s.lo))
		}
	}
	if _, err := t.r.run(calls...); err != nil {
		return err
	}
	if err := t.moveVdso(curVdso, used); err != nil {
		return err
	}
	return t.mapVmas(rc)
}

// maxMapCount is vm.max_map_count: how many VMAs a task may have here.
var maxMapCount = sync.OnceValues(func() (int, error) {
	b, err := os.ReadFile("/proc/sys/vm/max_map_count")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
})

// checkMapCount refuses a process with more VMAs than limit
// (vm.max_map_count) before anything is mapped: a process dumped where
// the limit was raised (Elasticsearch asks for 262,144) would otherwise
// fail halfway with ENOMEM on one of its mappings. A restore needs no
// more than the dumped VMAs (measured: it works with the limit at their
// count, and fails one below).
func checkMapCount(pid uint32, vmas, limit int) error {
	if vmas <= limit {
		return nil
	}
	return stage.Hint(fmt.Errorf("pid %d: %d VMAs, more than vm.max_map_count (%d) allows here", pid, vmas, limit),
		fmt.Sprintf("raise it (sysctl -w vm.max_map_count=%d), then restore", vmas))
}

// moveVdso puts the running vDSO and vvar pages where the dumped process had
// them. They are moved in two steps through a free area, so that no
// destination overlaps a part not yet moved.
func (t *task) moveVdso(cur map[pb.VmaKind]taskVma, used []span) error {
	dumped := map[pb.VmaKind]*vma{}
	for i := range t.vmas {
		v := &t.vmas[i]
		if isVdsoKind(pb.VmaKind(v.Kind)) && pb.VmaKind(v.Kind) != pb.VmaKind_VMA_VSYSCALL {
			dumped[pb.VmaKind(v.Kind)] = v
		}
	}
	kinds := []pb.VmaKind{pb.VmaKind_VMA_VVAR, pb.VmaKind_VMA_VVAR_VCLOCK, pb.VmaKind_VMA_VDSO}
	same := true
	var total uint64
	var drop []call
	for _, k := range kinds {
		c, haveCur := cur[k]
		d, haveDumped := dumped[k]
		if haveDumped && !haveCur {
			return fmt.Errorf("pid %d: the dumped process had %s, this kernel's processes do not: restore on the kernel it was dumped on",
				t.pid, vmaKindName(k))
		}
		if haveCur && !haveDumped {
			// The process had unmapped it (valgrind unmaps the vDSO of
			// the program it runs): so does its restored self.
			drop = append(drop, sc("unmap "+vmaKindName(k), unix.SYS_MUNMAP, c.start, c.end-c.start))
			delete(cur, k)
			continue
		}
		if !haveCur {
			continue
		}
		if c.end-c.start != d.End-d.Start {
			return fmt.Errorf("pid %d: %s is %d bytes here but was %d bytes when dumped: restore on the kernel it was dumped on",
				t.pid, vmaKindName(k), c.end-c.start, d.End-d.Start)
		}
		if c.start != d.Start {
			same = false
		}
		total += c.end - c.start
	}
	if _, err := t.r.run(drop...); err != nil {
		return err
	}
	if same {
		return nil
	}
	used = append(used, span{t.hole, t.hole + t.holeSize})
	tmp, err := findGap(used, total)
	if err != nil {
		return fmt.Errorf("pid %d: vdso: %w", t.pid, err)
	}
	var first, second []call
	off := tmp
	for _, k := range kinds {
		c, ok := cur[k]
		if !ok {
			continue
		}
		size := c.end - c.start
		d := dumped[k]
		first = append(first, sc("move "+vmaKindName(k)+" aside", unix.SYS_MREMAP, c.start, size, size, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, off))
		second = append(second, sc("move "+vmaKindName(k)+" to its dumped address", unix.SYS_MREMAP, off, size, size, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, d.Start))
		off += size
	}
	_, err = t.r.run(append(first, second...)...)
	return err
}

func vmaKindName(k pb.VmaKind) string {
	for n, kk := range vdsoNames {
		if kk == k {
			return n
		}
	}
	return k.String()
}

// openMapped opens the file behind a file VMA, refusing a file that changed
// since the dump: mapping a different file would restore wrong memory.
func openMapped(rc *Ctx, pid int, v *vma) (*os.File, error) {
	flags := mappedOpenFlags(v)
	if f, ok, err := rc.mappedGhost(pid, v, flags); ok { // a deleted file (fd_ghost.go)
		return f, err
	}
	f, err := os.OpenFile(v.Path, flags, 0)
	if err != nil {
		return nil, fmt.Errorf("pid %d: vma %#x-%#x: %w", pid, v.Start, v.End, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, err
	}
	mtime := st.Mtim.Nano()
	if (v.fileSize() != 0 || v.mtimeNsec() != 0) && (st.Size != v.fileSize() || mtime != v.mtimeNsec()) {
		f.Close()
		return nil, fmt.Errorf("pid %d: vma %#x-%#x: %s changed since the dump (size %d, mtime %d; dumped size %d, mtime %d)",
			pid, v.Start, v.End, v.Path, st.Size, mtime, v.fileSize(), v.mtimeNsec())
	}
	return f, nil
}

// mappedOpenFlags: a shared writable mapping needs its file open for
// writing; every other mapping only for reading.
func mappedOpenFlags(v *vma) int {
	if v.Flags&unix.MAP_SHARED != 0 && v.Prot&unix.PROT_WRITE != 0 {
		return os.O_RDWR
	}
	return os.O_RDONLY
}

// mappedFiles opens the files t's VMAs map (a file once for the VMAs
// that map it the same way: by path and shared bit alone, a shared
// writable mapping after a read-only one of the same file got the
// read-only file, EACCES), and gives each VMA's place in them.
func (t *task) mappedFiles(rc *Ctx) (files []*os.File, fileOf map[*vma]int, err error) {
	type fileKey struct {
		path        string
		flags       int
		shared      bool
		size, mtime int64
	}
	index := map[fileKey]int{}
	fileOf = map[*vma]int{}
	for i := range t.vmas {
		v := &t.vmas[i]
		k := pb.VmaKind(v.Kind)
		if k == pb.VmaKind_VMA_SYSV_SHM {
			seg, err := rc.sysvSegment(v)
			if err != nil {
				return files, nil, fmt.Errorf("pid %d: vma %#x-%#x: %w", t.pid, v.Start, v.End, err)
			}
			t.sysv = append(t.sysv, sysvAttach{v, seg})
			continue
		}
		if k == pb.VmaKind_VMA_SHARED_ANON {
			f, err := rc.sharedAnon(v)
			if err != nil {
				return files, nil, fmt.Errorf("pid %d: vma %#x-%#x: %w", t.pid, v.Start, v.End, err)
			}
			fileOf[v] = len(files)
			files = append(files, f)
			continue
		}
		if k != pb.VmaKind_VMA_FILE_PRIVATE && k != pb.VmaKind_VMA_FILE_SHARED || len(v.inherited()) > 0 {
			continue
		}
		key := fileKey{v.Path, mappedOpenFlags(v), v.Flags&unix.MAP_SHARED != 0, v.fileSize(), v.mtimeNsec()}
		if i, ok := index[key]; ok {
			fileOf[v] = i
			continue
		}
		f, err := openMapped(rc, t.pid, v)
		if err != nil {
			return files, nil, err
		}
		index[key] = len(files)
		fileOf[v] = len(files)
		files = append(files, f)
	}
	return files, fileOf, nil
}

// mapVmas maps every dumped VMA at its address.
func (t *task) mapVmas(rc *Ctx) error {
	// What tasks share (shared memory, System V segments, deleted files)
	// is looked up under rc.mu: tasks are mapped in parallel (fill.go).
	var files []*os.File
	var fileOf map[*vma]int
	var policies *vmaPolicies
	var inside *pb.ProcessInside
	err := rc.locked(func() (err error) {
		inside = states(rc).pinside[t.proc.Pid]
		if files, fileOf, err = t.mappedFiles(rc); err == nil {
			policies, err = newVmaPolicies(rc, t)
		}
		return err
	})
	kept := map[*os.File]bool{}
	defer rc.locked(func() error {
		for _, f := range files {
			if !rc.owns(f) && !kept[f] {
				f.Close()
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for v, i := range fileOf {
		if pb.VmaKind(v.Kind) == pb.VmaKind_VMA_FILE_SHARED {
			if t.sharedFiles == nil {
				t.sharedFiles = map[uint64]*os.File{}
			}
			t.sharedFiles[v.Start], kept[files[i]] = files[i], true
		}
	}
	remote, err := t.r.sendFds(files)
	if err != nil {
		return err
	}
	calls := &batch{r: t.r}
	// THP disabled (or not) before any page is written, so that memory
	// the process could not have had as huge pages does not get them;
	// always, as a child forked from its parent's restorer inherits it.
	if inside != nil {
		calls.add(sc(fmt.Sprintf("prctl PR_SET_THP_DISABLE %#x", inside.ThpDisable), unix.SYS_PRCTL, unix.PR_SET_THP_DISABLE,
			uint64(inside.ThpDisable&1), uint64(inside.ThpDisable&^1)))
	}
	for i := range t.vmas {
		v := &t.vmas[i]
		k := pb.VmaKind(v.Kind)
		if isVdsoKind(k) {
			continue
		}
		if k == pb.VmaKind_VMA_SYSV_SHM { // its pages go straight into the segment (sysv.go)
			calls.add(attachCalls(v)...)
			calls.add(policies.calls(v, false)...)
			calls.add(thpAdvice(v)...)
			continue
		}
		prot := uint64(v.Prot)
		if v.HasPages {
			prot |= unix.PROT_WRITE
			t.writable = append(t.writable, v)
		}
		if len(v.inherited()) > 0 {
			calls.add(keepCalls(v, prot)...)
			calls.add(policies.calls(v, true)...)
			calls.add(thpAdvice(v)...)
			continue
		}
		flags := uint64(unix.MAP_FIXED_NOREPLACE)
		flags |= uint64(v.Flags) & (unix.MAP_GROWSDOWN | unix.MAP_NORESERVE)
		fd, off := ^uint64(0), uint64(0)
		switch k {
		case pb.VmaKind_VMA_ANON:
			flags |= unix.MAP_PRIVATE | unix.MAP_ANONYMOUS
			if v.Flags&unix.MAP_DROPPABLE != 0 { // a type of its own, instead of private
				flags = flags&^unix.MAP_PRIVATE | unix.MAP_DROPPABLE
			}
		case pb.VmaKind_VMA_SHARED_ANON:
			flags |= unix.MAP_SHARED
			fd, off = uint64(remote[fileOf[v]]), v.Pgoff
		case pb.VmaKind_VMA_FILE_PRIVATE:
			flags |= unix.MAP_PRIVATE
			fd, off = uint64(remote[fileOf[v]]), v.Pgoff
		case pb.VmaKind_VMA_FILE_SHARED:
			flags |= unix.MAP_SHARED
			fd, off = uint64(remote[fileOf[v]]), v.Pgoff
		default:
			return fmt.Errorf("pid %d: vma %#x-%#x: unknown kind %d", t.pid, v.Start, v.End, v.Kind)
		}
		calls.add(vmaCall("map", v, unix.SYS_MMAP, v.Start, v.End-v.Start, prot, flags, fd, off))
		calls.add(policies.calls(v, false)...)
		calls.add(thpAdvice(v)...)
	}
	if err := policies.check(t.pid); err != nil {
		return err
	}
	for _, fd := range remote {
		calls.add(sc("close mapped file", unix.SYS_CLOSE, uint64(fd)))
	}
	sort.Slice(t.writable, func(i, j int) bool { return t.writable[i].Start < t.writable[j].Start })
	mk, ranges, uffd := t.makeUffd(rc)
	if !uffd {
		return calls.flush()
	}
	calls.add(mk)
	fd, err := calls.flushLast()
	return t.startUffd(rc, fd, ranges, err)
}

// writePages copies one page frame's contents into the task.
//
// Most of a restore's time is the kernel faulting in the task's fresh
// pages and filling them; that scales with cores, so a large frame is
// split among up to writeThreads threads.
func (t *task) writePages(addr uint64, data []byte) error {
	write, err := t.pagesWriter(addr, len(data))
	if err != nil {
		return err
	}
	defer t.pagesWritten(len(data))
	n := min(runtime.NumCPU(), writeThreads, len(data)/writeSplitMin)
	if n < 2 {
		return write(addr, data)
	}
	part := (len(data)/n + pageSize - 1) &^ (pageSize - 1)
	errs := make(chan error, n)
	for i := 1; i < n; i++ {
		lo, hi := i*part, min((i+1)*part, len(data))
		go func() { errs <- write(addr+uint64(lo), data[lo:hi]) }()
	}
	err = write(addr, data[:part])
	for i := 1; i < n; i++ {
		if e := <-errs; err == nil {
			err = e
		}
	}
	return err
}

// placePages fills the task with the contents of a pages frame left in the
// image file (image.Reader.PagesInFile: up to writeThreads threads each
// read a piece, checksum it and write it while it is in the CPU's cache)
// or in the input stream (image.Reader.DeferPages: the pieces are read in
// order, and up to writeThreads threads write them as they come).
func (t *task) placePages(addr uint64, f *image.Frame) error {
	n := f.ContentBytes()
	write, err := t.pagesWriter(addr, n)
	if err == nil {
		err = f.ReadPieces(min(runtime.NumCPU(), writeThreads), func(off int, piece []byte) error {
			return write(addr+uint64(off), piece)
		})
	}
	if err != nil {
		return fmt.Errorf("pid %d: %w", t.pid, err)
	}
	t.pagesWritten(n)
	return nil
}

// pagesWriter returns what writes the n bytes of pages at addr, or parts
// of them: a dumped VMA with pages, else a System V segment attached there.
func (t *task) pagesWriter(addr uint64, n int) (func(addr uint64, data []byte) error, error) {
	end := addr + uint64(n)
	i := sort.Search(len(t.writable), func(i int) bool { return t.writable[i].End > addr })
	if i == len(t.writable) || addr < t.writable[i].Start || end > t.writable[i].End {
		if write := t.sysvWriter(addr, end); write != nil {
			return write, nil
		}
		return nil, fmt.Errorf("pages %#x-%#x lie in no dumped VMA with pages", addr, end)
	}
	v := t.writable[i]
	return func(addr uint64, data []byte) error { return t.writeRange(v, addr, data) }, nil
}

// writeThreads and writeSplitMin: how many threads fill a frame, and the
// least each one gets (doc/performance.md).
const (
	writeThreads  = 4
	writeSplitMin = 512 << 10
)

// writeRange places data at addr, inside v: with UFFDIO_COPY where v is
// registered for it (fill_uffd.go), else with process_vm_writev, made raw
// into private anonymous memory (sys.WriteAnonMemory: transparent huge
// pages are filled so).
func (t *task) writeRange(v *vma, addr uint64, data []byte) error {
	if done, err := t.copyPages(v, addr, data); done {
		return err
	}
	if pb.VmaKind(v.Kind) == pb.VmaKind_VMA_ANON {
		return sys.WriteAnonMemory(t.pid, addr, data)
	}
	return t.writev(addr, data)
}

func (t *task) writev(addr uint64, data []byte) error {
	return sys.WriteMemory(t.pid, addr, data)
}

// thpAdvice is a VMA's transparent huge page advice, given before its pages
// are written. Memory that had transparent huge pages gets them again too:
// a 2 MiB page is faulted in and zeroed in one go (doc/performance.md).
// Where THP is "madvise", the dumped VMA can only have had them by
// MADV_HUGEPAGE; under "always" it gets them anyway.
func thpAdvice(v *vma) []call {
	k := pb.VmaKind(v.Kind)
	huge := v.Huge && v.HasPages && (k == pb.VmaKind_VMA_ANON || k == pb.VmaKind_VMA_SHARED_ANON) && thpMode() == "madvise"
	switch {
	case v.Advice&pb.AdviceNoHugepage != 0:
		return []call{vmaCall("madvise nohugepage", v, unix.SYS_MADVISE, v.Start, v.End-v.Start, unix.MADV_NOHUGEPAGE)}
	case v.Advice&pb.AdviceHugepage != 0 || huge:
		return []call{vmaCall("madvise hugepage", v, unix.SYS_MADVISE, v.Start, v.End-v.Start, unix.MADV_HUGEPAGE)}
	}
	return nil
}

// lateAdvice are the madvise(2) calls a VMA gets once its pages are in
// place and every child has been forked from it: fork behaviour, core dump,
// KSM, read-ahead.
var lateAdvice = []struct {
	bit    uint32
	advice int
	name   string
}{
	{pb.AdviceDontFork, unix.MADV_DONTFORK, "dontfork"},
	{pb.AdviceWipeOnFork, unix.MADV_WIPEONFORK, "wipeonfork"},
	{pb.AdviceDontDump, unix.MADV_DONTDUMP, "dontdump"},
	{pb.AdviceMergeable, unix.MADV_MERGEABLE, "mergeable"},
	{pb.AdviceSequential, unix.MADV_SEQUENTIAL, "sequential"},
	{pb.AdviceRandom, unix.MADV_RANDOM, "random"},
}

// sealVmas gives every VMA its dumped protection back, then its advice,
// its memory lock and its seal: all once the tree's processes exist (a
// child is forked before its parent's VMAs say DONTFORK or WIPEONFORK, as
// it was in the dumped tree) and its pages are written (mlock faults in
// what is missing; nothing changes a sealed VMA).
func (t *task) sealVmas() error {
	calls := &batch{r: t.r}
	calls.add(t.forkBack()...)
	for _, v := range t.writable {
		if v.Prot&unix.PROT_WRITE == 0 {
			calls.add(vmaCall("protect", v, unix.SYS_MPROTECT, v.Start, v.End-v.Start, uint64(v.Prot)))
		}
	}
	var seal []call
	for i := range t.vmas {
		v := &t.vmas[i]
		if isVdsoKind(pb.VmaKind(v.Kind)) || v.Advice == 0 {
			continue
		}
		size := v.End - v.Start
		for _, a := range lateAdvice {
			if v.Advice&a.bit != 0 {
				calls.add(vmaCall("madvise "+a.name, v, unix.SYS_MADVISE, v.Start, size, uint64(a.advice)))
			}
		}
		switch {
		case v.Advice&pb.AdviceLockOnFault != 0:
			calls.add(vmaCall("mlock2 on fault", v, unix.SYS_MLOCK2, v.Start, size, unix.MLOCK_ONFAULT))
		case v.Advice&pb.AdviceLocked != 0:
			calls.add(vmaCall("mlock2", v, unix.SYS_MLOCK2, v.Start, size, 0))
		}
		if v.Advice&pb.AdviceSealed != 0 {
			seal = append(seal, vmaCall("mseal", v, unix.SYS_MSEAL, v.Start, size, 0))
		}
	}
	calls.add(seal...)
	return calls.flush()
}

// scratchWriter lays out argument structs in the restorer's scratch area,
// or in size bytes of it from base (0: all of it, scratchSize).
type scratchWriter struct {
	base, off uint64
	buf       []byte
	size      uint64
}

func (s *scratchWriter) put(b []byte) uint64 {
	s.off = (s.off + 15) &^ 15
	for uint64(len(s.buf)) < s.off {
		s.buf = append(s.buf, 0)
	}
	addr := s.base + s.off
	s.buf = append(s.buf, b...)
	s.off += uint64(len(b))
	return addr
}

func (s *scratchWriter) putU64s(v ...uint64) uint64 {
	b := make([]byte, 0, 8*len(v))
	for _, x := range v {
		b = binary.LittleEndian.AppendUint64(b, x)
	}
	return s.put(b)
}

func (s *scratchWriter) putString(str string) uint64 { return s.put(append([]byte(str), 0)) }

// flushScratch writes the laid out bytes into the task's scratch area.
func (t *task) flushScratch(s *scratchWriter) error {
	size := s.size
	if size == 0 {
		size = scratchSize
	}
	if uint64(len(s.buf)) > size {
		return fmt.Errorf("pid %d: restore arguments need %d bytes, more than the %d of the scratch area", t.pid, len(s.buf), size)
	}
	return writeMem(t.pid, s)
}

// writeMem writes what s laid out into task pid at s.base.
func writeMem(pid int, s *scratchWriter) error {
	if err := sys.WriteMemory(pid, s.base, s.buf); err != nil {
		return fmt.Errorf("pid %d: write argument memory: %w", pid, err)
	}
	return nil
}

// newSharedAnon makes a shmem object of size bytes as MAP_SHARED|
// MAP_ANONYMOUS makes one, and returns its file. A memfd would hold the
// memory as well, but the restored process's maps would show it as a
// memfd, which a next dump refuses: this one shows as the kernel names
// shared anonymous memory, "/dev/zero (deleted)".
func newSharedAnon(size int) (*os.File, error) {
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("shared memory of %d bytes: %w", size, err)
	}
	defer unix.Munmap(mem)
	return mappedFile(mem)
}

// newMappedMemfd makes the memfd m again, for the VMAs that mapped it:
// its name, size and mode; and F_SEAL_SEAL, the one seal a dump lets
// through, by leaving out MFD_ALLOW_SEALING as its maker did.
func newMappedMemfd(m *pb.MemfdState) (*os.File, error) {
	flags := unix.MFD_CLOEXEC
	if m.Seals&unix.F_SEAL_SEAL == 0 {
		flags |= unix.MFD_ALLOW_SEALING
	}
	n, err := unix.MemfdCreate(m.Name, flags)
	if err != nil {
		return nil, fmt.Errorf("memfd_create %q: %w", m.Name, err)
	}
	f := os.NewFile(uintptr(n), "memfd:"+m.Name)
	if err := f.Truncate(m.Size); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd %q: size %d: %w", m.Name, m.Size, err)
	}
	if err := f.Chmod(os.FileMode(m.Mode & 0o777)); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd %q: mode %#o: %w", m.Name, m.Mode, err)
	}
	return f, nil
}

// mappedFile opens what is mapped at mem, in our own address space, through
// /proc/self/map_files (which needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE).
func mappedFile(mem []byte) (*os.File, error) {
	start := uintptr(unsafe.Pointer(&mem[0]))
	end := start + (uintptr(len(mem))+pageSize-1)&^(pageSize-1)
	f, err := os.OpenFile(fmt.Sprintf("/proc/self/map_files/%x-%x", start, end), os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open our mapping of it: %w", err)
	}
	return f, nil
}

// shmemKey names in Ctx.Shared the file made for the shared memory object
// dev:inode of the dump.
func shmemKey(dev, inode uint64) string { return fmt.Sprintf("shmem:%d:%d", dev, inode) }

// sharedAnon returns the file that stands for one MAP_SHARED anonymous
// object of the dumped tree: every VMA that showed the object maps it, so
// the processes share that memory again. It grows to cover every VMA.
func (rc *Ctx) sharedAnon(v *vma) (*os.File, error) {
	key := shmemKey(v.dev(), v.inode())
	f, _ := rc.Shared[key].(*os.File)
	delete(rc.awaitingVma, key)
	if f == nil || v.inode() == 0 {
		var err error
		if v.memfd() != nil {
			f, err = newMappedMemfd(v.memfd())
		} else {
			f, err = newSharedAnon(int(v.Pgoff + v.End - v.Start))
		}
		if err != nil {
			return nil, err
		}
		if v.inode() != 0 { // without an identity, nothing can share it
			rc.Shared[key] = f
		}
		rc.owned = append(rc.owned, f)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, err
	}
	// A memfd keeps its size: a mapping may reach past its end (and fault there).
	if need := int64(v.Pgoff + v.End - v.Start); st.Size < need && v.memfd() == nil {
		if err := unix.Ftruncate(int(f.Fd()), need); err != nil {
			return nil, fmt.Errorf("size shared memory: %w", err)
		}
	}
	return f, nil
}
