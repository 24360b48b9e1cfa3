package pages

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
)

// vma is one mapping with what the dump decided about it. Its Vma record
// is made from it only as the Mm record is encoded (fill): a process can
// have 65,530 mappings, and a decoded record for each (~190 bytes) was
// half of cr-pages' heap then.
type vma struct {
	m   *proc.Mapping // in the slice ReadMaps returned: not copied
	obj *vmaObject    // what it maps, for a file, segment or memfd; nil for anonymous memory
	// flags are its MAP_* bits, advice its pb.Advice* bits.
	flags, advice uint32
	kind          pb.VmaKind
	scan          scanKind
	// mayShare: smaps says some page of it may be shared with another
	// process (proc.VmaFlags.MayShare); sharing.go looks no further where not.
	mayShare bool
	hasPages bool // page records may follow for it
	huge     bool // a page of it was mapped huge (THP)
}

// vmaObject is what a VMA maps, one of them: most VMAs map none, and
// with one pointer for all three a vma takes 32 bytes, not 48.
type vmaObject struct {
	file  *unix.Stat_t // the mapped file (file kinds), shared by the VMAs of a path
	sysv  *pb.SysvShm
	memfd *pb.MemfdState
}

func (x *vma) file() *unix.Stat_t {
	if x.obj == nil {
		return nil
	}
	return x.obj.file
}

func (x *vma) sysv() *pb.SysvShm {
	if x.obj == nil {
		return nil
	}
	return x.obj.sysv
}

func (x *vma) memfd() *pb.MemfdState {
	if x.obj == nil {
		return nil
	}
	return x.obj.memfd
}

type scanKind uint8

const (
	scanNone        scanKind = iota // no contents in the image (file-backed, vdso...)
	scanAnon                        // private anonymous: pages present or swapped, not the zero page
	scanFilePrivate                 // private file: as scanAnon, but only pages that are anonymous (COWed)
	scanShared                      // shared anonymous (shmem): every page the object holds
)

// object is the device and inode of what x maps: the file, or the shmem,
// memfd or System V object.
func (x *vma) object() (dev, inode uint64) {
	if f := x.file(); f != nil {
		return f.Dev, f.Ino
	}
	return unix.Mkdev(x.m.Major, x.m.Minor), x.m.Inode
}

// fill sets v to x's Vma record, with the ranges it inherits from its
// parent (sharing.go).
func (x *vma) fill(v *pb.Vma, inherited []*pb.PageRange) {
	m := x.m
	*v = pb.Vma{Start: m.Start, End: m.End, Path: m.Path, Kind: uint32(x.kind), Flags: x.flags, Advice: x.advice,
		HasPages: x.hasPages, Huge: x.huge, Sysv: x.sysv(), Memfd: x.memfd(), Inherited: inherited}
	if m.Read {
		v.Prot |= unix.PROT_READ
	}
	if m.Write {
		v.Prot |= unix.PROT_WRITE
	}
	if m.Exec {
		v.Prot |= unix.PROT_EXEC
	}
	switch x.kind {
	case pb.VmaKind_VMA_FILE_PRIVATE, pb.VmaKind_VMA_FILE_SHARED:
		v.Pgoff = m.Offset
		v.Dev, v.Inode = x.object()
		v.FileSize, v.MtimeNsec = x.file().Size, x.file().Mtim.Nano()
		if m.Deleted { // a ghost (ghost.go)
			v.Path += deletedSuffix
		}
	case pb.VmaKind_VMA_SHARED_ANON:
		v.Pgoff = m.Offset
		v.Dev, v.Inode = x.object()
	case pb.VmaKind_VMA_SYSV_SHM:
		v.Dev, v.Inode = x.object()
	}
}

// unsupported builds the error for a mapping cr-pages cannot dump (yet).
func unsupported(pid int, m *proc.Mapping, what, hint string) error {
	return stage.Hint(fmt.Errorf("pid %d vma %x-%x: %s is not supported yet", pid, m.Start, m.End, what), hint)
}

// readVmFlags reads pid's VmFlags (proc.ReadVmFlags) in the background,
// beside the other files prepare reads. smaps walks every page table entry
// (24 ms per GiB resident here); the PAGEMAP_SCAN pass waits for it, since
// what it says of sharing saves the pass a pagemap read of the same cost
// (sharing.go). fast, when not nil, is asked first (see fastMinAnon).
// The result is taken by applyVmFlags.
func readVmFlags(pid int, fast *proc.FastVmFlags) <-chan vmFlags {
	ch := make(chan vmFlags, 1)
	go func() {
		if fast != nil {
			if f, ok := fast.Read(pid); ok {
				ch <- vmFlags{byAddress: f, fast: true}
				return
			}
			stage.Logf("pid %d: VmFlags from smaps (a VMA has a flag not checked)", pid)
		}
		f, err := proc.ReadVmFlags(pid)
		ch <- vmFlags{byAddress: f, err: err}
	}()
	return ch
}

