package crit

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"crpipe/lib/image"
	"crpipe/lib/pb"
)

// Open file descriptions (cr-files, lib/pb/files.proto): each fd line says
// what the fd is (its target), and which other fds share its description.

func newFilesMessage(t image.Type) pb.Message {
	switch t {
	case image.TypeFileDesc:
		return &pb.FileDesc{}
	case image.TypeFileData:
		return &pb.FileData{}
	case image.TypeGhostFile:
		return &pb.GhostFile{}
	}
	return nil
}

type fdRef struct {
	pid uint32
	fd  int32
}

// fileRecords keeps the description records; contents only count.
type fileRecords struct {
	descs   map[uint64]*pb.FileDesc
	data    map[uint64]uint64           // bytes of file-data records per object
	ghosts  map[[2]uint64]*pb.GhostFile // by dev and inode
	holders map[uint64][]fdRef          // desc id -> every fd that has it (filled by index)
	firstFd map[uint64]*pb.Fd           // desc id -> its first fd (filled by index)
	showing map[uint64]bool             // descs in flight being shown (a socket may be in its own queue)
}

func (r *fileRecords) add(m pb.Message) {
	switch m := m.(type) {
	case *pb.FileDesc:
		if r.descs == nil {
			r.descs = map[uint64]*pb.FileDesc{}
		}
		r.descs[m.Id] = m
	case *pb.GhostFile:
		if r.ghosts == nil {
			r.ghosts = map[[2]uint64]*pb.GhostFile{}
		}
		r.ghosts[[2]uint64{m.Dev, m.Inode}] = m
	case *pb.FileData:
		if r.data == nil {
			r.data = map[uint64]uint64{}
		}
		r.data[m.Object] += uint64(len(m.Data))
	}
}

// index finds the fds of every description, across processes.
func (r *fileRecords) index(procs []*proc) {
	r.holders = map[uint64][]fdRef{}
	r.firstFd = map[uint64]*pb.Fd{}
	for _, p := range procs {
		for _, f := range p.files {
			for _, fd := range f.Fds {
				if fd.DescId != 0 {
					if r.holders[fd.DescId] == nil {
						r.firstFd[fd.DescId] = fd
					}
					r.holders[fd.DescId] = append(r.holders[fd.DescId], fdRef{f.Pid, fd.Fd})
				}
			}
		}
	}
}

// showFds prints one process's fd table.
func (r *fileRecords) showFds(w io.Writer, f *pb.Files) {
	fmt.Fprintf(w, "  fds:\n")
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, fd := range f.Fds {
		extra := ""
		if fd.Cloexec {
			extra = "  cloexec"
		}
		if fd.DescId != 0 {
			extra += fmt.Sprintf("  desc %d", fd.DescId)
			var others []string
			for _, h := range r.holders[fd.DescId] {
				if h.pid != f.Pid || h.fd != fd.Fd {
					if h.pid == f.Pid {
						others = append(others, fmt.Sprintf("fd %d", h.fd))
					} else {
						others = append(others, fmt.Sprintf("pid %d fd %d", h.pid, h.fd))
					}
				}
			}
			if len(others) > 0 {
				extra += " shared with " + strings.Join(others, ", ")
			}
		}
		// The target last, out of the aligned columns: an epoll's lists
		// every watch, and would pad every line to its length.
		fmt.Fprintf(tw, "    %d\t%s\t%s\toffset %d\t%s%s\n", fd.Fd, fdKind(fd.Kind), openFlagString(fd.Flags), fd.Offset, r.target(fd), extra)
	}
	tw.Flush()
	showLocks(w, f)
}

