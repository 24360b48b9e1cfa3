package image

import (
	"io"
	"os"
	"runtime/debug"
	"syscall"
)

// mapMin: pages payloads this large are mapped rather than read when the
// stream is a regular file; smaller ones cost less to copy.
const mapMin = PagesPreamble + 64<<10

// mappedFile lets a Reader of an uncompressed stream in a regular file map
// large pages payloads instead of copying them with read(2): a consumer
// such as cr-restore then hands the file's page cache straight to
// process_vm_writev, and an image on tmpfs is copied once, into the task.
// Each mapping lives until the next Next, so memory stays bounded.
type mappedFile struct {
	f    *os.File
	base int64 // file offset of stream offset 0
}

func newMappedFile(in io.Reader) *mappedFile {
	f, ok := in.(*os.File)
	if !ok {
		return nil
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return nil
	}
	pos, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil
	}
	return &mappedFile{f: f, base: pos}
}

// mapRange maps n bytes at stream offset off. It returns nil (and the
// caller reads instead, reporting any truncation) when the file does not
// hold them or cannot be mapped.
func (m *mappedFile) mapRange(off int64, n int) ([]byte, func()) {
	st, err := m.f.Stat()
	fo := m.base + off
	if err != nil || fo+int64(n) > st.Size() {
		return nil, nil
	}
	pg := int64(os.Getpagesize())
	start := fo &^ (pg - 1)
	mem, err := syscall.Mmap(int(m.f.Fd()), start, int(fo+int64(n)-start), syscall.PROT_READ, syscall.MAP_SHARED|syscall.MAP_POPULATE)
	if err != nil {
		return nil, nil
	}
	return mem[fo-start:], func() { syscall.Munmap(mem) }
}

// skip moves the file position n bytes on (past a mapped payload).
func (m *mappedFile) skip(n int64) error {
	_, err := m.f.Seek(n, io.SeekCurrent)
	return err
}

// crcMapped is the checksum of mapped bytes. A file truncated under the
// mapping faults instead of reading; that is reported as a truncated stream.
func crcMapped(crc uint32, p []byte) (sum uint32, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = io.ErrUnexpectedEOF
		}
	}()
	for len(p) > 0 {
		n := min(len(p), crcPiece)
		crc = crcUpdate(crc, p[:n])
		p = p[n:]
	}
	return crc, nil
}
