package restore

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// creationFlags only mean something when a file is opened first.
const creationFlags = unix.O_CREAT | unix.O_EXCL | unix.O_TRUNC | unix.O_NOCTTY | unix.O_CLOEXEC

// tmpfileBit is O_TMPFILE without the O_DIRECTORY that comes with it.
const tmpfileBit = unix.O_TMPFILE &^ unix.O_DIRECTORY

// reopenFlags are the dumped flags of a file to open it again with: not
// the creation flags, and not O_TMPFILE, which the kernel keeps in the
// flags of a file made with it, O_DIRECTORY included, though the file is
// a regular one (opened so, it fails with ENOTDIR; found restoring
// MariaDB's temporary files).
func reopenFlags(flags uint32) int {
	f := int(flags) &^ creationFlags
	if f&tmpfileBit != 0 {
		f &^= unix.O_TMPFILE
	}
	return f
}

func init() {
	registerFdKind(pb.FdKind_FD_REGULAR, openPath)
	registerFdKind(pb.FdKind_FD_CHARDEV, openPath)
	registerFdKind(pb.FdKind_FD_DIRECTORY, openPath)
}

// openFd returns the file to install as one dumped fd.
func openFd(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	open, ok := fdOpeners[pb.FdKind(fd.Kind)]
	if !ok {
		return nil, fmt.Errorf("pid %d fd %d: fd kind %v is not supported by this cr-restore", t.pid, fd.Fd, pb.FdKind(fd.Kind))
	}
	return open(rc, t, fd)
}

