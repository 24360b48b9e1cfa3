package tcp

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/netlock"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// queueChunk is the largest piece of a queue in one TcpQueue record.
const queueChunk = 1 << 20

// sock is one TCP socket of the tree, held through a copy of one of its fds.
type sock struct {
	inode  uint64
	pid    int
	fd     int
	file   *os.File
	netns  uint64 // inode of the socket's network namespace
	rec    *pb.TcpSocket
	send   []byte // connections: queue contents
	recv   []byte
	repair bool // we put it in repair mode
	read   bool // its connection state is read

	pending  int     // a listener: connections in its accept queue
	children []*sock // a listener: those connections, taken out to be read
	parent   *sock   // a connection taken from a listener's accept queue
}

func (s *sock) where() string {
	if s.parent != nil {
		return fmt.Sprintf("pid %d fd %d (a connection not yet accepted)", s.pid, s.parent.fd)
	}
	return fmt.Sprintf("pid %d fd %d", s.pid, s.fd)
}
func (s *sock) sfd() int { return int(s.file.Fd()) }

// dumper holds what one run of cr-tcp took hold of, so that a failure can
// give it all back.
type dumper struct {
	table  string
	socks  []*sock
	netns  map[uint64]*os.File // namespace inode -> an fd of it (SIOCGSKNS)
	locked []uint64            // namespaces whose lock we created or extended
}

// Dump appends the TCP sockets of pids (the tree rooted at root) to w.
func Dump(root int, pids []int, w *image.Writer) (err error) {
	d := &dumper{table: netlock.TableName(root), netns: map[uint64]*os.File{}}
	defer d.close()
	defer func() {
		if err != nil {
			d.release()
		}
	}()
	// From here a signal (cr-dump stopping its stages) is an error at the
	// next step, so that what was taken is given back (release) first.
	sigs := make(chan os.Signal, 1)
	stage.NotifyInterrupt(sigs)
	defer stage.StopInterrupt(sigs)
	interrupted := func() error {
		select {
		case sig := <-sigs:
			return stage.Interrupted(sig, "")
		default:
			return nil
		}
	}
	t0 := time.Now()
	for _, pid := range pids {
		if err := d.collect(pid); err != nil {
			return err
		}
		if err := interrupted(); err != nil {
			return err
		}
	}
	if len(d.socks) == 0 {
		stage.Logf("no TCP sockets")
		return nil
	}
	tCollect := time.Now()
	for _, s := range d.socks {
		if err := s.describe(); err != nil {
			return err
		}
	}
	if err := d.takePending(); err != nil {
		return err
	}
	tDescribe := time.Now()
	locks, err := d.lock()
	if err != nil {
		return err
	}
	tLock := time.Now()
	for _, s := range d.socks {
		if err := interrupted(); err != nil {
			return err
		}
		if s.rec.Conn == nil {
			continue
		}
		if err := sys.SetTCPRepair(s.sfd(), unix.TCP_REPAIR_ON); err != nil {
			return s.errorf("%w", err)
		}
		s.repair = true
		if err := s.readConn(); err != nil {
			return err
		}
		s.read = true
	}
	if err := d.requeuePending(); err != nil {
		return err
	}
	if err := interrupted(); err != nil {
		return err
	}
	tRepair := time.Now()
	for _, l := range locks {
		if err := w.WriteMessage(image.TypeTcpLock, l); err != nil {
			return fmt.Errorf("output: %w", err)
		}
	}
	conns := 0
	for _, s := range d.socks {
		if err := s.write(w); err != nil {
			return fmt.Errorf("output: %w", err)
		}
		if s.rec.Conn != nil {
			conns++
		}
	}
	us := func(d time.Duration) time.Duration { return d.Round(time.Microsecond) }
	stage.Logf("%d TCP sockets (%d connections): collected in %v, described in %v, locked in %v, repaired and read in %v, written in %v",
		len(d.socks), conns, us(tCollect.Sub(t0)), us(tDescribe.Sub(tCollect)), us(tLock.Sub(tDescribe)), us(tRepair.Sub(tLock)), us(time.Since(tRepair)))
	return nil
}

func (d *dumper) close() {
	for _, s := range d.socks {
		if s.file != nil {
			s.file.Close()
		}
	}
	for _, f := range d.netns {
		f.Close()
	}
}

// release gives back what a failed run took: connections taken from an
// accept queue back into it, repair mode off (a window probe wakes the
// peer), then the lock lifted.
func (d *dumper) release() {
	if err := d.requeuePending(); err != nil {
		stage.Logf("%v", err)
	}
	for _, s := range d.socks {
		if s.repair && s.file != nil {
			if err := sys.SetTCPRepair(s.sfd(), unix.TCP_REPAIR_OFF); err != nil {
				stage.Logf("%s: leaving repair mode: %v", s.where(), err)
			}
		}
	}
	for _, ns := range d.locked {
		if err := netlock.Unlock(nsPath(d.netns[ns]), d.table); err != nil {
			stage.Logf("%v", err)
		}
	}
}

func nsPath(f *os.File) string { return fmt.Sprintf("/proc/self/fd/%d", f.Fd()) }

