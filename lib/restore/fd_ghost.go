package restore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// Files unlinked while open or mapped (ghost-file records, doc/files.md).
// Each is created when its record arrives, as an unlinked file in the
// directory it was deleted from, sized and given its owner and mode, and
// filled by the FileData records that follow it. Every fd (FD_GHOST), file
// VMA and exe link that names its dev and inode gets that one file, so
// they share it again.

func init() {
	registerRecord(image.TypeGhostFile, recordGhostFile)
	registerFdKind(pb.FdKind_FD_GHOST, openGhostFd)
}

func ghostKey(dev, ino uint64) string { return fmt.Sprintf("ghost:%d:%d", dev, ino) }

type ghostFile struct {
	rec *pb.GhostFile
	// f is the file: opened for writing while its contents arrive, then
	// (use) read-only, since a file open for writing cannot become a
	// process's exe (PR_SET_MM_EXE_FILE: EACCES).
	f    *os.File
	used bool
}

func (g *ghostFile) closeShared() {
	if g.f != nil {
		g.f.Close()
		g.f = nil
	}
}

func (g *ghostFile) writeData(off int64, data []byte) error {
	if g.used {
		return fmt.Errorf("contents of deleted file %s after the file was used: %w", g.rec.Path, image.ErrCorrupt)
	}
	if off < 0 || off+int64(len(data)) > g.rec.Size {
		return fmt.Errorf("contents of deleted file %s at %d-%d, beyond its size %d: %w", g.rec.Path, off, off+int64(len(data)), g.rec.Size, image.ErrCorrupt)
	}
	if _, err := g.f.WriteAt(data, off); err != nil {
		return fmt.Errorf("deleted file %s: %w", g.rec.Path, err)
	}
	return nil
}

func recordGhostFile(rc *Ctx, f *image.Frame) error {
	g := new(pb.GhostFile)
	if err := image.Unmarshal(f, g); err != nil {
		return err
	}
	at := fmt.Sprintf("frame %d at offset %d", f.Index, f.Offset)
	if g.Object == 0 || !filepath.IsAbs(g.Path) || g.Size < 0 || g.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s: ghost-file record for %q (object %d, size %d, mode %#o): %w", at, g.Path, g.Object, g.Size, g.Mode, image.ErrCorrupt)
	}
	key := ghostKey(g.Dev, g.Inode)
	if _, dup := rc.Shared[key]; dup {
		return fmt.Errorf("%s: second ghost-file record for dev:inode %d:%d: %w", at, g.Dev, g.Inode, image.ErrCorrupt)
	}
	if _, dup := rc.Shared[objectKey(g.Object)]; dup {
		return fmt.Errorf("%s: ghost-file record with object %d, which another record has: %w", at, g.Object, image.ErrCorrupt)
	}
	file, err := createGhost(g)
	if err != nil {
		return fmt.Errorf("%s: deleted file %s: %w", at, g.Path, err)
	}
	gf := &ghostFile{rec: g, f: file}
	rc.Shared[key] = gf
	rc.Shared[objectKey(g.Object)] = gf
	return nil
}