// openPath opens a file by its path as the process had it open.
func openPath(rc *Ctx, t *task, fd *pb.Fd) (*os.File, error) {
	where := fmt.Sprintf("pid %d fd %d", t.pid, fd.Fd)
	path, err := procPidPath(rc, t, fd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	f, err := os.OpenFile(path, reopenFlags(fd.Flags), 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if fd.ProcPid != 0 {
		// The restored process's file: the same kind, on procfs, under
		// another inode (pb.Fd.proc_pid).
		var fs unix.Statfs_t
		if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil || fs.Type != unix.PROC_SUPER_MAGIC {
			f.Close()
			return nil, fmt.Errorf("%s: %s is not on procfs here", where, path)
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if fd.Mode != 0 && st.Mode&unix.S_IFMT != fd.Mode&unix.S_IFMT {
		f.Close()
		return nil, fmt.Errorf("%s: %s is no longer the same kind of file", where, fd.Path)
	}
	// A regular file or directory must be the one dumped: a file put in
	// its place since (or a renamed directory's) would be a wrong file.
	if k := pb.FdKind(fd.Kind); (k == pb.FdKind_FD_REGULAR || k == pb.FdKind_FD_DIRECTORY) && fd.Inode != 0 && fd.ProcPid == 0 && (st.Dev != fd.Dev || st.Ino != fd.Inode) {
		f.Close()
		return nil, stage.Hint(fmt.Errorf("%s: %s is not the file that was dumped (dev:inode %d:%d, dumped %d:%d): it was replaced or moved since", where, fd.Path, st.Dev, st.Ino, fd.Dev, fd.Inode),
			"restore where the dump was taken, with the files the process had open where they were")
	}
	if pb.FdKind(fd.Kind) == pb.FdKind_FD_CHARDEV && fd.Rdev != 0 && st.Rdev != fd.Rdev {
		f.Close()
		return nil, fmt.Errorf("%s: %s is device %#x here, was %#x", where, fd.Path, st.Rdev, fd.Rdev)
	}
	if pb.FdKind(fd.Kind) == pb.FdKind_FD_REGULAR && fd.Offset != 0 {
		if _, err := unix.Seek(int(f.Fd()), fd.Offset, 0); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: seek to %d: %w", where, fd.Offset, err)
		}
	}
	return f, nil
}

// procPidPath is the path to open for fd of task t: its own, or for a
// file of /proc/N/ (pb.Fd.proc_pid) the same path as t sees it, through
// t's root and mount namespace: the restored process N's file, in the
// procfs of t's pid namespace (under --pidns, the namespace's own, where
// N is N again).
func procPidPath(rc *Ctx, t *task, fd *pb.Fd) (string, error) {
	if fd.ProcPid == 0 {
		return fd.Path, nil
	}
	below, ok := strings.CutPrefix(fd.Path, fmt.Sprintf("/proc/%d", fd.ProcPid))
	of := rc.Tasks[fd.ProcPid]
	if !ok || below != "" && below[0] != '/' || of == nil {
		return "", fmt.Errorf("%s: a file of /proc/%d/, which is not a process of the image", fd.Path, fd.ProcPid)
	}
	return fmt.Sprintf("/proc/%d/root%s", t.pid, fd.Path), nil
}

// restoreFiles replaces the task's fd table with the dumped one.
func (rc *Ctx) restoreFiles(t *task) error {
	fl := t.files
	maxTarget := -1
	nums := make([]int32, len(fl.Fds))
	for i, fd := range fl.Fds {
		if fd.Fd < 0 {
			return fmt.Errorf("pid %d: negative fd number %d in the image", t.pid, fd.Fd)
		}
		maxTarget = max(maxTarget, int(fd.Fd))
		nums[i] = fd.Fd
	}
	// Installed one after another, a number given twice would leave the
	// first fd replaced by the second, and no error.
	slices.Sort(nums)
	for i := 1; i < len(nums); i++ {
		if nums[i] == nums[i-1] {
			return fmt.Errorf("pid %d: fd %d appears twice in the image: %w", t.pid, nums[i], image.ErrCorrupt)
		}
	}
	// The control socket goes above the table where it is in its way, and
	// each batch passes through a holding area (holdingArea): the limit
	// must cover all three.
	ctl := t.ctlFd
	if ctl <= maxTarget {
		ctl = maxTarget + 1
	}
	base := holdingArea(nums, ctl)
	if err := raiseNofile(t.pid, max(uint64(ctl)+1, base+holdingSize)); err != nil {
		return err
	}
	if ctl != t.ctlFd {
		if err := t.r.setCtl(ctl); err != nil {
			return err
		}
		t.ctlFd = ctl
	}
	// Close what the helper left open (its stdio), keeping the control
	// socket: with the first files moved (moveAbove), which land elsewhere.
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", t.pid))
	if err != nil {
		return err
	}
	var inherited, calls []call
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err == nil && n != t.ctlFd {
			inherited = append(inherited, sc("close inherited fd", unix.SYS_CLOSE, uint64(n)))
		}
	}

	// Received files take the lowest free numbers, which may be dumped fd
	// numbers still to be installed: each batch is moved to the holding
	// area first, then installed. A batch at a time, so that cr-restore
	// holds the files of one batch, not of the whole table, on top of the
	// descriptions it keeps for other fds (a process with 14,000 fds
	// failed with EMFILE under a limit of 20,000).
	for i := 0; i < len(fl.Fds); i += fdInstallBatch {
		batch := fl.Fds[i:min(i+fdInstallBatch, len(fl.Fds))]
		files := make([]*os.File, 0, len(batch))
		err := rc.locked(func() error {
			for _, fd := range batch {
				f, err := openFd(rc, t, fd)
				if err != nil {
					return err
				}
				files = append(files, f)
			}
			return nil
		})
		if err != nil {
			closeFiles(files)
			return err
		}
		high, landed, err := t.moveAbove(files, base, inherited)
		if err != nil {
			return err
		}
		inherited, calls = nil, landed
		for j, fd := range batch {
			flags := uint64(0)
			if fd.Cloexec {
				flags = unix.O_CLOEXEC
			}
			calls = append(calls, sc(fmt.Sprintf("install fd %d", fd.Fd), unix.SYS_DUP3, uint64(high[j]), uint64(fd.Fd), flags),
				sc("close moved file", unix.SYS_CLOSE, uint64(high[j])))
		}
		if _, err := t.r.run(calls...); err != nil {
			return err
		}
	}

	dirs := make([]*os.File, 0, 2)
	cwd, err := os.OpenFile(fl.Cwd, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("pid %d: cwd: %w", t.pid, err)
	}
	dirs = append(dirs, cwd)
	if fl.Root != "" && fl.Root != "/" {
		root, err := os.OpenFile(fl.Root, unix.O_PATH|unix.O_DIRECTORY, 0)
		if err != nil {
			closeFiles(dirs)
			return fmt.Errorf("pid %d: root: %w", t.pid, err)
		}
		dirs = append(dirs, root)
	}
	high, landed, err := t.moveAbove(dirs, base, inherited)
	if err != nil {
		return err
	}
	calls = landed
	if len(high) > 1 { // a root other than /
		dot := scratchWriter{base: t.scratch}
		addr := dot.putString(".")
		if err := t.flushScratch(&dot); err != nil {
			return err
		}
		calls = append(calls, sc("enter root", unix.SYS_FCHDIR, uint64(high[1])), sc("chroot "+fl.Root, unix.SYS_CHROOT, addr))
	}
	calls = append(calls, sc("chdir "+fl.Cwd, unix.SYS_FCHDIR, uint64(high[0])))
	for _, h := range high {
		calls = append(calls, sc("close moved file", unix.SYS_CLOSE, uint64(h)))
	}
	_, err = t.r.run(calls...)
	return err
}

// raiseNofile raises the task's soft limit of open files to need (or its
// hard limit) while its fd table is installed: the task starts with the
// soft limit cr-restore was started with (a shell's 1,024), and the dumped
// fds, its control socket and the holding area of a batch in flight must
// fit. The dumped limits are set after the files (state_last.go).
func raiseNofile(pid int, need uint64) error {
	var lim unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &lim); err != nil {
		return fmt.Errorf("pid %d: read RLIMIT_NOFILE: %w", pid, err)
	}
	if lim.Cur >= need {
		return nil
	}
	if lim.Max < need {
		return stage.Hint(fmt.Errorf("pid %d: its fds need a limit of %d open files while they are installed, above the hard limit of %d cr-restore gives it", pid, need, lim.Max),
			"run cr-restore with a higher hard limit of open files (prlimit --nofile, ulimit -Hn)")
	}
	lim.Cur = need
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		return fmt.Errorf("pid %d: raise RLIMIT_NOFILE to %d for its fds: %w", pid, lim.Cur, err)
	}
	return nil
}