// collect takes a copy of every TCP socket of pid that no earlier fd
// (of this or another process) already gave.
func (d *dumper) collect(pid int) error {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return procErr(pid, err)
	}
	fds := make([]int, 0, len(ents))
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			fds = append(fds, n)
		}
	}
	sort.Ints(fds)
	seen := map[uint64]bool{}
	for _, s := range d.socks {
		seen[s.inode] = true
	}
	pidfd := -1
	defer func() {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
	}()
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("%s/%d", dir, fd))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return procErr(pid, err)
		}
		num, ok := strings.CutPrefix(link, "socket:[")
		if !ok {
			continue
		}
		inode, err := strconv.ParseUint(strings.TrimSuffix(num, "]"), 10, 64)
		if err != nil || seen[inode] {
			continue
		}
		if pidfd < 0 {
			if pidfd, err = unix.PidfdOpen(pid, 0); err != nil {
				return procErr(pid, err)
			}
		}
		n, err := unix.PidfdGetfd(pidfd, fd, 0)
		if err != nil {
			return stage.Hint(fmt.Errorf("pid %d fd %d: pidfd_getfd: %w", pid, fd, err), "pidfd_getfd needs Linux 5.6 and ptrace access to the process (run as root)")
		}
		f := os.NewFile(uintptr(n), link)
		if !isTCP(n) {
			f.Close()
			continue
		}
		seen[inode] = true
		s := &sock{inode: inode, pid: pid, fd: fd, file: f}
		d.socks = append(d.socks, s)
		if err := d.socketNetns(s); err != nil {
			return err
		}
	}
	return nil
}

func isTCP(fd int) bool {
	fam, err1 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	typ, err2 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	proto, err3 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	return err1 == nil && err2 == nil && err3 == nil &&
		(fam == unix.AF_INET || fam == unix.AF_INET6) && typ == unix.SOCK_STREAM && proto == unix.IPPROTO_TCP
}

// socketNetns finds the network namespace the socket lives in (which need
// not be its process's) with SIOCGSKNS (Linux 4.9).
func (d *dumper) socketNetns(s *sock) error {
	f, ino, err := sys.SocketNetns(s.sfd())
	if err != nil {
		return s.errorf("%w", err)
	}
	s.netns = ino
	if _, ok := d.netns[ino]; ok {
		f.Close()
	} else {
		d.netns[ino] = f
	}
	return nil
}

func procErr(pid int, err error) error {
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return stage.Hint(fmt.Errorf("pid %d: process is gone: %w", pid, err), "did the process exit or get killed while frozen? checkpoint again")
	}
	if errors.Is(err, os.ErrPermission) || errors.Is(err, unix.EPERM) {
		return stage.Hint(fmt.Errorf("pid %d: %w", pid, err), "cr-tcp must run as root (CAP_SYS_PTRACE for pidfd_getfd, CAP_NET_ADMIN for repair mode)")
	}
	return fmt.Errorf("pid %d: %w", pid, err)
}

func (s *sock) errorf(format string, a ...any) error {
	return fmt.Errorf("%s: "+format, append([]any{s.where()}, a...)...)
}

// flow is the connection as the wire sees it.
func (s *sock) flow() netlock.Flow { return flowOf(s.rec) }

func flowOf(r *pb.TcpSocket) netlock.Flow {
	l, _ := netip.AddrFromSlice(r.LocalAddr)
	p, _ := netip.AddrFromSlice(r.PeerAddr)
	return netlock.Flow{Local: netip.AddrPortFrom(l.Unmap(), uint16(r.LocalPort)), Peer: netip.AddrPortFrom(p.Unmap(), uint16(r.PeerPort))}
}

// lock drops the packets of every connection, namespace by namespace.
func (d *dumper) lock() ([]*pb.TcpLock, error) {
	byNs := map[uint64][]netlock.Flow{}
	var order []uint64
	for _, s := range d.socks {
		if s.rec.Conn == nil {
			continue
		}
		if _, ok := byNs[s.netns]; !ok {
			order = append(order, s.netns)
		}
		byNs[s.netns] = append(byNs[s.netns], s.flow())
	}
	var locks []*pb.TcpLock
	for _, ns := range order {
		flows := byNs[ns]
		// Recorded before the call: a failed nft run may still have
		// changed something, and release removes the table either way.
		d.locked = append(d.locked, ns)
		if err := netlock.Lock(nsPath(d.netns[ns]), d.table, flows); err != nil {
			return nil, err
		}
		l := &pb.TcpLock{Table: d.table, Netns: ns, Mark: netlock.Mark}
		for _, f := range flows {
			l.Flows = append(l.Flows, &pb.TcpFlow{
				LocalAddr: f.Local.Addr().AsSlice(), LocalPort: uint32(f.Local.Port()),
				PeerAddr: f.Peer.Addr().AsSlice(), PeerPort: uint32(f.Peer.Port()),
			})
		}
		locks = append(locks, l)
	}
	return locks, nil
}

// write appends the socket's record and its queues.
func (s *sock) write(w *image.Writer) error {
	if err := w.WriteMessage(image.TypeTcpSocket, s.rec); err != nil {
		return err
	}
	for _, q := range []struct {
		queue uint32
		data  []byte
	}{{sys.TCPRecvQueue, s.recv}, {sys.TCPSendQueue, s.send}} {
		for off := 0; off < len(q.data); off += queueChunk {
			end := min(off+queueChunk, len(q.data))
			if err := w.WriteMessage(image.TypeTcpQueue, &pb.TcpQueue{Inode: s.inode, Queue: q.queue, Offset: uint32(off), Data: q.data[off:end]}); err != nil {
				return err
			}
		}
	}
	return nil
}