// createGhost makes an unlinked file with g's size, owner and mode on the
// filesystem of g's path: O_TMPFILE in its directory. When the directory
// is gone too, its nearest ancestor serves: that is the filesystem the
// directory was on (a directory can be removed only once nothing is
// mounted on it), and nothing can find an unlinked file by its directory.
func createGhost(g *pb.GhostFile) (*os.File, error) {
	dir := filepath.Dir(g.Path)
	var f *os.File
	for {
		var err error
		if f, err = tmpfile(dir, g.Mode&0o7777); err == nil {
			break
		}
		if !errors.Is(err, unix.ENOENT) || dir == "/" {
			return nil, fmt.Errorf("create in %s: %w", dir, err)
		}
		dir = filepath.Dir(dir)
	}
	if dir != filepath.Dir(g.Path) {
		stage.Logf("deleted file %s: its directory is gone, recreated in %s", g.Path, dir)
	} else if named, err := takeName(f, g.Path); err == nil {
		f.Close()
		f = named
	}
	fd := int(f.Fd())
	err := unix.Ftruncate(fd, g.Size)
	if err == nil {
		err = unix.Fchown(fd, int(g.Uid), int(g.Gid))
	}
	if err == nil {
		// After fchown, which clears set-user-ID and set-group-ID bits.
		err = unix.Fchmod(fd, g.Mode&0o7777)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// tmpfile opens a new unlinked file in dir for writing: O_TMPFILE, or on a
// filesystem without it a file created under a fresh name and unlinked.
func tmpfile(dir string, mode uint32) (*os.File, error) {
	n, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, mode)
	if err == nil {
		return os.NewFile(uintptr(n), dir), nil
	}
	if err != unix.EOPNOTSUPP && err != unix.EISDIR {
		return nil, err
	}
	f, err := os.CreateTemp(dir, ".crpipe-ghost-*")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// takeName gives the unlinked file f its old name in /proc (PATH
// (deleted)) where that path is free: f is linked there, opened by it and
// unlinked again. The name is visible for that moment only.
func takeName(f *os.File, path string) (*os.File, error) {
	if err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.AT_FDCWD, path, unix.AT_SYMLINK_FOLLOW); err != nil {
		return nil, err
	}
	n, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if rmErr := unix.Unlink(path); rmErr != nil && err == nil {
		unix.Close(n)
		return nil, rmErr
	}
	if err != nil {
		return nil, err
	}
	named := os.NewFile(uintptr(n), path)
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Fstat(n, &b) != nil || a.Dev != b.Dev || a.Ino != b.Ino {
		named.Close()
		return nil, errors.New("another file took the name")
	}
	return named, nil
}

// ghostFile returns the ghost file dev:ino, complete: its contents have
// all arrived (they follow its record), its times are set and no longer
// change, and from now on it is held read-only.
func (rc *Ctx) ghostFile(dev, ino uint64) (*ghostFile, bool, error) {
	g, ok := rc.Shared[ghostKey(dev, ino)].(*ghostFile)
	if !ok || g.used {
		return g, ok, nil
	}
	g.used = true
	ts := []unix.Timespec{unix.NsecToTimespec(g.rec.AtimeNsec), unix.NsecToTimespec(g.rec.MtimeNsec)}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", g.f.Fd()), ts, 0); err != nil {
		return nil, true, fmt.Errorf("deleted file %s: times: %w", g.rec.Path, err)
	}
	ro, err := reopen(g.f, unix.O_RDONLY)
	if err != nil {
		return nil, true, fmt.Errorf("deleted file %s: %w", g.rec.Path, err)
	}
	g.f.Close()
	g.f = ro
	return g, true, nil
}

// openGhostFd opens a description of a ghost file with the dumped flags
// and offset (shareDesc gives it to every fd of the description).
func openGhostFd(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	where := fmt.Sprintf("pid %d fd %d", t.pid, fd.Fd)
	g, ok, err := rc.ghostFile(fd.Dev, fd.Inode)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if !ok {
		return nil, fmt.Errorf("%s: %s: the stream has no ghost-file record for dev:inode %d:%d: %w", where, fd.Path, fd.Dev, fd.Inode, image.ErrCorrupt)
	}
	f, err := reopen(g.f, fd.Flags)
	if err != nil {
		return nil, fmt.Errorf("%s: deleted file %s: %w", where, g.rec.Path, err)
	}
	if _, err := unix.Seek(int(f.Fd()), fd.Offset, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: seek to %d: %w", where, fd.Offset, err)
	}
	return f, nil
}

// mappedGhost opens the ghost file a file VMA maps, if it maps one, for
// openMapped (mm.go).
func (rc *Ctx) mappedGhost(pid int, v *vma, flags int) (*os.File, bool, error) {
	where := fmt.Sprintf("pid %d: vma %#x-%#x", pid, v.Start, v.End)
	g, ok, err := rc.ghostFile(v.dev(), v.inode())
	if err != nil {
		return nil, true, fmt.Errorf("%s: %w", where, err)
	}
	if !ok {
		// Not a ghost: opened by its path, even one that ends in
		// " (deleted)", which a file may be named (cr-pages tells them
		// apart).
		return nil, false, nil
	}
	f, err := reopen(g.f, uint32(flags))
	if err != nil {
		return nil, true, fmt.Errorf("%s: deleted file %s: %w", where, g.rec.Path, err)
	}
	return f, true, nil
}

// openExe opens the file to set as t's exe: a binary deleted since it was
// started (replaced by an upgrade) is the ghost file its text is mapped
// from.
func (rc *Ctx) openExe(t *task, exe string) (*os.File, error) {
	if !strings.HasSuffix(exe, " (deleted)") {
		return os.Open(exe)
	}
	for i := range t.vmas {
		v := &t.vmas[i]
		if v.Path != exe {
			continue
		}
		f, ok, err := rc.mappedGhost(t.pid, v, unix.O_RDONLY)
		if ok {
			return f, err
		}
	}
	return nil, fmt.Errorf("%s was deleted and no mapping of it was dumped", exe)
}
