package files

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// inotifyLine is one "inotify wd:..." line of an inotify fd's fdinfo.
type inotifyLine struct {
	wd          int32
	ino         uint64
	sdev        uint64 // st_dev encoding
	mask        uint32
	ignoredMask uint32
	handleType  int32
	handle      []byte
}

// parseInotify reads the watches of an inotify fdinfo (Linux 3.8 with
// CONFIG_EXPORTFS for the file handles).
func parseInotify(info []byte) ([]inotifyLine, error) {
	var out []inotifyLine
	for _, line := range bytes.Split(info, []byte{'\n'}) {
		rest, ok := bytes.CutPrefix(line, []byte("inotify "))
		if !ok {
			continue
		}
		var w inotifyLine
		var have int
		for _, f := range strings.Fields(string(rest)) {
			k, v, ok := strings.Cut(f, ":")
			if !ok {
				return nil, fmt.Errorf("inotify line %q: %w", line, errFdinfoSyntax)
			}
			var n uint64
			var err error
			if k != "f_handle" {
				n, err = strconv.ParseUint(v, 16, 64)
			}
			switch k {
			case "wd":
				w.wd, have = int32(n), have|1
			case "ino":
				w.ino, have = n, have|2
			case "sdev":
				w.sdev, have = sys.KernelDev(n), have|4
			case "mask":
				w.mask, have = uint32(n), have|8
			case "ignored_mask":
				w.ignoredMask = uint32(n)
			case "fhandle-type":
				w.handleType = int32(n)
			case "f_handle":
				w.handle, err = hex.DecodeString(v)
				have |= 16
			}
			if err != nil || n > 1<<32 && k != "ino" {
				return nil, fmt.Errorf("inotify line %q: %w", line, errFdinfoSyntax)
			}
		}
		if have != 31 {
			return nil, fmt.Errorf("inotify line %q lacks wd, ino, sdev, mask or f_handle: %w", line, errFdinfoSyntax)
		}
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].wd < out[j].wd })
	return out, nil
}

// dumpInotify records each watch with the path of the watched inode, found
// from the file handle the kernel shows (open_by_handle_at on a mount of its
// filesystem). Events already queued cannot be read without consuming them,
// so an inotify fd with unread events is refused.
func (d *dumper) dumpInotify(ds *desc, rec *pb.FileDesc) error {
	e := ds.first()
	watches, err := parseInotify(e.info)
	if err != nil {
		return cannot(e, "%v", err)
	}
	f, err := d.getfd(e)
	if err != nil {
		return err
	}
	defer f.Close()
	queued, err := unix.IoctlGetInt(int(f.Fd()), unix.TIOCINQ)
	if err != nil {
		return cannot(e, "FIONREAD: %v", err)
	}
	if queued > 0 {
		return stage.Hint(cannot(e, "%d bytes of events are queued and not read yet; a restore cannot put events back into the kernel's queue", queued),
			"checkpoint again once the program has read its events")
	}
	rec.Inotify = &pb.InotifyState{}
	for _, w := range watches {
		path, err := handlePath(w)
		if err != nil {
			return stage.Hint(cannot(e, "watch %d (inode %d on device %d:%d): %v", w.wd, w.ino, unix.Major(w.sdev), unix.Minor(w.sdev), err),
				"a restore adds watches by path; the watched file must still have one")
		}
		rec.Inotify.Watches = append(rec.Inotify.Watches, &pb.InotifyWatch{
			Wd: w.wd, Mask: w.mask, IgnoredMask: w.ignoredMask, Path: path, Dev: w.sdev, Inode: w.ino,
		})
	}
	return nil
}

// handlePath resolves a watch's file handle to a path that names the
// watched inode now.
func handlePath(w inotifyLine) (string, error) {
	mounts, err := mountsOf(w.sdev)
	if err != nil {
		return "", err
	}
	if len(mounts) == 0 {
		return "", fmt.Errorf("no mount of its filesystem in cr-files' mount namespace")
	}
	var lastErr error
	for _, m := range mounts {
		// Not O_PATH: open_by_handle_at needs a real open file (fdget).
		mfd, err := unix.Open(m, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			lastErr = err
			continue
		}
		fd, err := unix.OpenByHandleAt(mfd, unix.NewFileHandle(w.handleType, w.handle), unix.O_PATH|unix.O_CLOEXEC)
		unix.Close(mfd)
		if err != nil {
			lastErr = fmt.Errorf("open_by_handle_at: %w", err)
			continue
		}
		path, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
		unix.Close(fd)
		if err != nil {
			lastErr = err
			continue
		}
		if strings.HasSuffix(path, " (deleted)") || !strings.HasPrefix(path, "/") {
			lastErr = fmt.Errorf("the watched file is deleted (%s)", path)
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil || st.Ino != w.ino || st.Dev != w.sdev {
			lastErr = fmt.Errorf("%s does not name the watched inode", path)
			continue
		}
		return path, nil
	}
	return "", lastErr
}

// mountsOf lists the mount points of device dev in cr-files' mount
// namespace, the root of the filesystem first.
func mountsOf(dev uint64) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var roots, others []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		fs := strings.Fields(sc.Text())
		if len(fs) < 5 {
			continue
		}
		maj, min, ok := strings.Cut(fs[2], ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(min, 10, 32)
		if !ok || err1 != nil || err2 != nil || unix.Mkdev(uint32(ma), uint32(mi)) != dev {
			continue
		}
		point := unescapeMount(fs[4])
		if fs[3] == "/" {
			roots = append(roots, point)
		} else {
			others = append(others, point)
		}
	}
	return append(roots, others...), sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