// target says what an fd refers to: its path, or its description's state.
func (r *fileRecords) target(fd *pb.Fd) string {
	// (A ghost in flight has a FileDesc too.)
	if g := r.ghosts[[2]uint64{fd.Dev, fd.Inode}]; g != nil && pb.FdKind(fd.Kind) == pb.FdKind_FD_GHOST {
		return fmt.Sprintf("%s, %s, %s in the image", fd.Path, size(uint64(g.Size)), size(r.data[g.Object]))
	}
	d := r.descs[fd.DescId]
	if d == nil || fd.DescId == 0 {
		if pb.FdKind(fd.Kind) == pb.FdKind_FD_TCP {
			return fmt.Sprintf("socket:[%d] (cr-tcp's records)", fd.Inode)
		}
		return fd.Path
	}
	switch {
	case d.Pipe != nil:
		s := fd.Path
		if d.Pipe.Fifo != "" {
			s = "fifo " + d.Pipe.Fifo
		}
		s += fmt.Sprintf(", buffer %s", size(uint64(d.Pipe.Size)))
		if n := r.data[d.Object]; n > 0 {
			s += fmt.Sprintf(", %d bytes unread", n)
		}
		return s
	case d.Eventfd != nil:
		s := fmt.Sprintf("eventfd, count %d", d.Eventfd.Count)
		if d.Eventfd.Semaphore {
			s += ", semaphore"
		}
		return s
	case d.Signalfd != nil:
		return "signalfd " + sigset(d.Signalfd.Sigmask)
	case d.Timerfd != nil:
		t := d.Timerfd
		s := fmt.Sprintf("timerfd clock %d", t.Clockid)
		if t.ValueNsec > 0 {
			s += fmt.Sprintf(", %v left", time.Duration(t.ValueNsec))
		} else {
			s += ", disarmed"
		}
		if t.IntervalNsec > 0 {
			s += fmt.Sprintf(", every %v", time.Duration(t.IntervalNsec))
		}
		if t.Ticks > 0 {
			s += fmt.Sprintf(", %d ticks unread", t.Ticks)
		}
		return s
	case d.Inotify != nil:
		var ws []string
		for _, wt := range d.Inotify.Watches {
			ws = append(ws, fmt.Sprintf("%d %s (%#x)", wt.Wd, wt.Path, wt.Mask))
		}
		return fmt.Sprintf("inotify, watches: %s", strings.Join(ws, ", "))
	case d.Memfd != nil:
		s := fmt.Sprintf("memfd:%s, %s", d.Memfd.Name, size(uint64(d.Memfd.Size)))
		if d.Memfd.Seals != 0 {
			s += fmt.Sprintf(", seals %#x", d.Memfd.Seals)
		}
		if n := r.data[d.Object]; n > 0 {
			s += fmt.Sprintf(", %s of contents", size(n))
		}
		return s
	case d.Epoll != nil:
		var ws []string
		for _, wt := range d.Epoll.Watches {
			ws = append(ws, fmt.Sprintf("fd %d of pid %d (events %#x, data %#x)", wt.Fd, wt.Pid, wt.Events, wt.Data))
		}
		if len(ws) == 0 {
			return "epoll, no watches"
		}
		return "epoll, watches " + strings.Join(ws, ", ")
	case d.Unix != nil:
		return r.unixTarget(d)
	case d.Inet != nil:
		in := d.Inet
		s := fmt.Sprintf("udp %s", inetAddrPort(in.LocalAddr, in.LocalPort))
		if pb.FdKind(d.Kind) == pb.FdKind_FD_INET_RAW {
			// Its "port" is the protocol.
			s = fmt.Sprintf("raw %s", inetAddrPort(in.LocalAddr, in.LocalPort))
		}
		if in.Connected {
			s += " -> " + inetAddrPort(in.RemoteAddr, in.RemotePort)
		}
		if in.DroppedBytes > 0 {
			s += ", queued datagrams dropped"
		}
		return s
	case d.Tty != nil && pb.FdKind(d.Kind) == pb.FdKind_FD_DEVTTY:
		if d.Tty.External {
			return fmt.Sprintf("/dev/tty on the shell job's terminal (was /dev/pts/%d)", d.Tty.Index)
		}
		return fmt.Sprintf("/dev/tty on /dev/pts/%d, opened again by session leader %d", d.Tty.Index, d.Tty.Session)
	case d.Tty != nil:
		t := d.Tty
		s := fmt.Sprintf("pty /dev/pts/%d slave", t.Index)
		if t.Master {
			s = fmt.Sprintf("pty /dev/pts/%d master", t.Index)
		}
		s += fmt.Sprintf(", %dx%d", t.Rows, t.Cols)
		if t.Session != 0 {
			s += fmt.Sprintf(", controlling terminal of session %d (foreground group %d)", t.Session, t.FgPgrp)
		}
		if n := len(t.InputLines); n > 0 || len(t.Input) > 0 {
			s += fmt.Sprintf(", unread input %d lines + %d bytes", n, len(t.Input))
		}
		if len(t.Output) > 0 {
			s += fmt.Sprintf(", unread output %d bytes", len(t.Output))
		}
		return s
	case d.Netlink != nil:
		nl := d.Netlink
		s := fmt.Sprintf("netlink protocol %d, port id %d", nl.Protocol, nl.Portid)
		var gs []string
		for i, word := range nl.Groups {
			for b := 0; b < 64; b++ {
				if word&(1<<b) != 0 {
					gs = append(gs, fmt.Sprint(i*64+b+1))
				}
			}
		}
		if len(gs) > 0 {
			s += ", groups " + strings.Join(gs, ",")
		}
		return s
	}
	return fd.Path
}

