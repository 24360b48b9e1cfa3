package stage

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/cli"
	"crpipe/lib/image"
	"crpipe/lib/pb"
)

// Files unlinked while a process holds them open or mapped ("ghost files",
// doc/files.md): their contents go into the image. cr-pages writes those a
// process maps (before its Mm record, which a restore maps as it arrives),
// cr-files those only fds hold; what the two share is here.

// DefaultGhostLimit is the largest ghost file kept by default.
const DefaultGhostLimit = 64 << 20

// GhostLimitFlag is --ghost-limit of cr-pages, cr-files and cr-dump.
var GhostLimitFlag = &cli.StringFlag{Name: "ghost-limit", Value: "64M",
	Usage: "keep the contents of files deleted while open or mapped up to `SIZE` bytes each (suffix K, M or G); bigger ones are refused"}

// GhostLimit reads --ghost-limit.
func GhostLimit(c *cli.Context) (int64, error) {
	n, err := ParseSize(c.String(GhostLimitFlag.Name))
	if err != nil {
		return 0, Usagef("--ghost-limit: %v", err)
	}
	return n, nil
}

// ParseSize reads a byte count with an optional K, M or G suffix (powers of 1024).
func ParseSize(s string) (int64, error) {
	shift := 0
	switch {
	case strings.HasSuffix(s, "K"):
		shift = 10
	case strings.HasSuffix(s, "M"):
		shift = 20
	case strings.HasSuffix(s, "G"):
		shift = 30
	}
	if shift > 0 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)>>shift {
		return 0, fmt.Errorf("%q is not a size in bytes (e.g. 65536, 64M, 1G)", s)
	}
	return n << shift, nil
}

// GhostKey names a file by device and inode, as fstat reports them.
type GhostKey struct{ Dev, Ino uint64 }

// NewGhost is the ghost-file record of a deleted file (st from fstat of it)
// whose contents will be object.
func NewGhost(object uint64, path string, st *unix.Stat_t) *pb.GhostFile {
	return &pb.GhostFile{
		Object: object, Dev: st.Dev, Inode: st.Ino, Path: path,
		Mode: st.Mode, Uid: st.Uid, Gid: st.Gid, Size: st.Size,
		AtimeNsec: st.Atim.Nano(), MtimeNsec: st.Mtim.Nano(),
	}
}

// GhostTooBig refuses a deleted file bigger than the limit; where names
// the holder ("pid 42 fd 3", "pid 42 vma 7f00-7f10").
func GhostTooBig(where, path string, size, limit int64) error {
	return Hint(fmt.Errorf("%s: deleted file %s is %d bytes, more than --ghost-limit (%d bytes) keeps in an image", where, path, size, limit),
		"raise --ghost-limit (cr-dump, cr-pages and cr-files take it), or let the program close or unmap the file before checkpointing")
}

// WriteGhost writes g and then the file's contents, read from r.
func WriteGhost(w *image.Writer, g *pb.GhostFile, r io.ReaderAt) (kept int64, err error) {
	if err := w.WriteMessage(image.TypeGhostFile, g); err != nil {
		return 0, fmt.Errorf("output: %w", err)
	}
	kept, err = WriteContents(w, g.Object, r, g.Size)
	if err != nil {
		return kept, fmt.Errorf("deleted file %s: %w", g.Path, err)
	}
	return kept, nil
}

// ContentsChunk is the most one FileData record of contents carries.
const ContentsChunk = 1 << 20

// WriteContents appends the first size bytes of a file (a memfd, a ghost
// file) as FileData records of object. It reads with pread, which leaves
// the offset of a description it shares alone. Pieces that are all zero
// are left out: a restore sizes the file first, so they read back as zeros
// (and stay holes). It returns the bytes written.
func WriteContents(w *image.Writer, object uint64, r io.ReaderAt, size int64) (int64, error) {
	buf := make([]byte, min(size, ContentsChunk))
	var kept int64
	for off := int64(0); off < size; off += ContentsChunk {
		n, err := r.ReadAt(buf[:min(ContentsChunk, size-off)], off)
		if err != nil && err != io.EOF {
			return kept, fmt.Errorf("read at %d: %w", off, err)
		}
		if AllZero(buf[:n]) {
			continue
		}
		if err := w.WriteMessage(image.TypeFileData, &pb.FileData{Object: object, Offset: off, Data: buf[:n]}); err != nil {
			return kept, fmt.Errorf("output: %w", err)
		}
		kept += int64(n)
	}
	return kept, nil
}

// AllZero says whether b holds only zero bytes.
func AllZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
