package restore

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/sys"
)

// Open file descriptions (cr-files, issue 5). Every dumped fd names its
// description by desc_id; the description is opened once, whatever its kind,
// and every fd that shares it (in one process or several) gets a duplicate
// of that one file, so offsets and status flags move together again.
// Kinds that need more than a path have a FileDesc record with the id; the
// kernel objects behind them (a pipe, a memfd, a socket pair) are created
// here once and handed to each description that refers to them.

func init() {
	registerRecord(image.TypeFileDesc, recordFileDesc)
	registerRecord(image.TypeFileData, recordFileData)
	registerFinisher(closeShared)
}

// descKey and objectKey are the Ctx.Shared keys of this file's state.
func descKey(id uint64) string     { return fmt.Sprintf("desc:%d", id) }
func descFileKey(id uint64) string { return fmt.Sprintf("desc-file:%d", id) }
func objectKey(n uint64) string    { return fmt.Sprintf("object:%d", n) }

// sharedCloser is state in Ctx.Shared that holds files of ours: closed by
// closeShared once every task runs (or when cr-restore exits).
type sharedCloser interface{ closeShared() }

type sharedFile struct {
	*os.File
	kind uint32 // the pb.FdKind of the fd that opened it
}

func (f sharedFile) closeShared() { f.File.Close() }

// shareDesc wraps an fd kind's opener: a description already opened for
// another fd is duplicated instead of opened again.
func shareDesc(open fdOpener) fdOpener {
	return func(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
		if fd.DescId == 0 { // an image from before desc_id
			return open(rc, t, fd)
		}
		key := descFileKey(fd.DescId)
		if f, ok := rc.Shared[key].(sharedFile); ok {
			if f.kind != fd.Kind {
				return nil, fmt.Errorf("pid %d fd %d: a %v, of description %d, which another fd opened as a %v: %w",
					t.pid, fd.Fd, pb.FdKind(fd.Kind), fd.DescId, pb.FdKind(f.kind), image.ErrCorrupt)
			}
			return dupFile(f.File, t, fd)
		}
		if rc.descUses != nil && rc.descUses[fd.DescId] == 1 {
			// Its only use: nothing to keep (a process with 14,000 fds
			// made cr-restore hold 28,000 files).
			return open(rc, t, fd)
		}
		f, err := open(rc, t, fd)
		if err != nil {
			return nil, err
		}
		if g, ok := rc.Shared[key].(sharedFile); ok {
			// Opened meanwhile: a unix socket in flight in a queue its
			// opening wrote (fd_scm.go).
			f.Close()
			return dupFile(g.File, t, fd)
		}
		rc.Shared[key] = sharedFile{f, fd.Kind}
		return dupFile(f, t, fd)
	}
}

// countDescUses sets rc.descUses once the whole stream is read: each fd of
// every process opens its description once, and so does each queued unix
// message that carries it. A description used once need not be kept.
func (rc *Ctx) countDescUses() {
	uses := map[uint64]int{}
	for _, t := range rc.Order {
		if t.files != nil {
			for _, fd := range t.files.Fds {
				uses[fd.DescId]++
			}
		}
	}
	for _, v := range rc.Shared {
		if d, ok := v.(*pb.FileDesc); ok && d.Unix != nil {
			for _, m := range d.Unix.Queue {
				for _, id := range m.Fds {
					uses[id]++
				}
			}
		}
	}
	rc.descUses = uses
}

// dupFile returns a new *os.File for the same open file description.
func dupFile(f *os.File, t *task, fd *pb.Fd) (*os.File, error) {
	d, err := sys.Dup(f)
	if err != nil {
		return nil, fmt.Errorf("pid %d fd %d: %w", t.pid, fd.Fd, err)
	}
	return d, nil
}

// closeShared closes the coordinator's copies of descriptions and objects.
// Until now they kept, e.g., a pipe's unused end open, so that no restored
// reader saw an end of file before every task ran.
func closeShared(rc *Ctx) error {
	for k, v := range rc.Shared {
		if c, ok := v.(sharedCloser); ok {
			c.closeShared()
			delete(rc.Shared, k)
		}
	}
	return nil
}