func inetAddrPort(a []byte, port uint32) string {
	ip, ok := netip.AddrFromSlice(a)
	if !ok {
		return fmt.Sprintf("?:%d", port)
	}
	return netip.AddrPortFrom(ip, uint16(port)).String()
}

var unixTypes = map[uint32]string{1: "stream", 2: "dgram", 5: "seqpacket"}

func unixAddr(name []byte) string {
	if len(name) == 0 {
		return "unnamed"
	}
	if name[0] == 0 {
		return "@" + string(name[1:])
	}
	return string(bytes.TrimRight(name, "\x00"))
}

// fromDir says where a unix name is bound from (UnixSocket.name_dir).
func fromDir(dir string) string {
	if dir == "" {
		return ""
	}
	return " (from " + dir + ")"
}

func (r *fileRecords) unixTarget(d *pb.FileDesc) string {
	u := d.Unix
	typ := unixTypes[u.Type]
	if typ == "" {
		typ = fmt.Sprintf("type-%d", u.Type)
	}
	s := fmt.Sprintf("unix %s socket:[%d] %s", typ, d.Inode, unixAddr(u.Name)) + fromDir(u.NameDir)
	switch {
	case u.State == 10:
		s += fmt.Sprintf(", listening (backlog %d, %d waiting)", u.Backlog, len(u.Pending))
	case u.Peer != 0:
		s += fmt.Sprintf(", peer socket:[%d]", u.Peer)
		if h := r.socketHolder(u.Peer); h != "" {
			s += " (" + h + ")"
		}
	case len(u.PeerName) > 0:
		s += ", connected to " + unixAddr(u.PeerName) + fromDir(u.PeerNameDir)
	case u.Connecting:
		s += fmt.Sprintf(", waiting to be accepted by socket:[%d]", u.Listener)
	case u.PeerGone:
		s += ", peer closed"
	}
	if n := len(u.Queue); n > 0 {
		var b int
		for _, m := range u.Queue {
			b += len(m.Data)
		}
		s += fmt.Sprintf(", %d bytes queued", b)
		if u.Type != 1 {
			s += fmt.Sprintf(" in %d messages", n)
		}
	}
	if u.Shutdown != 0 {
		s += fmt.Sprintf(", shutdown %s", map[uint32]string{1: "read", 2: "write", 3: "read+write"}[u.Shutdown&3])
	}
	return s + r.unixControl(u)
}

// unixControl lists the queued messages that carry credentials or files in
// flight: "[message 2 from pid P uid U gid G, in flight: desc 9 (TARGET)]".
func (r *fileRecords) unixControl(u *pb.UnixSocket) string {
	var s string
	for i, m := range u.Queue {
		var parts []string
		if c := m.Creds; c != nil {
			parts = append(parts, fmt.Sprintf("from pid %d uid %d gid %d", c.Pid, c.Uid, c.Gid))
		}
		var files []string
		for _, id := range m.Fds {
			files = append(files, fmt.Sprintf("desc %d (%s)", id, r.inFlight(id)))
		}
		if len(files) > 0 {
			parts = append(parts, "in flight: "+strings.Join(files, ", "))
		}
		if len(parts) > 0 {
			s += fmt.Sprintf(" [message %d %s]", i+1, strings.Join(parts, ", "))
		}
	}
	return s
}

// inFlight says what a file in flight is, and which fds also have it.
func (r *fileRecords) inFlight(id uint64) string {
	fd := r.firstFd[id]
	if d := r.descs[id]; fd == nil && d != nil && d.InFlight != nil {
		fd = d.InFlight
	}
	if fd == nil {
		return "not in the image"
	}
	if r.showing[id] {
		return "shown above"
	}
	if r.showing == nil {
		r.showing = map[uint64]bool{}
	}
	r.showing[id] = true
	defer delete(r.showing, id)
	s := r.target(fd)
	if strings.HasPrefix(s, fd.Path) {
		s = fdKind(fd.Kind) + " " + s
	}
	var hs []string
	for _, h := range r.holders[id] {
		hs = append(hs, fmt.Sprintf("pid %d fd %d", h.pid, h.fd))
	}
	if len(hs) > 0 {
		s += ", also " + strings.Join(hs, ", ")
	}
	return s
}

// socketHolder names the fd that has the unix socket with inode ino.
func (r *fileRecords) socketHolder(ino uint64) string {
	for id, d := range r.descs {
		if d.Unix != nil && d.Inode == ino {
			if hs := r.holders[id]; len(hs) > 0 {
				return fmt.Sprintf("pid %d fd %d", hs[0].pid, hs[0].fd)
			}
		}
	}
	return ""
}
