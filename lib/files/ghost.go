package files

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// Regular files unlinked while open (FD_GHOST): the file's contents, size,
// mode, owner and times go into the image as a ghost-file record, and
// a restore recreates it as an unlinked file. The fd itself needs nothing
// more than Fd already says (flags, offset, dev and inode of its file).
// A file a process also maps was written by cr-pages, before the Mm record
// that maps it: it is not written again.

// ghost is a ghost-file record to write, and a copy of an fd to read its
// contents from.
type ghost struct {
	rec *pb.GhostFile
	f   *os.File
}

func (d *dumper) dumpGhost(ds *desc) error {
	e := ds.first()
	if _, ok := d.up.Ghosts[stage.GhostKey{Dev: e.st.Dev, Ino: e.st.Ino}]; ok {
		return nil
	}
	obj, isNew := d.object(fmt.Sprintf("ghost:%d:%d", e.st.Dev, e.st.Ino))
	if !isNew {
		return nil
	}
	path := strings.TrimSuffix(e.link, " (deleted)")
	if e.st.Size > d.opts.GhostLimit {
		return stage.GhostTooBig(fmt.Sprintf("pid %d fd %d", e.pid, e.fd), path, e.st.Size, d.opts.GhostLimit)
	}
	// Read through a description of cr-files' own: the process's may be
	// write-only (/proc/PID/fd/N opens the deleted file itself).
	f, err := os.OpenFile(procPath(e.pid, "fd", strconv.Itoa(e.fd)), os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("pid %d fd %d: deleted file %s: %w", e.pid, e.fd, path, err)
	}
	var st unix.Stat_t // owner and times too, which the entry does not keep
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return fmt.Errorf("pid %d fd %d: fstat: %w", e.pid, e.fd, err)
	}
	if st.Dev != e.st.Dev || st.Ino != e.st.Ino {
		f.Close()
		return fmt.Errorf("pid %d fd %d: deleted file %s: /proc opened another file (dev %d inode %d, not %d %d)", e.pid, e.fd, path, st.Dev, st.Ino, e.st.Dev, e.st.Ino)
	}
	d.ghosts = append(d.ghosts, ghost{rec: stage.NewGhost(obj, path, &st), f: d.keep(f)})
	return nil
}

func (d *dumper) writeGhosts(w *image.Writer) error {
	for _, g := range d.ghosts {
		kept, err := stage.WriteGhost(w, g.rec, g.f)
		if err != nil {
			return err
		}
		stage.Logf("deleted file %s: %d bytes, %d kept", g.rec.Path, g.rec.Size, kept)
	}
	return nil
}
