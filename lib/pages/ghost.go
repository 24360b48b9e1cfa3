package pages

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
)

// Mappings of files unlinked since they were mapped: a library or binary
// replaced by a package upgrade, or a temporary file mapped and then
// unlinked. Their contents go into the image as a ghost-file record
// (lib/stage/ghost.go), written just before the Mm record of the first
// process that maps the file, since a restore maps the VMAs of an Mm
// record as it arrives. The VMA names the file by dev and inode; its path
// keeps the " (deleted)" the kernel shows.

// Options are cr-pages' flags.
type Options struct {
	// GhostLimit is the largest deleted mapped file whose contents go
	// into the image (--ghost-limit); a bigger one is refused.
	GhostLimit int64
	// Lend has the larger processes lend their private anonymous pages
	// instead of their being copied (lend.go): for a dump whose processes
	// are killed, or stay frozen, until the image is read to the end.
	Lend bool
	// LendMin: a process with less private anonymous memory is copied
	// all the same (lendMinAnon, or CRPIPE_LEND_MIN).
	LendMin int64
}

var defaultOptions = Options{GhostLimit: stage.DefaultGhostLimit, LendMin: lendMinAnon}

// isGhostMapping: a deleted file that may have been a real file at its
// path (kernel-internal objects with made-up names are sorted out by
// ghostVma). Shared anonymous memory, hugetlb, memfd and System V shared
// memory show " (deleted)" too and are dealt with elsewhere.
func isGhostMapping(m *proc.Mapping) bool {
	return m.Deleted && strings.HasPrefix(m.Path, "/") && !strings.HasPrefix(m.Path, "/memfd:") &&
		!strings.HasPrefix(m.Path, "/SYSV") && !strings.HasPrefix(m.Path, "/[")
}

// mapFile is /proc/PID/map_files/START-END: the mapped file itself.
func mapFile(pid int, m *proc.Mapping) string {
	return fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, m.Start, m.End)
}

const deletedSuffix = " (deleted)"

// namedDeleted reports whether m, which maps shows as deleted, maps a file
// whose name ends in " (deleted)": /proc cannot tell the two apart, but
// the path with the suffix then names the mapped file itself.
func namedDeleted(pid int, root string, m *proc.Mapping) bool {
	var named, mapped unix.Stat_t
	if unix.Stat(filepath.Join(root, m.Path+deletedSuffix), &named) != nil || unix.Stat(mapFile(pid, m), &mapped) != nil {
		return false
	}
	return named.Dev == mapped.Dev && named.Ino == mapped.Ino
}

// ghostVma fills in the VMA of a mapping of a deleted file, or refuses it.
func ghostVma(pid int, x *vma) error {
	m, mapped := x.m, mapFile(pid, x.m)
	var st unix.Stat_t
	if err := unix.Stat(mapped, &st); err != nil {
		return fmt.Errorf("pid %d vma %x-%x: deleted file %s: %w", pid, m.Start, m.End, m.Path, err)
	}
	fsMagic := fsType(mapped)
	if fsMagic == unix.SECRETMEM_MAGIC {
		// Its pages are taken out of the kernel's own mapping: nothing
		// but the process can read them (process_vm_readv fails).
		return unsupported(pid, m, "memory of memfd_secret(2) (/secretmem), which no other process can read", "")
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || fsMagic == unix.HUGETLBFS_MAGIC {
		return unsupported(pid, m, fmt.Sprintf("mapping of deleted %s (mode %#o, not a regular file or on hugetlbfs)", m.Path, st.Mode), "")
	}
	if st.Nlink > 0 {
		return unsupported(pid, m, fmt.Sprintf("mapping of %s, deleted but linked under %d other name(s) cr-pages cannot find", m.Path, st.Nlink),
			"restart the process so that it maps the file by a name it has, then checkpoint")
	}
	// A file that was linked at its path is on the filesystem of its
	// directory (a restore recreates it there, or in the nearest directory
	// above when that is gone too); objects the kernel names itself
	// ("/i915", "/drm mm object") are not. Overlayfs maps the file of the
	// layer below, so there the filesystem type is what tells.
	var dir unix.Stat_t
	root := proc.PathRoot(pid)
	dirPath := filepath.Join(root, filepath.Dir(m.Path))
	for unix.Stat(dirPath, &dir) != nil && dirPath != root {
		dirPath = filepath.Dir(dirPath)
	}
	if dir.Dev != st.Dev && fsType(dirPath) != unix.OVERLAYFS_SUPER_MAGIC {
		return unsupported(pid, m, fmt.Sprintf("mapping of %s (deleted), which is not a file of the filesystem at that path", m.Path),
			"the program maps a kernel object (a device's memory?); restart it without, then checkpoint")
	}
	// Its record names it with the suffix (vma.fill).
	x.obj, x.scan, x.kind = &vmaObject{file: &st}, scanFilePrivate, pb.VmaKind_VMA_FILE_PRIVATE
	if m.Shared {
		// Shared pages live in the file, whose contents the image has.
		x.kind, x.scan = pb.VmaKind_VMA_FILE_SHARED, scanNone
	}
	return nil
}

// ghosts writes each deleted mapped file once per dump.
type ghosts struct {
	opts    Options
	up      *stage.Upstream // ghost files and objects written before cr-pages
	written map[stage.GhostKey]bool
	objects uint64
}

func newGhosts(opts Options, up *stage.Upstream) *ghosts {
	if up == nil {
		up = &stage.Upstream{}
	}
	return &ghosts{opts: opts, up: up, written: map[stage.GhostKey]bool{}, objects: up.Objects}
}

// write writes the ghost files pr maps that no record before has.
func (g *ghosts) write(w *image.Writer, pr *prepared) error {
	byPath := map[string]stage.GhostKey{}
	for i := range pr.vmas {
		x := &pr.vmas[i]
		m := x.m
		if !m.Deleted || (x.kind != pb.VmaKind_VMA_FILE_PRIVATE && x.kind != pb.VmaKind_VMA_FILE_SHARED) {
			continue
		}
		dev, ino := x.object()
		key, path := stage.GhostKey{Dev: dev, Ino: ino}, m.Path+deletedSuffix
		// A restore opens a process's mapped files once per path.
		if k, ok := byPath[path]; ok && k != key {
			return unsupported(pr.pid, m, fmt.Sprintf("mapping of %s, a second deleted file of that name", path), "restart the process, then checkpoint")
		}
		byPath[path] = key
		if _, ok := g.up.Ghosts[key]; ok || g.written[key] {
			continue
		}
		where := fmt.Sprintf("pid %d vma %x-%x", pr.pid, m.Start, m.End)
		if err := g.writeOne(w, where, mapFile(pr.pid, m), m.Path, key); err != nil {
			return err
		}
		g.written[key] = true
	}
	return nil
}

func (g *ghosts) writeOne(w *image.Writer, where, mapped, path string, key stage.GhostKey) error {
	f, err := os.Open(mapped)
	if err != nil {
		return fmt.Errorf("%s: deleted file %s: %w", where, path, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("%s: deleted file %s: %w", where, path, err)
	}
	if st.Dev != key.Dev || st.Ino != key.Ino {
		return fmt.Errorf("%s: deleted file %s changed while frozen", where, path)
	}
	if st.Size > g.opts.GhostLimit {
		return stage.GhostTooBig(where, path, st.Size, g.opts.GhostLimit)
	}
	g.objects++
	kept, err := stage.WriteGhost(w, stage.NewGhost(g.objects, path, &st), f)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	stage.Logf("%s: deleted file %s: %d bytes, %d kept", where, path, st.Size, kept)
	return nil
}
