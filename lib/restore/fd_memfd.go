package restore

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/sys"
)

// memfd: created when its first description's record arrives, sized, and
// filled by the FileData records that follow; mode and seals are set when
// the first fd is installed (every byte has arrived by then), and each
// description gets its own offset and flags. A memfd that VMAs of the dump
// map too is the one made for them (MemfdState.mapped).

func init() {
	registerFdKind(pb.FdKind_FD_MEMFD, openMemfd)
	descPreparers[pb.FdKind_FD_MEMFD] = prepareMemfd
}

type memfdObj struct {
	f      *os.File
	sealed bool
	usedRW bool
}

func (m *memfdObj) closeShared() { m.f.Close() }

func (m *memfdObj) writeData(off int64, data []byte) error {
	if _, err := m.f.WriteAt(data, off); err != nil {
		return fmt.Errorf("memfd contents: %w", err)
	}
	return nil
}

func prepareMemfd(rc *Ctx, d *pb.FileDesc) error {
	if d.Memfd == nil {
		return fmt.Errorf("memfd description without memfd state")
	}
	key := objectKey(d.Object)
	if _, ok := rc.Shared[key]; ok {
		return nil
	}
	if d.Memfd.Mapped {
		// Made for the VMAs that map it, with its name, size, mode and
		// seals, and filled with their pages: by the first of them (cr-pages
		// before cr-files), or here for them to map (cr-files first).
		shmem := shmemKey(d.Memfd.Dev, d.Inode)
		mapped, ok := rc.Shared[shmem].(*os.File)
		if !ok {
			var err error
			if mapped, err = newMappedMemfd(d.Memfd); err != nil {
				return err
			}
			rc.Shared[shmem] = mapped
			rc.owned = append(rc.owned, mapped)
			if rc.awaitingVma == nil {
				rc.awaitingVma = map[string]string{}
			}
			rc.awaitingVma[shmem] = fmt.Sprintf("memfd %q (dev %d inode %d)", d.Memfd.Name, d.Memfd.Dev, d.Inode)
		}
		f, err := sys.Dup(mapped)
		if err != nil {
			return fmt.Errorf("memfd %q: %w", d.Memfd.Name, err)
		}
		rc.Shared[key] = &memfdObj{f: f, sealed: true}
		return nil
	}
	n, err := unix.MemfdCreate(d.Memfd.Name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return fmt.Errorf("memfd_create %q: %w", d.Memfd.Name, err)
	}
	m := &memfdObj{f: os.NewFile(uintptr(n), "memfd:"+d.Memfd.Name)}
	if err := unix.Ftruncate(n, d.Memfd.Size); err != nil {
		m.closeShared()
		return fmt.Errorf("memfd %q: size %d: %w", d.Memfd.Name, d.Memfd.Size, err)
	}
	rc.Shared[key] = m
	return nil
}

// checkMemfdsMapped refuses a stream whose description of a memfd said
// VMAs map it where none did: its contents were in no record.
func (rc *Ctx) checkMemfdsMapped() error {
	for _, what := range rc.awaitingVma {
		return fmt.Errorf("%s: its description says VMAs map it, and none of the stream does: %w", what, image.ErrCorrupt)
	}
	return nil
}

func openMemfd(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	d, err := fileDesc(rc, t, fd)
	if err != nil {
		return nil, err
	}
	where := fmt.Sprintf("pid %d fd %d", t.pid, fd.Fd)
	m, ok := rc.Shared[objectKey(d.Object)].(*memfdObj)
	if !ok || d.Memfd == nil {
		return nil, fmt.Errorf("%s: memfd object %d was not created", where, d.Object)
	}
	if !m.sealed {
		m.sealed = true
		if err := m.f.Chmod(os.FileMode(d.Memfd.Mode & 0o777)); err != nil {
			return nil, fmt.Errorf("%s: memfd mode %#o: %w", where, d.Memfd.Mode, err)
		}
		// A memfd created without MFD_ALLOW_SEALING has just F_SEAL_SEAL.
		if s := d.Memfd.Seals; s != 0 {
			if _, err := unix.FcntlInt(m.f.Fd(), unix.F_ADD_SEALS, int(s)); err != nil {
				return nil, fmt.Errorf("%s: memfd seals %#x: %w", where, s, err)
			}
		}
	}
	var f *os.File
	if d.Flags&unix.O_ACCMODE == unix.O_RDWR && !m.usedRW {
		m.usedRW = true
		f, err = sys.Dup(m.f)
	} else {
		f, err = reopen(m.f, d.Flags&^unix.O_NONBLOCK)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if _, err := unix.Seek(int(f.Fd()), d.Pos, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: seek to %d: %w", where, d.Pos, err)
	}
	if err := setStatusFlags(f, d.Flags); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return f, nil
}