func recordFileDesc(rc *Ctx, f *image.Frame) error {
	d := new(pb.FileDesc)
	if err := image.Unmarshal(f, d); err != nil {
		return err
	}
	if d.Id == 0 {
		return fmt.Errorf("frame %d at offset %d: file-desc without an id: %w", f.Index, f.Offset, image.ErrCorrupt)
	}
	if _, dup := rc.Shared[descKey(d.Id)]; dup {
		return fmt.Errorf("frame %d at offset %d: second file-desc record for description %d: %w", f.Index, f.Offset, d.Id, image.ErrCorrupt)
	}
	rc.Shared[descKey(d.Id)] = d
	if prep, ok := descPreparers[pb.FdKind(d.Kind)]; ok {
		if err := prep(rc, d); err != nil {
			return fmt.Errorf("frame %d: description %d: %w", f.Index, d.Id, err)
		}
	}
	return nil
}

// descPreparers run when a FileDesc record arrives, before the contents of
// its object (FileData records) follow: a pipe or memfd is created then, so
// its contents stream into it with constant memory.
var descPreparers = map[pb.FdKind]func(rc *Ctx, d *pb.FileDesc) error{}

// dataSink receives an object's FileData records.
type dataSink interface {
	writeData(offset int64, data []byte) error
}

func recordFileData(rc *Ctx, f *image.Frame) error {
	d := new(pb.FileData)
	if err := image.Unmarshal(f, d); err != nil {
		return err
	}
	sink, ok := rc.Shared[objectKey(d.Object)].(dataSink)
	if !ok {
		return fmt.Errorf("frame %d at offset %d: file-data for object %d, which no file-desc record before it created: %w", f.Index, f.Offset, d.Object, image.ErrCorrupt)
	}
	if err := sink.writeData(d.Offset, d.Data); err != nil {
		return fmt.Errorf("frame %d: object %d: %w", f.Index, d.Object, err)
	}
	return nil
}

// fileDesc returns the FileDesc record of fd, checking its kind.
func fileDesc(rc *Ctx, t *task, fd *pb.Fd) (*pb.FileDesc, error) {
	d, ok := rc.Shared[descKey(fd.DescId)].(*pb.FileDesc)
	if !ok {
		return nil, fmt.Errorf("pid %d fd %d: the stream has no file-desc record for its description %d: %w", t.pid, fd.Fd, fd.DescId, image.ErrCorrupt)
	}
	if d.Kind != fd.Kind {
		return nil, fmt.Errorf("pid %d fd %d: description %d is a %v, the fd a %v: %w", t.pid, fd.Fd, fd.DescId, pb.FdKind(d.Kind), pb.FdKind(fd.Kind), image.ErrCorrupt)
	}
	return d, nil
}

// setStatusFlags gives a created file the dumped status flags that fcntl
// can set (O_NONBLOCK, O_APPEND, O_DIRECT, O_NOATIME). O_ASYNC comes last,
// from the task (fd_owner.go).
func setStatusFlags(f *os.File, flags uint32) error {
	const settable = unix.O_NONBLOCK | unix.O_APPEND | unix.O_DIRECT | unix.O_NOATIME
	cur, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("F_GETFL: %w", err)
	}
	want := cur&^settable | int(flags)&settable
	if want == cur {
		return nil
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_SETFL, want); err != nil {
		return fmt.Errorf("F_SETFL %#o: %w", want, err)
	}
	return nil
}

// reopen opens another description of the file f (by /proc/self/fd), as
// open(2) of a FIFO or memfd by that path would.
// (unix.Open, not os.OpenFile, which would switch a blocking file to
// O_NONBLOCK until its Fd method is called).
func reopen(f *os.File, flags uint32) (*os.File, error) {
	path := fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	// Not O_NOFOLLOW, which the kernel keeps in the flags of a file opened
	// with it (mkstemp does): the path is a link to the file, and would
	// fail with ELOOP (found restoring gunicorn's worker heartbeat files).
	n, err := unix.Open(path, reopenFlags(flags)&^unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reopen %s: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(n), f.Name()), nil
}
