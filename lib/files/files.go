// Package files is the cr-files stage: for every process in the stream it
// appends a Files record with the fd table (path, open flags, offset,
// close-on-exec, identity of the file), cwd, root, exe and umask.
//
// doc/files.md lists the kinds it dumps and how a restore rebuilds each.
// Everything else is refused at dump time with an error naming the process,
// the fd and the kind: a dump that cannot be restored faithfully must fail
// now, not at restore.
//
// Fd.flags are the open flags of the file description as fdinfo shows them,
// without O_CLOEXEC, which belongs to the fd and is Fd.cloexec.
package files

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/cli"
	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// Options are cr-files' flags.
type Options struct {
	// ShellJob accepts a terminal whose master is outside the dump (the
	// terminal of the shell that started the job): a restore puts its own
	// terminal in its place.
	ShellJob bool
	// GhostLimit is the largest file unlinked while open whose contents
	// go into the image (--ghost-limit); a bigger one is refused.
	GhostLimit int64
}

// Command is the cr-files command.
func Command() *cli.App {
	flags := []cli.Flag{&cli.BoolFlag{Name: "shell-job", Usage: "accept the terminal of the shell that started the job; cr-restore gives the job its own terminal"},
		stage.GhostLimitFlag}
	return stage.FilterCommand("cr-files", "append the fd table, open file descriptions, cwd, root and umask of every frozen process in the stream",
		flags, func(c *cli.Context) (stage.Filter, error) {
			limit, err := stage.GhostLimit(c)
			if err != nil {
				return stage.Filter{}, err
			}
			return FilterWith(Options{ShellJob: c.Bool("shell-job"), GhostLimit: limit}), nil
		})
}

// Filter returns the cr-files filter with default options.
func Filter() stage.Filter { return FilterWith(defaultOptions) }

var defaultOptions = Options{GhostLimit: stage.DefaultGhostLimit}

// FilterWith returns the cr-files filter: it remembers every Process record
// and dumps the files of those processes once the input is complete.
func FilterWith(opts Options) stage.Filter {
	up := &stage.Upstream{}
	return stage.Filter{
		Observe: up.Observe,
		Finish: func(w *image.Writer) error {
			if err := up.NeedProcs(); err != nil {
				return err
			}
			d := newDumper(append(up.Procs, up.Zombies...)) // dump skips the zombies
			d.opts, d.up = opts, up
			defer d.close()
			if err := d.dump(); err != nil {
				return err
			}
			if err := d.mappedLocks(); err != nil {
				return err
			}
			return d.write(w)
		},
	}
}

// Dump reads the fd table and filesystem context of one process (a tree of
// one); the open file descriptions it needs are left out.
func Dump(pid int) (*pb.Files, error) {
	d := newDumper([]*pb.Process{{Pid: uint32(pid)}})
	defer d.close()
	if err := d.dump(); err != nil {
		return nil, err
	}
	return d.files[0], nil
}

// dumpTable reads the fd table and filesystem context of pid: the Files
// record, and an entry per fd for the descriptions to be grouped. Tables
// of several processes are read at once (dump).
func (d *dumper) dumpTable(pid int) (*pb.Files, []*entry, error) {
	fs := &pb.Files{Pid: uint32(pid)}
	var err error
	if fs.Cwd, err = dirLink(pid, "cwd"); err != nil {
		return nil, nil, err
	}
	if fs.Root, err = dirLink(pid, "root"); err != nil {
		return nil, nil, err
	}
	if fs.Exe, err = os.Readlink(procPath(pid, "exe")); err != nil {
		return nil, nil, procErr(pid, err)
	}
	status, err := sys.ReadFile(procPath(pid, "status"))
	if err != nil {
		return nil, nil, procErr(pid, err)
	}
	if fs.Umask, err = parseUmask(status); err != nil {
		return nil, nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	ents, err := os.ReadDir(procPath(pid, "fd"))
	if err != nil {
		return nil, nil, procErr(pid, err)
	}
	fds := make([]int, 0, len(ents))
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil || n < 0 {
			return nil, nil, fmt.Errorf("pid %d: unexpected entry %q in /proc/%d/fd", pid, e.Name(), pid)
		}
		fds = append(fds, n)
	}
	sort.Ints(fds)
	var entries []*entry
	for _, n := range fds {
		e, err := d.dumpFd(pid, n)
		if errors.Is(err, os.ErrNotExist) {
			continue // closed since the listing: the process is not frozen
		}
		if err != nil {
			return nil, nil, err
		}
		fs.Fds = append(fs.Fds, e.pfd)
		entries = append(entries, e)
	}
	return fs, entries, nil
}

