package e2e

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Files unlinked while open or mapped (ghost files), and files whose path
// changed since they were opened (issue 5, item 2).

// TestFdGhost: fd_ghost's deleted files (fds with shared and separate
// descriptions, a sparse file, shared and private mappings, a mapping
// without an fd, a file made with O_TMPFILE) come back with contents,
// offsets, flags and owner, and each file is in the image once, whichever
// of cr-files and cr-pages comes first ("brief": cr-pages, which then
// writes the files that are mapped).
func TestFdGhost(t *testing.T) {
	for _, c := range []struct{ name, arg, stages string }{
		{"plain", "", dumpStages}, {"plainfork", "fork", dumpStages}, {"brief", "", briefStages},
	} {
		t.Run(c.name, func(t *testing.T) {
			need(t, append(pipelineCmds, "cr-restore", "crit")...)
			p := startFdProg(t, "fd_ghost", c.arg)
			show := dumpRestoreWith(t, p, c.stages)
			t.Logf("crit show fds:\n%s", strings.Join(fdLines(show), "\n"))
			checkFdLine(t, show, 20, "ghost", p.dir+"/ghost1 (deleted)", "5.0 MiB", "in the image", "shared with fd 22")
			checkFdLine(t, show, 23, "ghost", p.dir+"/ghost2 (deleted)", "wronly|append")
			checkFdLine(t, show, 25, "ghost", "rdwr", "tmpfile")
			records := mustShell(t, 30*time.Second, fmt.Sprintf("crit decode < %s | grep -c '\"type\":\"ghost-file\"'", filepath.Join(p.dir, "img")))
			if n := strings.TrimSpace(string(records.stdout)); n != "4" {
				t.Errorf("%s ghost-file records, want 4 (each file once, whatever holds it)", n)
			}
		})
	}
}

// TestFdGhostLimit: a deleted file over --ghost-limit is refused at dump
// time, naming the pid, fd, path, size and flag, and the process runs on;
// with a higher limit the (sparse) file is dumped and restored, and costs
// the image only what is not zero.
func TestFdGhostLimit(t *testing.T) {
	need(t, append(pipelineCmds, "cr-dump", "cr-restore")...)
	p := startFdProg(t, "fd_ghost", "big")
	img := filepath.Join(p.dir, "img")
	r := shell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
	want := fmt.Sprintf("pid %d fd 24: deleted file %s/big is 104857600 bytes, more than --ghost-limit (67108864 bytes)", p.pid, p.dir)
	if r.err == nil || !strings.Contains(string(r.stderr), want) || !strings.Contains(string(r.stderr), "hint: raise --ghost-limit") {
		t.Fatalf("cr-dump: %v, want a refusal %q with a hint", r, want)
	}
	p.checkRunning()
	mustShell(t, 60*time.Second, fmt.Sprintf("cr-dump --ghost-limit 128M -t %d -o %s", p.pid, img))
	if st, err := os.Stat(img); err != nil || st.Size() > 16<<20 {
		t.Errorf("image: %v, %d bytes: the 100 MiB of zeros were not left out", err, st.Size())
	}
	p.killedThenRestored(img)
}

// TestGhostExe: a program whose binary was deleted (and, as by an upgrade,
// replaced by another file at its path) is restored from the binary it
// runs, kept in the image, which becomes its exe again.
func TestGhostExe(t *testing.T) {
	for _, how := range []string{"deleted", "replaced"} {
		t.Run(how, func(t *testing.T) {
			need(t, append(pipelineCmds, "cr-restore")...)
			exe := filepath.Join(t.TempDir(), "counter")
			copyFile(t, prog("counter"), exe)
			p := startPath(t, "counter", exe, func(p *target) []string {
				if err := os.WriteFile(p.mapfile, make([]byte, 64<<10), 0o644); err != nil {
					t.Fatal(err)
				}
				return []string{p.progress, p.verdict, p.mapfile}
			})
			if err := os.Remove(exe); err != nil {
				t.Fatal(err)
			}
			if how == "replaced" {
				if err := os.WriteFile(exe, []byte("#!/bin/sh\necho a newer version\n"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			img := filepath.Join(p.dir, "img")
			mustShell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d | %s > %s && cr-freeze kill < %s", p.pid, dumpStages, img, img))
			p.waitKilled()
			at := p.mustProgress()
			p.restoreDetached(img)
			link, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.pid))
			if !strings.HasSuffix(link, " (deleted)") || !strings.HasPrefix(link, filepath.Dir(exe)+"/") {
				t.Errorf("exe of the restored process is %q, want a deleted file in %s", link, filepath.Dir(exe))
			}
			p.checkProgressFrom(at)
			p.terminate(at)
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestFdMovedDir: fd_moved's file and directory, whose directory the test
// renames while they are open (and puts another file at the old path).
//   - renamed: the kernel names them by their new path; they are dumped and
//     restored there, not the file now at the old path.
//   - replaced: after the dump another file takes the new path: the
//     restore refuses it, naming pid, fd and path, and leaves nothing.
//   - covered: a mount on top of their directory since: the path names
//     another file, and the dump refuses it; the process runs on.
func TestFdMovedDir(t *testing.T) {
	for _, how := range []string{"renamed", "replaced", "covered"} {
		t.Run(how, func(t *testing.T) {
			need(t, append(pipelineCmds, "cr-dump", "cr-restore", "crit")...)
			p := startFdProg(t, "fd_moved", "")
			sub, moved := filepath.Join(p.dir, "sub"), filepath.Join(p.dir, "moved")
			if how == "covered" {
				if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
					t.Skipf("mount tmpfs: %v", err)
				}
				t.Cleanup(func() { unix.Unmount(sub, unix.MNT_DETACH) })
				img := filepath.Join(p.dir, "img")
				r := shell(t, 60*time.Second, fmt.Sprintf("cr-dump -t %d -o %s", p.pid, img))
				want := fmt.Sprintf("pid %d fd 20: %s/file no longer names the open file", p.pid, sub)
				if r.err == nil || !strings.Contains(string(r.stderr), want) {
					t.Fatalf("cr-dump: %v, want a refusal %q", r, want)
				}
				p.checkRunning()
				return
			}
			if err := os.Rename(sub, moved); err != nil {
				t.Fatal(err)
			}
			// A decoy where the file was.
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(sub, "file"), []byte("wrong file"), 0o644); err != nil {
				t.Fatal(err)
			}
			if how == "renamed" {
				show := dumpRestore(t, p)
				checkFdLine(t, show, 20, "regular", moved+"/file", "offset 3")
				checkFdLine(t, show, 21, "directory", moved)
				return
			}
			img := filepath.Join(p.dir, "img")
			mustShell(t, 60*time.Second, fmt.Sprintf("cr-freeze --pid %d | %s > %s && cr-freeze kill < %s", p.pid, dumpStages, img, img))
			p.waitKilled()
			// Put another file in its place, as an editor saving it would.
			tmp := filepath.Join(moved, "file.new")
			if err := os.WriteFile(tmp, []byte("moved file"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, filepath.Join(moved, "file")); err != nil {
				t.Fatal(err)
			}
			r := shell(t, 60*time.Second, "cr-restore -d -i "+img)
			want := fmt.Sprintf("pid %d fd 20: %s/file is not the file that was dumped", p.pid, moved)
			if r.err == nil || !strings.Contains(string(r.stderr), want) {
				t.Fatalf("cr-restore: %v, want a refusal %q", r, want)
			}
			p.checkPidFree()
		})
	}
}