// fastMinAnon: the BPF iterator is set up (2-5 ms of CPU) once a process
// with this much private anonymous memory resident shows in the input,
// or fastMinProcs processes; then it gives the VmFlags of every process
// of the dump. Which VMAs may share pages it tells by their anon_vma
// (proc.FastVmFlags): a VMA whose pages no other VMA can map is read
// without looking at its pagemap.
// Every other one costs nothing for a lent run (not looked at for
// sharing), and for a copied one a pagemap read of every page (20 ms per
// GiB; the parent's too where a VMA may inherit from it), where smaps
// walks every page as well (30 ms per GiB) and writes text for every VMA
// (figures from before the anon_vma was looked at): 10,000 VMAs of 4 KiB
// 0.105 / 0.111 s against 0.130 / 0.152 with smaps; cr-pages on 64
// processes of 16 MiB 0.133 / 0.157 s against 0.144 / 0.167, on the cow
// tree (8 processes sharing 256 MiB since fork) 0.158 / 0.255 against
// 0.186 / 0.292 (doc/performance.md, 51 and 53).
const fastMinAnon = 8 << 20

// fastMinProcs: smaps of a small process costs ~0.2 ms (its walk and the
// text of every VMA): a tree of 100 processes of 1 MiB, cr-pages alone,
// 48 / 64.5 ms with the iterator against 58 / 68.5 (doc/performance.md, 60).
const fastMinProcs = 8

// fastSetup sets proc.FastVmFlags up in the background (2-5 ms of CPU:
// the kernel's BTF, the BPF program, the check on probe mappings), once a
// process with much memory or the tree's eighth process shows in the
// input, while the stage still waits for the rest of it: a dump of a few
// small processes (the tiny counter's) does without. CRPIPE_VMFLAGS=smaps
// leaves it out.
type fastSetup struct {
	requested bool // start was called (by the stage's reading goroutine)
	started   sync.Once
	taken     sync.Once
	ch        chan *proc.FastVmFlags // nil: not started
	f         *proc.FastVmFlags
}

func (fs *fastSetup) start() {
	fs.requested = true
	fs.started.Do(func() {
		if os.Getenv("CRPIPE_VMFLAGS") == "smaps" {
			return
		}
		fs.ch = make(chan *proc.FastVmFlags, 1)
		go func() {
			f, err := proc.NewFastVmFlags()
			if err != nil {
				stage.Logf("VmFlags from smaps: %v", err)
			}
			fs.ch <- f
		}()
	})
}

// get waits for the set-up: nil when it failed or was not started.
func (fs *fastSetup) get() *proc.FastVmFlags {
	fs.taken.Do(func() {
		if fs.ch != nil {
			fs.f = <-fs.ch
		}
	})
	return fs.f
}

func (fs *fastSetup) close() {
	if f := fs.get(); f != nil {
		f.Close()
	}
}

type vmFlags struct {
	byAddress []proc.VmaFlags
	err       error
	fast      bool // from proc.FastVmFlags
}

// listsAll: fl has an entry for each of vmas but [vsyscall] (in no
// process's address space, which the VMA iterator does not list).
func (fl vmFlags) listsAll(vmas []vma) bool {
	next := fl.byAddress
	for i := range vmas {
		if vmas[i].kind == pb.VmaKind_VMA_VSYSCALL {
			continue
		}
		for len(next) > 0 && next[0].Start < vmas[i].m.Start {
			next = next[1:]
		}
		if len(next) == 0 || next[0].Start != vmas[i].m.Start {
			return false
		}
	}
	return true
}

// applyVmFlags completes the Vma records from the VmFlags: flags of the
// mapping, advice, and refusals.
func applyVmFlags(pid int, vmas []vma, fl vmFlags) error {
	if fl.err == nil && fl.fast && !fl.listsAll(vmas) {
		stage.Logf("pid %d: VmFlags from smaps (the VMA iterator missed a mapping)", pid)
		fl.byAddress, fl.err = proc.ReadVmFlags(pid)
	}
	if fl.err != nil {
		return procErr(pid, fl.err)
	}
	next := fl.byAddress // both by address: maps and smaps list the VMAs in order
	for i := range vmas {
		x := &vmas[i]
		m := x.m
		for len(next) > 0 && next[0].Start < m.Start {
			next = next[1:]
		}
		var f proc.VmaFlags
		ok := len(next) > 0 && next[0].Start == m.Start
		if ok {
			f = next[0]
		}
		m.VmFlags = f.VmFlags
		x.mayShare = f.MayShare || !ok
		if err := refuseVmFlags(pid, m); err != nil {
			return err
		}
		if seg := x.sysv(); seg != nil {
			// VM_MAYWRITE: an attach without SHM_RDONLY, even where
			// mprotect took PROT_WRITE away.
			seg.ReadOnly = !m.HasVmFlag("mw")
		}
		if f.ProtectionKey != 0 {
			return unsupported(pid, m, fmt.Sprintf("memory with protection key %d (pkey_mprotect)", f.ProtectionKey), "")
		}
		for _, b := range []struct {
			flag string
			bit  uint32
		}{{"gd", unix.MAP_GROWSDOWN}, {"nr", unix.MAP_NORESERVE}, {"dp", unix.MAP_DROPPABLE}} {
			if m.HasVmFlag(b.flag) {
				x.flags |= b.bit
			}
		}
		for _, a := range pb.AdviceFlags {
			if m.HasVmFlag(a.Flag) {
				x.advice |= a.Bit
			}
		}
	}
	return nil
}