func procPath(pid int, elem ...string) string {
	return filepath.Join(append([]string{"/proc", strconv.Itoa(pid)}, elem...)...)
}

func procErr(pid int, err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return stage.Hint(fmt.Errorf("pid %d: process is gone: %w", pid, err), "did the process exit or get killed while frozen? checkpoint again")
	}
	if errors.Is(err, os.ErrPermission) {
		return stage.Hint(fmt.Errorf("pid %d: %w", pid, err), "cr-files must run as root (or with CAP_SYS_PTRACE)")
	}
	return fmt.Errorf("pid %d: %w", pid, err)
}

// dirLink reads the cwd or root link of pid, refusing a deleted directory.
func dirLink(pid int, name string) (string, error) {
	p, err := os.Readlink(procPath(pid, name))
	if err != nil {
		return "", procErr(pid, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(procPath(pid, name), &st); err != nil {
		return "", procErr(pid, err)
	}
	if strings.HasSuffix(p, " (deleted)") && st.Nlink == 0 {
		return "", stage.Hint(fmt.Errorf("pid %d %s: directory %s has been deleted", pid, name, strings.TrimSuffix(p, " (deleted)")),
			"a restore cannot enter a deleted directory; let the process change directory first")
	}
	return p, nil
}

// Kinds of fd cr-files refuses, with the hint that goes with each.
var refuseHints = map[string]string{
	"terminal":     "terminals come with a later version; start the process detached, e.g. setsid CMD </dev/null >LOG 2>&1",
	"console":      "only pseudo-terminals (/dev/ptmx, /dev/pts/N) and /dev/tty on one are restored; a console or virtual terminal stays with its machine: start the process detached, e.g. setsid CMD </dev/null >LOG 2>&1",
	"deleted file": "only deleted regular files are kept in an image; close it before checkpointing",
	// cr-pages gives the same words for their mappings (stage.Hint*).
	"io_uring":             stage.HintIoUring,
	"userfaultfd":          "unregister its ranges (UFFDIO_UNREGISTER) and close it before checkpointing",
	"memfd_secret(2) file": "", // its memory is the program's secret: nothing helps
	"hugetlb memfd":        stage.HintHugetlb,
}

// refuse is the error for an fd cr-files cannot dump (yet).
func refuse(pid, fd int, kind, detail string) error {
	hint, ok := refuseHints[kind]
	if !ok {
		hint = "close this fd before checkpointing"
	}
	err := fmt.Errorf("pid %d fd %d: %s (%s) is not supported yet", pid, fd, kind, detail)
	if hint == "" {
		return err
	}
	return stage.Hint(err, hint)
}

// cannot is the error for an fd of a supported kind in a state a restore
// could not reproduce.
func cannot(e *entry, format string, a ...any) error {
	return fmt.Errorf("%s: %s (%s): %s", e.where(), e.kindName(), e.link, fmt.Sprintf(format, a...))
}

// mqueueMagic is the statfs type of the mqueue filesystem, whose files are
// POSIX message queues (mq_open).
const mqueueMagic = 0x19800202

// Memory character devices (major 1) a restore can simply reopen.
var memDevices = map[uint32]string{3: "null", 5: "zero", 7: "full", 8: "random", 9: "urandom"}

// isTTYMajor: /dev/tty* and /dev/console (4, 5: tty, console, ptmx),
// Unix98 pty slaves (136-143).
func isTTYMajor(major uint32) bool { return major == 4 || major == 5 || (major >= 136 && major <= 143) }

// anonKinds are the anon_inode fds cr-files dumps, by their link name.
var anonKinds = map[string]pb.FdKind{
	"[eventfd]":   pb.FdKind_FD_EVENTFD,
	"[signalfd]":  pb.FdKind_FD_SIGNALFD,
	"[timerfd]":   pb.FdKind_FD_TIMERFD,
	"inotify":     pb.FdKind_FD_INOTIFY,
	"[eventpoll]": pb.FdKind_FD_EPOLL,
	"[pidfd]":     pb.FdKind_FD_PIDFD,
}

func (d *dumper) dumpFd(pid, n int) (*entry, error) {
	name := strconv.Itoa(n)
	link, err := os.Readlink(procPath(pid, "fd", name))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		return nil, procErr(pid, err)
	}
	b, err := sys.ReadFile(procPath(pid, "fdinfo", name))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		return nil, procErr(pid, err)
	}
	fi, err := parseFdinfo(b)
	if err != nil {
		return nil, fmt.Errorf("pid %d fd %d: %w", pid, n, err)
	}
	// The entry keeps the text, not the read's buffer (512 bytes, most of
	// them unused): a process can have tens of thousands of fds.
	e := &entry{pid: pid, fd: n, link: link, fi: fi, info: bytes.Clone(b)}
	if err := refuseLease(pid, n, link, b); err != nil {
		return nil, err
	}
	// Stat through the fd link: the open file itself, whatever its path says now.
	var full unix.Stat_t
	if err := unix.Stat(procPath(pid, "fd", name), &full); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, os.ErrNotExist
		}
		return nil, fmt.Errorf("pid %d fd %d: %s: %w", pid, n, link, err)
	}
	e.st = fileStat{Dev: full.Dev, Ino: full.Ino, Rdev: full.Rdev, Nlink: full.Nlink, Size: full.Size, Mode: full.Mode}
	e.pfd = &pb.Fd{
		Fd:      int32(n),
		Cloexec: fi.flags&unix.O_CLOEXEC != 0,
		Path:    link,
		Flags:   fi.flags &^ unix.O_CLOEXEC,
		Offset:  fi.pos,
		Dev:     e.st.Dev,
		Inode:   e.st.Ino,
		Mode:    e.st.Mode,
	}
	switch {
	case strings.HasPrefix(link, "socket:["):
		return e, d.classifySocket(e)
	case strings.HasPrefix(link, "pipe:["):
		e.setKind(pb.FdKind_FD_PIPE)
		return e, nil
	case strings.HasPrefix(link, "anon_inode:"):
		kind := strings.TrimPrefix(link, "anon_inode:")
		k, ok := anonKinds[kind]
		if !ok {
			return nil, refuse(pid, n, strings.Trim(kind, "[]"), link)
		}
		e.setKind(k)
		return e, nil
	case !strings.HasPrefix(link, "/"):
		return nil, refuse(pid, n, "special file", link)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(procPath(pid, "fd", name), &fs); err != nil {
		return nil, procErr(pid, err)
	}
	fsType := fs.Type
	if fsType == mqueueMagic {
		return nil, refuse(pid, n, "POSIX message queue", link)
	}
	st := &e.st
	path := link
	if p, ok := strings.CutSuffix(link, " (deleted)"); ok && st.Nlink == 0 {
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			if strings.HasPrefix(p, "/memfd:") {
				e.setKind(pb.FdKind_FD_MEMFD)
			} else {
				e.setKind(pb.FdKind_FD_GHOST) // its contents go into the image (ghost.go)
			}
			return e, nil
		}
		return nil, refuse(pid, n, "deleted file", link)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		e.setKind(pb.FdKind_FD_REGULAR)
	case unix.S_IFDIR:
		e.setKind(pb.FdKind_FD_DIRECTORY)
	case unix.S_IFCHR:
		major, minor := unix.Major(st.Rdev), unix.Minor(st.Rdev)
		detail := fmt.Sprintf("%s, %d:%d", link, major, minor)
		switch {
		case major == ptmxMajor && minor == ptmxMinor || isPtySlave(major):
			// A pseudo-terminal: dumpTty checks the pair is in the dump.
			e.setKind(pb.FdKind_FD_TTY)
			e.pfd.Rdev = st.Rdev
			return e, nil
		case major == devTtyMajor && minor == devTtyMinor:
			// /dev/tty: dumpDevTty finds the terminal it was opened on.
			e.setKind(pb.FdKind_FD_DEVTTY)
			e.pfd.Rdev = st.Rdev
			return e, nil
		case isTTYMajor(major):
			return nil, refuse(pid, n, "console", detail)
		case major != 1 || memDevices[minor] == "":
			return nil, refuse(pid, n, "character device", detail)
		}
		e.setKind(pb.FdKind_FD_CHARDEV)
		e.pfd.Rdev = st.Rdev
	case unix.S_IFIFO:
		e.setKind(pb.FdKind_FD_PIPE)
		e.fifo = true
	case unix.S_IFSOCK:
		return nil, refuse(pid, n, "socket", link)
	case unix.S_IFBLK:
		return nil, refuse(pid, n, "block device", link)
	default:
		return nil, refuse(pid, n, "special file", fmt.Sprintf("%s, mode %#o", link, st.Mode))
	}
	if fsType == unix.SECRETMEM_MAGIC {
		return nil, refuse(pid, n, "memfd_secret(2) file", "its memory no other process can read")
	}
	if fsType == unix.PROC_SUPER_MAGIC {
		if err := d.procPidFile(e, path); err != nil {
			return nil, err
		}
	}
	// A restore reopens the path: it must still name this file. The kernel
	// follows renames of the file and its directories, so a path that names
	// another file (or none) is one it could not follow: a mount on top of
	// it since, or a file unlinked that has another name. The path starts
	// where proc.PathRoot says (a chrooted process's file opened before the
	// chroot shows from our root, as the restore opens it).
	var now unix.Stat_t
	err = unix.Stat(filepath.Join(d.pathRoot(pid), path), &now)
	if err != nil || now.Dev != st.Dev || now.Ino != st.Ino {
		if p, ok := strings.CutSuffix(link, " (deleted)"); ok {
			return nil, stage.Hint(fmt.Errorf("pid %d fd %d: %s was deleted, but the file has %d other link(s), by name(s) cr-files cannot find", pid, n, p, st.Nlink),
				"let the program reopen the file by a name it still has, or close it, before checkpointing")
		}
		return nil, stage.Hint(fmt.Errorf("pid %d fd %d: %s no longer names the open file (dev:inode %d:%d; the path gives %s)", pid, n, path, st.Dev, st.Ino, statWhat(&now, err)),
			"a restore reopens files by path: unmount what covers it since, or close or reopen the file, before checkpointing")
	}
	return e, nil
}

