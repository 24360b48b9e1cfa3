package files

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// epollLine is one "tfd: ..." line of an epoll fd's fdinfo.
type epollLine struct {
	tfd    int
	events uint32
	data   uint64
	ino    uint64
}

// parseEpoll reads "tfd: %8d events: %8x data: %16llx pos:%lli ino:%lx sdev:%x" lines.
func parseEpoll(info []byte) ([]epollLine, error) {
	var out []epollLine
	for _, line := range bytes.Split(info, []byte{'\n'}) {
		if !bytes.HasPrefix(line, []byte("tfd:")) {
			continue
		}
		// Values may be padded after the colon: join "key:" and its value.
		fs := strings.Fields(strings.ReplaceAll(string(line), ": ", ":"))
		for i := 0; i < len(fs); i++ {
			if strings.HasSuffix(fs[i], ":") && i+1 < len(fs) {
				fs[i] += fs[i+1]
				fs = append(fs[:i+1], fs[i+2:]...)
			}
		}
		var w epollLine
		var have int
		for _, f := range fs {
			k, v, ok := strings.Cut(f, ":")
			if !ok {
				return nil, fmt.Errorf("epoll line %q: %w", line, errFdinfoSyntax)
			}
			var err error
			var n uint64
			switch k {
			case "tfd":
				n, err = strconv.ParseUint(v, 10, 31)
				w.tfd, have = int(n), have|1
			case "events":
				n, err = strconv.ParseUint(v, 16, 32)
				w.events, have = uint32(n), have|2
			case "data":
				w.data, err = strconv.ParseUint(v, 16, 64)
				have |= 4
			case "ino":
				w.ino, err = strconv.ParseUint(v, 16, 64)
			}
			if err != nil {
				return nil, fmt.Errorf("epoll line %q: %w", line, errFdinfoSyntax)
			}
		}
		if have != 7 {
			return nil, fmt.Errorf("epoll line %q lacks tfd, events or data: %w", line, errFdinfoSyntax)
		}
		out = append(out, w)
	}
	return out, nil
}

// dumpEpoll records every watch of an epoll description with the process
// whose fd table holds the watched fd: a watch names its target by fd
// number in the process that added it, and a restore adds it again from
// inside that process (after its fds are installed). kcmp(KCMP_EPOLL_TFD)
// confirms that the fd number still refers to the watched file.
func (d *dumper) dumpEpoll(ds *desc, rec *pb.FileDesc) error {
	e := ds.first()
	lines, err := parseEpoll(e.info)
	if err != nil {
		return cannot(e, "%v", err)
	}
	rec.Epoll = &pb.EpollState{}
	seen := map[int]bool{}
	for _, w := range lines {
		if seen[w.tfd] {
			return stage.Hint(cannot(e, "two watches for fd %d: one is for a file no longer open as fd %d", w.tfd, w.tfd),
				"close and re-add the stale epoll watch (EPOLL_CTL_DEL before closing an fd) before checkpointing")
		}
		seen[w.tfd] = true
		holder := 0
		for _, h := range ds.fds {
			if d.hasFd(h.pid, w.tfd) {
				same, err := sys.KcmpEpollTarget(h.pid, w.tfd, e.pid, e.fd, w.tfd)
				if err != nil {
					return cannot(e, "watch of fd %d: %v", w.tfd, err)
				}
				if same {
					holder = h.pid
					break
				}
			}
		}
		if holder == 0 {
			return stage.Hint(cannot(e, "it watches fd %d (inode %d), which is no longer open as fd %d in any process holding the epoll fd", w.tfd, w.ino, w.tfd),
				"remove the watch (EPOLL_CTL_DEL) before closing its fd")
		}
		rec.Epoll.Watches = append(rec.Epoll.Watches, &pb.EpollWatch{Fd: int32(w.tfd), Events: w.events, Data: w.data, Pid: uint32(holder)})
	}
	return nil
}

// hasFd reports whether fd is in pid's dumped fd table.
func (d *dumper) hasFd(pid, fd int) bool {
	for _, fs := range d.files {
		if int(fs.Pid) != pid {
			continue
		}
		for _, f := range fs.Fds {
			if int(f.Fd) == fd {
				return true
			}
		}
	}
	return false
}