// refuseVmFlags refuses VMAs whose state a restore cannot build again.
func refuseVmFlags(pid int, m *proc.Mapping) error {
	for _, r := range []struct{ flag, what, hint string }{
		{"ht", "a hugetlbfs mapping", stage.HintHugetlb},
		{"ss", "a shadow stack", ""},
		{"um", "a mapping registered with userfaultfd", "unregister it (UFFDIO_UNREGISTER) before checkpointing"},
		{"uw", "a mapping registered with userfaultfd (write protection)", "unregister it (UFFDIO_UNREGISTER) before checkpointing"},
		{"ui", "a mapping registered with userfaultfd (minor faults)", "unregister it (UFFDIO_UNREGISTER) before checkpointing"},
	} {
		if m.HasVmFlag(r.flag) {
			return unsupported(pid, m, r.what, r.hint)
		}
	}
	return nil
}

// classify turns the mappings of pid into Vma records, refusing what the
// restore cannot rebuild.
func classify(pid int, maps []proc.Mapping) ([]vma, error) {
	root := proc.PathRoot(pid) // where the paths of its maps start
	stats := map[string]*unix.Stat_t{}
	onHugetlbfs := map[uint64]bool{} // by device: a library maps several VMAs
	sysvSegs := sysvTable(pid)
	out := make([]vma, 0, len(maps))
	for i := range maps {
		m := &maps[i]
		if m.Deleted && namedDeleted(pid, root, m) {
			m.Path, m.Deleted = m.Path+deletedSuffix, false
		}
		x := vma{m: m, flags: unix.MAP_PRIVATE}
		if m.Shared {
			x.flags = unix.MAP_SHARED
		}
		// The rest of the VmFlags come later (applyVmFlags); the one VMA
		// that grows down in practice is the main stack.
		if m.Path == "[stack]" {
			x.flags |= unix.MAP_GROWSDOWN
		}
		switch {
		case m.Path == "[vdso]":
			x.kind = pb.VmaKind_VMA_VDSO
		case m.Path == "[vvar]":
			x.kind = pb.VmaKind_VMA_VVAR
		case m.Path == "[vvar_vclock]":
			x.kind = pb.VmaKind_VMA_VVAR_VCLOCK
		case m.Path == "[vsyscall]":
			x.kind = pb.VmaKind_VMA_VSYSCALL
		case m.Shared && (isSharedAnonPath(m) || strings.HasPrefix(m.Path, "[anon_shmem:")):
			// MAP_SHARED|MAP_ANONYMOUS is a shmem object the kernel names
			// "/dev/zero (deleted)"; its offset is the position in that object.
			// Its device and inode are the object's identity: VMAs of
			// several processes that show the same one share memory, and
			// must again after restore.
			x.kind = pb.VmaKind_VMA_SHARED_ANON
			x.flags |= unix.MAP_ANONYMOUS
			x.scan = scanShared
		case m.Inode == 0 && (m.Path == "" || m.Path == "[heap]" || m.Path == "[stack]" || strings.HasPrefix(m.Path, "[anon:")):
			if m.Shared {
				return nil, unsupported(pid, m, "a shared mapping without a backing object", "")
			}
			// An anonymous VMA's offset is its address in pages: meaningless to restore.
			x.kind = pb.VmaKind_VMA_ANON
			x.flags |= unix.MAP_ANONYMOUS
			x.scan = scanAnon
		case m.Path == "/anon_hugepage" && m.Deleted:
			return nil, unsupported(pid, m, "a hugetlb mapping (MAP_HUGETLB)", stage.HintHugetlb)
		case strings.HasPrefix(m.Path, "["):
			return nil, unsupported(pid, m, fmt.Sprintf("special mapping %s", m.Path), "")
		case m.Shared && isMemfdPath(m): // memfd.go
			if err := memfdVma(pid, &x); err != nil {
				return nil, err
			}
		case isSysvPath(m): // sysv.go
			if err := sysvVma(pid, &x, sysvSegs); err != nil {
				return nil, err
			}
		case isGhostMapping(m): // ghost.go
			if err := ghostVma(pid, &x); err != nil {
				return nil, err
			}
		case m.Deleted || !strings.HasPrefix(m.Path, "/"):
			// Only a deleted file goes away with a restart; the kernel
			// objects do not.
			switch {
			case strings.HasPrefix(m.Path, "/memfd:"):
				return nil, unsupported(pid, m, fmt.Sprintf("a private mapping of the memfd %s", m.Path), "")
			case m.Path == "anon_inode:[io_uring]":
				return nil, unsupported(pid, m, "an io_uring ring (anon_inode:[io_uring])", stage.HintIoUring)
			case m.Path == "/[aio]":
				return nil, unsupported(pid, m, "a Linux AIO ring (io_setup)", "")
			case !strings.HasPrefix(m.Path, "/"):
				return nil, unsupported(pid, m, fmt.Sprintf("a mapping of the kernel object %s", m.Path), "")
			}
			return nil, unsupported(pid, m, fmt.Sprintf("mapping of deleted file %s", m.Path), "restart the process so that it maps files that exist, then checkpoint")
		default:
			st, err := statMapped(pid, root, m, stats)
			if err != nil {
				return nil, err
			}
			x.scan = scanFilePrivate
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFREG:
				if hugetlbfsDev(filepath.Join(root, m.Path), st.Dev, onHugetlbfs) {
					return nil, unsupported(pid, m, fmt.Sprintf("a hugetlbfs mapping of %s", m.Path), stage.HintHugetlb)
				}
			case unix.S_IFCHR:
				if st.Rdev != unix.Mkdev(1, 5) || m.Shared {
					return nil, unsupported(pid, m, fmt.Sprintf("device mapping %s", m.Path), "")
				}
				x.scan = scanAnon // a private /dev/zero mapping is anonymous memory
			default:
				return nil, unsupported(pid, m, fmt.Sprintf("mapping of %s (mode %#o)", m.Path, st.Mode), "")
			}
			x.obj = &vmaObject{file: st}
			if m.Shared {
				// Shared file pages live in the file: never in the image.
				x.kind = pb.VmaKind_VMA_FILE_SHARED
				x.scan = scanNone
			} else {
				// Private file pages that were written (COWed) are anonymous now.
				x.kind = pb.VmaKind_VMA_FILE_PRIVATE
			}
		}
		out = append(out, x)
	}
	return out, nil
}