// procPidFile marks a file of /proc/N/ on procfs (Fd.proc_pid): its inode
// is made when it is looked up, so the restored process N has the same
// file under another inode, and a restore opens that one. That is right
// only for a process of the dump, seen as a whole: a file of another
// process or of one thread other than the leader (/proc/N/task/T/,
// /proc/T/; created after the files) is refused.
func (d *dumper) procPidFile(e *entry, path string) error {
	rest, ok := strings.CutPrefix(path, "/proc/")
	if !ok {
		return nil
	}
	first, below, _ := strings.Cut(rest, "/")
	n, err := strconv.Atoi(first)
	if err != nil {
		return nil // /proc/meminfo, /proc/sys/...: their inodes stay
	}
	of, threadOf := d.owner(n)
	why := ""
	if threadOf != nil {
		why = fmt.Sprintf("thread %d of process %d", n, threadOf.Pid)
	}
	if task, ok := strings.CutPrefix(below, "task/"); ok && of != nil {
		if tid, _, _ := strings.Cut(task, "/"); tid != first {
			why = fmt.Sprintf("thread %s of process %d", tid, n)
		}
	}
	switch {
	case why != "":
		why = "a file of " + why + ", which a restore creates after the files"
	case of == nil:
		why = fmt.Sprintf("a file of process %d, which is not in the dump", n)
	default:
		e.pfd.ProcPid = uint32(n)
		return nil
	}
	return stage.Hint(fmt.Errorf("pid %d fd %d: %s: %s: not supported", e.pid, e.fd, path, why),
		"close the fd before checkpointing: a restore reopens only files of /proc/PID/ of the dumped processes themselves")
}

// statWhat says what a path gave in a message.
func statWhat(st *unix.Stat_t, err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("dev:inode %d:%d", st.Dev, st.Ino)
}
