package files

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// dumpPipe records one end of a pipe or FIFO. The pipe itself (buffer size
// and unread data) is dumped with its first description: its data is read
// without consuming it, with tee(2) into a pipe of cr-files' own.
func (d *dumper) dumpPipe(ds *desc, rec *pb.FileDesc) error {
	e := ds.first()
	key := fmt.Sprintf("pipe:%d:%d", e.st.Dev, e.st.Ino)
	obj, isNew := d.object(key)
	rec.Object = obj
	rec.Pipe = &pb.PipeState{}
	if e.fifo {
		rec.Pipe.Fifo = e.link
		rec.Pipe.FifoDev = e.st.Dev
		rec.Pipe.FifoInode = e.st.Ino
	}
	if e.fi.flags&unix.O_DIRECT != 0 {
		// Packet mode is set by pipe2(O_DIRECT) for both ends, and fcntl
		// cannot change it; the packet boundaries of unread data are not
		// visible either.
		return refuse(e.pid, e.fd, "packet-mode (O_DIRECT) pipe", e.link)
	}
	f, err := d.getfd(e)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := unix.FcntlInt(f.Fd(), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		return cannot(e, "F_GETPIPE_SZ: %v", err)
	}
	rec.Pipe.Size = uint32(size)
	if !isNew {
		return nil
	}
	// Data is read through a read end; a pipe that only has write ends in the
	// dump has no reader anywhere (checkHolders makes sure), so its data can
	// never be read and is left out.
	reader := d.pipeReader(e.st.Dev, e.st.Ino)
	if reader == nil {
		return nil
	}
	rf := f
	if reader != e {
		if rf, err = d.getfd(reader); err != nil {
			return err
		}
		defer rf.Close()
	}
	data, err := peekPipe(rf, size)
	if err != nil {
		return cannot(reader, "%v", err)
	}
	rec.Pipe.DataBytes = uint32(len(data))
	for off := 0; off < len(data); off += stage.ContentsChunk {
		end := min(off+stage.ContentsChunk, len(data))
		ds.data = append(ds.data, &pb.FileData{Object: obj, Offset: int64(off), Data: data[off:end]})
	}
	stage.Logf("pid %d fd %d: %s: %d unread bytes, buffer %d", e.pid, e.fd, strings.TrimSpace(e.link), len(data), size)
	return nil
}

// pipeReader returns the first description of the dump (in d.descs'
// order) that can read the pipe dev:ino, or nil. The index is made once:
// a search of every description for each pipe took most of cr-files' time
// for a process with 4,000 pipes.
func (d *dumper) pipeReader(dev, ino uint64) *entry {
	if d.pipeReaders == nil {
		d.pipeReaders = map[[2]uint64]*entry{}
		for _, other := range d.descs {
			o := other.first()
			key := [2]uint64{o.st.Dev, o.st.Ino}
			if o.kind() == pb.FdKind_FD_PIPE && o.fi.flags&unix.O_ACCMODE != unix.O_WRONLY && d.pipeReaders[key] == nil {
				d.pipeReaders[key] = o
			}
		}
	}
	return d.pipeReaders[[2]uint64{dev, ino}]
}

// peekPipe returns the unread contents of the pipe r reads, leaving them in
// the pipe: tee(2) duplicates the pipe's buffers into a private pipe of the
// same size, which is then read.
func peekPipe(r *os.File, size int) ([]byte, error) {
	n, err := unix.IoctlGetInt(int(r.Fd()), unix.TIOCINQ)
	if err != nil {
		return nil, fmt.Errorf("FIONREAD: %w", err)
	}
	if n == 0 {
		return nil, nil
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("pipe: %w", err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, size); err != nil {
		return nil, fmt.Errorf("F_SETPIPE_SZ %d on a private pipe: %w", size, err)
	}
	copied, err := unix.Tee(int(r.Fd()), p[1], n, unix.SPLICE_F_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("tee: %w", err)
	}
	if int(copied) != n {
		return nil, fmt.Errorf("tee copied %d of the %d unread bytes", copied, n)
	}
	var buf bytes.Buffer
	chunk := make([]byte, 64<<10)
	for buf.Len() < n {
		m, err := unix.Read(p[0], chunk)
		if err != nil {
			return nil, fmt.Errorf("read the copy: %w", err)
		}
		if m == 0 {
			break
		}
		buf.Write(chunk[:m])
	}
	if buf.Len() != n {
		return nil, fmt.Errorf("read %d of the %d unread bytes", buf.Len(), n)
	}
	return buf.Bytes(), nil
}