// fdInstallBatch is how many fds restoreFiles opens, sends and installs at
// a time.
const fdInstallBatch = 256

// holdingSize: a batch received (at the lowest free numbers) and moved
// (to the lowest free from the area's start) fits in the area wherever it
// landed.
const holdingSize = 2 * fdInstallBatch

// holdingArea is the lowest fd number from which holdingSize numbers are
// neither a dumped fd (targets, sorted) nor the control socket: there a
// batch waits to be installed without being overwritten by an fd of its
// own. Above the whole table it would need a limit of open files a batch
// above the highest fd: valgrind keeps its own fds right under the hard
// limit, and a restore under the same limit failed.
func holdingArea(targets []int32, ctl int) uint64 {
	taken := append(slices.Clone(targets), int32(ctl))
	slices.Sort(taken)
	lo := 0
	for _, n := range taken {
		if int(n)-lo >= holdingSize {
			break
		}
		lo = max(lo, int(n)+1)
	}
	return uint64(lo)
}

// moveAbove sends files to the task, closes them here, and moves the
// received files to numbers from base up, after the calls before, in the
// same round trip. It returns their new numbers, in order, and the calls
// that close where they landed, for the caller's next batch to begin with
// (before it installs anything there).
func (t *task) moveAbove(files []*os.File, base uint64, before []call) (moved []int, landed []call, err error) {
	remote, err := t.r.sendFds(files)
	closeFiles(files)
	if err != nil {
		return nil, nil, err
	}
	calls := append(make([]call, 0, len(before)+len(remote)), before...)
	for _, r := range remote {
		calls = append(calls, sc("move received file", unix.SYS_FCNTL, uint64(r), unix.F_DUPFD_CLOEXEC, base))
		landed = append(landed, sc("close received file", unix.SYS_CLOSE, uint64(r)))
	}
	vals, err := t.r.run(calls...)
	if err != nil {
		return nil, nil, err
	}
	for _, h := range vals[len(before):] {
		moved = append(moved, int(h))
	}
	return moved, landed, nil
}
