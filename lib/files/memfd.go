package files

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// maxMemfd caps the contents of one memfd kept in an image.
const maxMemfd = 1 << 30

// dumpMemfd records a memfd description; the file (name, size, seals, mode
// and contents) goes with its first description. Contents are read as the
// output is written (stage.WriteContents) from a copy of the fd; those of a
// memfd that a process of the dump maps are in its pages instead (a JVM's
// ZGC heap: three views of one memfd it keeps open).
func (d *dumper) dumpMemfd(ds *desc, rec *pb.FileDesc) error {
	e := ds.first()
	obj, isNew := d.object(fmt.Sprintf("memfd:%d:%d", e.st.Dev, e.st.Ino))
	rec.Object = obj
	name := strings.TrimSuffix(strings.TrimPrefix(e.link, "/memfd:"), " (deleted)")
	rec.Memfd = &pb.MemfdState{Name: name, Size: e.st.Size, Mode: e.st.Mode & 0o7777}
	f, err := d.getfd(e)
	if err != nil {
		return err
	}
	d.keep(f)
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil {
		return cannot(e, "fstatfs: %v", err)
	}
	if fs.Type == unix.HUGETLBFS_MAGIC {
		return refuse(e.pid, e.fd, "hugetlb memfd", e.link)
	}
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		return cannot(e, "F_GET_SEALS: %v", err)
	}
	rec.Memfd.Seals = uint32(seals)
	if !isNew {
		return nil
	}
	if pid, ok := d.mapped(e.st.Dev, e.st.Ino); ok {
		// Its contents are the pages of those VMAs (cr-pages dumps every
		// page of it that holds data, or refuses it), and a restore opens
		// the memfd it makes for them.
		rec.Memfd.Mapped, rec.Memfd.Dev = true, e.st.Dev
		stage.Logf("pid %d fd %d: memfd %q: mapped by pid %d too: its contents go with the mapping", e.pid, e.fd, name, pid)
		return nil
	}
	if e.st.Size > maxMemfd {
		return stage.Hint(cannot(e, "%d bytes is more than the %d cr-files keeps of a memfd", e.st.Size, maxMemfd), "shrink or close the memfd before checkpointing")
	}
	ds.contents, ds.contentsSize = f, e.st.Size
	stage.Logf("pid %d fd %d: memfd %q: %d bytes, seals %#x", e.pid, e.fd, name, e.st.Size, seals)
	return nil
}

// mapped reports a process of the dump that maps the file dev:ino.
func (d *dumper) mapped(dev, ino uint64) (int, bool) {
	want := fmt.Sprintf(" %02x:%02x %d ", unix.Major(dev), unix.Minor(dev), ino)
	for _, fs := range d.files {
		b, err := os.ReadFile(procPath(int(fs.Pid), "maps"))
		if err == nil && strings.Contains(string(b), want) {
			return int(fs.Pid), true
		}
	}
	return 0, false
}
