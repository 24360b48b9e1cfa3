package files

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// runGhostFilter runs cr-files with opts on pid after upstream records,
// and returns its output records (the input's excluded).
func runGhostFilter(t *testing.T, pid int, opts Options, upstream ...*pb.GhostFile) ([]*image.Frame, error) {
	t.Helper()
	var in, out bytes.Buffer
	w, _ := image.NewWriter(&in, image.WriterOptions{})
	w.WriteMessage(image.TypeProcess, &pb.Process{Pid: uint32(pid)})
	for _, g := range upstream {
		w.WriteMessage(image.TypeGhostFile, g)
	}
	w.Close()
	if err := stage.RunFilter(&in, &out, false, FilterWith(opts)); err != nil {
		return nil, err
	}
	r, err := image.NewReader(&out)
	if err != nil {
		t.Fatal(err)
	}
	var frames []*image.Frame
	for n := 0; ; n++ {
		f, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if n > len(upstream) && f.Type != image.TypeEnd {
			f.Payload = bytes.Clone(f.Payload)
			frames = append(frames, f)
		}
	}
	return frames, nil
}

// TestGhost: a regular file unlinked while open is dumped as FD_GHOST with
// a ghost-file record and its contents, once, and not at all when a stage
// before (cr-pages) wrote it; object numbers go on from that stage's.
func TestGhost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pid, fds := startFdtest(t, dir, "deleted", "pipe")
	frames, err := runGhostFilter(t, pid, defaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	var ghost *pb.GhostFile
	var data []byte
	var gfd *pb.Fd
	for _, f := range frames {
		switch f.Type {
		case image.TypeFiles:
			var fs pb.Files
			image.Unmarshal(f, &fs)
			for _, fd := range fs.Fds {
				if int(fd.Fd) == fds["deleted"] {
					gfd = fd
				}
			}
		case image.TypeGhostFile:
			if ghost != nil {
				t.Fatalf("two ghost-file records")
			}
			ghost = new(pb.GhostFile)
			image.Unmarshal(f, ghost)
		case image.TypeFileData:
			var d pb.FileData
			image.Unmarshal(f, &d)
			if ghost != nil && d.Object == ghost.Object {
				data = append(data, d.Data...)
			}
		}
	}
	if gfd == nil || pb.FdKind(gfd.Kind) != pb.FdKind_FD_GHOST || gfd.Path != dir+"/gone (deleted)" || gfd.Offset != 6 {
		t.Fatalf("fd of the deleted file: %v", gfd)
	}
	if ghost == nil || ghost.Path != dir+"/gone" || ghost.Size != 6 || ghost.Dev != gfd.Dev || ghost.Inode != gfd.Inode || ghost.Mode&0o777 != 0o600 || ghost.Object == 0 {
		t.Fatalf("ghost-file record %v for fd %v", ghost, gfd)
	}
	if string(data) != "ghost!" {
		t.Errorf("contents %q, want %q", data, "ghost!")
	}

	// Written upstream (object 7): not again, and the pipe is object 8.
	frames, err = runGhostFilter(t, pid, defaultOptions, &pb.GhostFile{Object: 7, Dev: gfd.Dev, Inode: gfd.Inode, Path: ghost.Path})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range frames {
		switch f.Type {
		case image.TypeGhostFile:
			t.Errorf("a ghost-file record for a file written upstream")
		case image.TypeFileDesc:
			var d pb.FileDesc
			image.Unmarshal(f, &d)
			if d.Object != 0 && d.Object <= 7 {
				t.Errorf("description %d has object %d, one the stage before used", d.Id, d.Object)
			}
		}
	}
}

// TestGhostRefused: a deleted file over --ghost-limit, and one deleted but
// still linked elsewhere, are refused naming pid, fd, path (and size).
func TestGhostRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pid, fds := startFdtest(t, dir, "deleted")
	_, err = runGhostFilter(t, pid, Options{GhostLimit: 5})
	want := fmt.Sprintf("pid %d fd %d: deleted file %s/gone is 6 bytes, more than --ghost-limit (5 bytes)", pid, fds["deleted"], dir)
	var h *stage.HintError
	if err == nil || !strings.HasPrefix(err.Error(), want) || !errors.As(err, &h) || !strings.Contains(h.Hint, "--ghost-limit") {
		t.Errorf("got %v, want %q... with a hint naming --ghost-limit", err, want)
	}

	pid, fds = startFdtest(t, dir, "linked")
	_, err = runGhostFilter(t, pid, defaultOptions)
	want = fmt.Sprintf("pid %d fd %d: %s/first was deleted, but the file has 1 other link(s)", pid, fds["linked"], dir)
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("got %v, want %q...", err, want)
	}
}

// TestGhostHeldOutside: a deleted file another process holds open (here
// the test) is refused, naming that process: a restore would give the
// dump a copy, and the two would no longer share it.
func TestGhostHeldOutside(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pid, fds := startFdtest(t, dir, "deleted")
	f, err := os.Open(fmt.Sprintf("/proc/%d/fd/%d", pid, fds["deleted"]))
	if err != nil {
		t.Fatal(err)
	}
	_, err = runGhostFilter(t, pid, defaultOptions)
	f.Close()
	want := fmt.Sprintf("pid %d fd %d: ghost (%s/gone (deleted)): also open as fd ", pid, fds["deleted"], dir)
	if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), fmt.Sprintf("of pid %d (", os.Getpid())) {
		t.Fatalf("got %v, want %q... naming pid %d", err, want, os.Getpid())
	}
	if _, err := runGhostFilter(t, pid, defaultOptions); err != nil {
		t.Errorf("once the test closed it: %v", err)
	}
}