// hugetlbfsDev reports whether path, on device dev, is on a hugetlbfs
// mount; known holds the answers for devices asked before.
func hugetlbfsDev(path string, dev uint64, known map[uint64]bool) bool {
	is, ok := known[dev]
	if !ok {
		is = fsType(path) == unix.HUGETLBFS_MAGIC
		known[dev] = is
	}
	return is
}

// fsType is the magic number of the filesystem path is on, or 0.
func fsType(path string) int64 {
	var fs unix.Statfs_t
	if unix.Statfs(path, &fs) != nil {
		return 0
	}
	return fs.Type
}

func isSharedAnonPath(m *proc.Mapping) bool {
	return m.Path == "/dev/zero" && m.Deleted
}

// statMapped stats the file a mapping names, from root (proc.PathRoot), and
// checks that the path still names the mapped file: restore opens it by
// path.
func statMapped(pid int, root string, m *proc.Mapping, cache map[string]*unix.Stat_t) (*unix.Stat_t, error) {
	st, ok := cache[m.Path]
	if !ok {
		st = new(unix.Stat_t)
		if err := unix.Stat(filepath.Join(root, m.Path), st); err != nil {
			return nil, stage.Hint(fmt.Errorf("pid %d vma %x-%x: mapped file %s: %w", pid, m.Start, m.End, m.Path, err),
				"the file was removed or renamed since the process mapped it; restart the process, then checkpoint")
		}
		cache[m.Path] = st
	}
	if unix.Major(st.Dev) == m.Major && unix.Minor(st.Dev) == m.Minor && st.Ino == m.Inode {
		return st, nil
	}
	// maps may show another layer's device (overlayfs): ask map_files,
	// which is the mapped file itself.
	var mf unix.Stat_t
	err := unix.Stat(fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, m.Start, m.End), &mf)
	if err == nil && mf.Dev == st.Dev && mf.Ino == st.Ino {
		return st, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("pid %d vma %x-%x: %s: %w", pid, m.Start, m.End, m.Path, err)
	}
	return nil, unsupported(pid, m, fmt.Sprintf("mapping of %s, which has been replaced since it was mapped", m.Path),
		"restart the process so that it maps the current file, then checkpoint")
}
