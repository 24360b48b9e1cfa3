package restore

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/sys"
)

// Pipes and FIFOs. The coordinator creates each pipe once (a FIFO: opens
// its path O_RDWR, which never blocks and keeps it alive), sizes its buffer,
// writes the unread data back in order, and hands each end to the
// descriptions that hold it. Ends no description uses stay with the
// coordinator until every task runs, then close: a reader whose writer was
// gone sees its data and then the end of file, as it would have.

func init() {
	registerFdKind(pb.FdKind_FD_PIPE, openPipe)
	descPreparers[pb.FdKind_FD_PIPE] = preparePipe
}

type pipeObj struct {
	r, w         *os.File // a FIFO: both are one O_RDWR file
	fifo         string
	usedR, usedW bool
	written      int64
}

func (p *pipeObj) closeShared() {
	p.r.Close()
	if p.w != p.r {
		p.w.Close()
	}
}

// writeData puts unread bytes back, in order. The buffer was sized first,
// and the write end is non-blocking meanwhile, so a wrong image fails
// instead of hanging.
func (p *pipeObj) writeData(off int64, data []byte) error {
	if off != p.written {
		return fmt.Errorf("pipe data at %d, %d bytes written so far", off, p.written)
	}
	fd := int(p.w.Fd())
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_NONBLOCK); err != nil {
		return err
	}
	defer unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl)
	for len(data) > 0 {
		n, err := unix.Write(fd, data)
		if err != nil {
			return fmt.Errorf("write unread data back into the pipe: %w", err)
		}
		data = data[n:]
		p.written += int64(n)
	}
	return nil
}

func preparePipe(rc *Ctx, d *pb.FileDesc) error {
	if d.Pipe == nil {
		return fmt.Errorf("pipe description without pipe state")
	}
	key := objectKey(d.Object)
	if _, ok := rc.Shared[key]; ok {
		return nil
	}
	p := &pipeObj{fifo: d.Pipe.Fifo}
	if p.fifo == "" {
		var err error
		if p.r, p.w, err = sys.Pipe("pipe"); err != nil {
			return err
		}
	} else {
		fd, err := unix.Open(p.fifo, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open FIFO %s: %w", p.fifo, err)
		}
		p.r = os.NewFile(uintptr(fd), p.fifo)
		p.w = p.r
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			p.closeShared()
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFIFO || (d.Pipe.FifoInode != 0 && (st.Dev != d.Pipe.FifoDev || st.Ino != d.Pipe.FifoInode)) {
			p.closeShared()
			return fmt.Errorf("%s is no longer the FIFO the process had open (inode %d, was %d)", p.fifo, st.Ino, d.Pipe.FifoInode)
		}
		// A FIFO that someone else holds open keeps its old buffer: the data
		// would be doubled. cr-files refuses such FIFOs; check again here.
		if n, err := unix.IoctlGetInt(fd, unix.TIOCINQ); err == nil && n != 0 {
			p.closeShared()
			return fmt.Errorf("FIFO %s already holds %d bytes: another process has it open", p.fifo, n)
		}
	}
	if d.Pipe.Size != 0 {
		if _, err := unix.FcntlInt(p.w.Fd(), unix.F_SETPIPE_SZ, int(d.Pipe.Size)); err != nil {
			p.closeShared()
			return fmt.Errorf("F_SETPIPE_SZ %d: %w", d.Pipe.Size, err)
		}
	}
	rc.Shared[key] = p
	return nil
}

func openPipe(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	d, err := fileDesc(rc, t, fd)
	if err != nil {
		return nil, err
	}
	where := fmt.Sprintf("pid %d fd %d", t.pid, fd.Fd)
	p, ok := rc.Shared[objectKey(d.Object)].(*pipeObj)
	if !ok {
		return nil, fmt.Errorf("%s: pipe object %d was not created", where, d.Object)
	}
	if d.Pipe != nil && int64(d.Pipe.DataBytes) != p.written && d.Pipe.DataBytes != 0 {
		return nil, fmt.Errorf("%s: the image announces %d unread bytes in the pipe, it holds %d", where, d.Pipe.DataBytes, p.written)
	}
	var f *os.File
	acc := d.Flags & unix.O_ACCMODE
	switch {
	case p.fifo == "" && acc == unix.O_RDONLY && !p.usedR:
		p.usedR = true
		f, err = sys.Dup(p.r)
	case p.fifo == "" && acc == unix.O_WRONLY && !p.usedW:
		p.usedW = true
		f, err = sys.Dup(p.w)
	case acc == unix.O_WRONLY:
		f, err = reopen(p.w, d.Flags&^unix.O_NONBLOCK)
	default: // another description of a read end, or O_RDWR
		f, err = reopen(p.r, d.Flags&^unix.O_NONBLOCK)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if err := setStatusFlags(f, d.Flags); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return f, nil
}
