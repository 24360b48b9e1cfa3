package files

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/pb"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// Files in flight (SCM_RIGHTS) and credentials (SCM_CREDENTIALS) of queued
// unix messages.
//
// A file sent over a unix socket and not received yet is in the receiver's
// queue, in no fd table. Peeking at the queue with room for control
// messages makes the kernel install a copy of each file in flight in
// cr-files (unix_peek_fds): each becomes an entry of cr-files' own fd table,
// dumped like any other fd. group finds with kcmp whether a process of the
// dump holds the same description; a description that none holds gets its
// FileDesc record with in_flight set. A socket in flight is peeked in turn.
// The copies are closed before checkHolders looks for other holders.
//
// The queues are read here, before grouping; dumpUnix records them.

// peekedMsg is one message of a receive queue as one peek returned it.
type peekedMsg struct {
	data  []byte
	from  unix.Sockaddr
	files []*entry    // in flight, in order
	creds *unix.Ucred // when the receiver has SO_PASSCRED
}

// scmMaxFds is the most files one message carries (the kernel's SCM_MAX_FD).
const scmMaxFds = 253

// notInFlight are kinds a restore cannot send again in flight, and why.
var notInFlight = map[pb.FdKind]string{
	pb.FdKind_FD_EPOLL: "its watches are added again from inside a process that holds it",
	pb.FdKind_FD_TCP:   "cr-tcp dumps TCP sockets from the fd tables of processes",
	pb.FdKind_FD_TTY:   "terminals are restored from the fd tables of their sessions",
}

// where names an fd in messages: an fd in flight by the socket and message
// that hold it.
func (e *entry) where() string {
	if e.flight != "" {
		return e.flight
	}
	return fmt.Sprintf("pid %d fd %d", e.pid, e.fd)
}

// located rewrites an error about e: one in flight is named by where it is
// queued, not by cr-files' copy of it.
func (e *entry) located(err error) error {
	if err == nil || e.flight == "" {
		return err
	}
	return relocate(err, e.pid, e.fd, e.flight)
}

func relocate(err error, pid, fd int, where string) error {
	msg := err.Error()
	if strings.Contains(msg, where) {
		return err
	}
	if self := fmt.Sprintf("pid %d fd %d", pid, fd); strings.Contains(msg, self) {
		msg = strings.Replace(msg, self, where, 1)
	} else {
		msg = where + ": " + msg
	}
	var h *stage.HintError
	if errors.As(err, &h) {
		return stage.Hint(errors.New(msg), h.Hint)
	}
	return errors.New(msg)
}

// peekQueues reads the receive queue of every unix socket of the dump,
// sockets in flight included (entries grows while it runs).
func (d *dumper) peekQueues() error {
	peeked := map[uint64]bool{}
	for i := 0; i < len(d.entries); i++ {
		e := d.entries[i]
		if e.kind() != pb.FdKind_FD_UNIX || peeked[e.st.Ino] {
			continue
		}
		peeked[e.st.Ino] = true
		if err := d.peekQueue(e); err != nil {
			return e.located(err)
		}
	}
	return nil
}

// peekQueue reads e's receive queue without consuming it: MSG_PEEK at
// offsets set with SO_PEEK_OFF (the program's own offset is put back after).
// On a stream socket a peek ends after a write that carried files and, with
// SO_PASSCRED, where the writer changes; bytes written before it come with
// it, so a restore sends them together with the files. Where that write
// begins cannot be found: a peek at any offset before it walks on through
// the queue with nothing left to copy and returns its files too
// (unix_stream_read_generic jumps back into its loop past the size check).
func (d *dumper) peekQueue(e *entry) error {
	u, err := d.unixSockets()
	if err != nil {
		return err
	}
	s := u.all[e.st.Ino]
	scm, _ := fdinfoField(e.info, "scm_fds")
	// sock_diag counts a stream's queued bytes, but of datagrams only the
	// length of the first (of seqpacket ones, the sum), 0 for empty ones:
	// those queues are always peeked.
	if s == nil || s.State == unixListen || s.Type == unix.SOCK_STREAM && s.RQueue == 0 && (scm == "" || scm == "0") {
		return nil // dumpUnix says why a socket is missing; a listener queues connections
	}
	f, err := d.getfd(e)
	if err != nil {
		return err
	}
	defer f.Close()
	fd := int(f.Fd())
	peekOff, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF)
	if err != nil {
		return cannot(e, "SO_PEEK_OFF: %v", err)
	}
	defer unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, peekOff)
	rcvbuf, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
	if err != nil {
		return cannot(e, "SO_RCVBUF: %v", err)
	}
	// A seqpacket socket whose peer has shut down returns 0 at the end of
	// its queue, as for an empty message; with SO_PASSCRED a message comes
	// with credentials and the end without. Only the peer can send to it,
	// and that is frozen, in the dump, or gone.
	passcred := true
	if s.Type == unix.SOCK_SEQPACKET {
		on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED)
		if err == nil && on == 0 {
			err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
			defer unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 0)
			passcred = false
		}
		if err != nil {
			return cannot(e, "SO_PASSCRED: %v", err)
		}
	}
	// One buffer for every queue peeked (each message is copied out of
	// it): one of ~200 KiB per socket made 200 MB of garbage for a process
	// with 1,000 queues.
	size := max(rcvbuf, 1<<16) + 1
	if len(d.peekBuf) < size {
		d.peekBuf = make([]byte, size)
	}
	buf := d.peekBuf[:size]
	oob := make([]byte, unix.CmsgSpace(scmMaxFds*4)+unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(4))
	var msgs []*peekedMsg
	// The first datagram is peeked without an offset: the kernel skips an
	// empty one at an offset once it has been peeked at.
	total, off := 0, 0
	if s.Type != unix.SOCK_STREAM {
		off = -1
	}
	for {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, off); err != nil {
			return cannot(e, "SO_PEEK_OFF: %v", err)
		}
		n, oobn, flags, from, err := unix.Recvmsg(fd, buf, oob, unix.MSG_PEEK|unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			return cannot(e, "peek at the receive queue: %v", err)
		}
		if n == 0 && oobn == 0 && s.Type != unix.SOCK_DGRAM {
			break // end of file: the peer shut down
		}
		m := &peekedMsg{data: append([]byte(nil), buf[:n]...), from: from}
		if err := d.control(e, len(msgs)+1, oob[:oobn], m); err != nil {
			return err
		}
		if !passcred {
			m.creds = nil
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return stage.Hint(cannot(e, "queued message %d carries more files in flight than cr-files could take (MSG_CTRUNC)", len(msgs)+1),
				"raise cr-files' RLIMIT_NOFILE (ulimit -n)")
		}
		if flags&unix.MSG_TRUNC != 0 || n == len(buf) {
			return cannot(e, "a queued message is larger than the %d bytes of the receive buffer", len(buf)-1)
		}
		msgs = append(msgs, m)
		total += n
		off = total
		if total > int(s.RQueue) && s.Type == unix.SOCK_STREAM {
			return cannot(e, "peeked %d bytes of a queue of %d: the peek offset did not advance", total, s.RQueue)
		}
	}
	if s.Type == unix.SOCK_STREAM && total != int(s.RQueue) {
		return cannot(e, "peeked %d bytes, sock_diag counts %d queued", total, s.RQueue)
	}
	if d.queues == nil {
		d.queues = map[uint64][]*peekedMsg{}
	}
	d.queues[e.st.Ino] = msgs
	return nil
}

// control takes the control messages of queued message n of socket sock:
// credentials, and the files in flight, which the peek installed in
// cr-files (closed by closeFlight) and which become entries.
func (d *dumper) control(sock *entry, n int, oob []byte, m *peekedMsg) error {
	cms, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return cannot(sock, "queued message %d: control messages: %v", n, err)
	}
	var fds []int
	for i := range cms {
		c := &cms[i]
		if c.Header.Level != unix.SOL_SOCKET {
			continue
		}
		switch c.Header.Type {
		case unix.SCM_RIGHTS:
			got, err := unix.ParseUnixRights(c)
			if err != nil {
				return cannot(sock, "queued message %d: SCM_RIGHTS: %v", n, err)
			}
			d.flight = append(d.flight, got...)
			fds = append(fds, got...)
		case unix.SCM_PIDFD: // SO_PASSPIDFD: a pidfd of the sender, installed too
			if len(c.Data) >= 4 {
				unix.Close(int(int32(binary.NativeEndian.Uint32(c.Data))))
			}
		case unix.SCM_CREDENTIALS:
			if m.creds, err = unix.ParseUnixCredentials(c); err != nil {
				return cannot(sock, "queued message %d: SCM_CREDENTIALS: %v", n, err)
			}
		}
	}
	for j, fd := range fds {
		where := fmt.Sprintf("%s: file %d of queued message %d (in flight)", sock.where(), j+1, n)
		fe, err := d.dumpFd(os.Getpid(), fd)
		if err != nil {
			return relocate(err, os.Getpid(), fd, where)
		}
		fe.flight = where
		fe.pfd.Fd, fe.pfd.Cloexec = -1, false // no fd number: FileDesc.in_flight
		if why, ok := notInFlight[fe.kind()]; ok {
			return stage.Hint(fmt.Errorf("%s: %s (%s) cannot be restored in flight: %s", where, fe.kindName(), fe.link, why),
				"checkpoint again once the program has received it")
		}
		if fe.kind() == pb.FdKind_FD_UNIX && d.unix.inDump[fe.st.Ino] == nil {
			d.unix.inDump[fe.st.Ino] = fe
		}
		d.entries = append(d.entries, fe)
		m.files = append(m.files, fe)
	}
	return nil
}

// closeFlight closes cr-files' copies of the files in flight.
func (d *dumper) closeFlight() {
	for _, fd := range d.flight {
		unix.Close(fd)
	}
	d.flight = nil
}

// unixQueue records the receive queue peekQueue read: datagrams with their
// senders, the descriptions of the files in flight, credentials.
func (d *dumper) unixQueue(e *entry, s *sys.UnixDiag, us *pb.UnixSocket) error {
	total := 0
	for i, m := range d.queues[e.st.Ino] {
		um := &pb.UnixMessage{Data: m.data}
		if sa, ok := m.from.(*unix.SockaddrUnix); ok && s.Type == unix.SOCK_DGRAM && sa.Name != "" {
			um.Sender = []byte(sa.Name)
			if sa.Name[0] == '@' { // x/sys shows an abstract name with a leading @
				um.Sender[0] = 0
			}
			if ino, ok := d.unix.byName(um.Sender); ok {
				um.SenderInode = ino
			} else {
				return stage.Hint(cannot(e, "a queued datagram comes from %s, which is not in the dump", unixName(um.Sender)),
					"checkpoint again once the program has read its datagrams")
			}
		}
		for _, fe := range m.files {
			um.Fds = append(um.Fds, fe.desc.id)
		}
		if c := m.creds; c != nil {
			if err := d.checkCreds(e, i+1, c); err != nil {
				return err
			}
			um.Creds = &pb.UnixCreds{Pid: uint32(c.Pid), Uid: c.Uid, Gid: c.Gid}
		}
		total += len(m.data)
		// A stream's bytes are one message up to files in flight or a
		// change of writer.
		if last := len(us.Queue) - 1; s.Type == unix.SOCK_STREAM && last >= 0 && len(us.Queue[last].Fds) == 0 && sameCreds(us.Queue[last].Creds, um.Creds) {
			us.Queue[last].Data = append(us.Queue[last].Data, um.Data...)
			us.Queue[last].Fds = um.Fds
			continue
		}
		us.Queue = append(us.Queue, um)
	}
	if len(us.Queue) > 0 {
		stage.Logf("%s: %s unix socket: %d queued messages, %d bytes", e.where(), unixName(s.Name), len(us.Queue), total)
	}
	return nil
}

func sameCreds(a, b *pb.UnixCreds) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Pid == b.Pid && a.Uid == b.Uid && a.Gid == b.Gid
}

// checkCreds: a restore sends the credentials again, and the kernel takes
// only a pid that exists: a process of the dump, or one alive outside it.
func (d *dumper) checkCreds(e *entry, n int, c *unix.Ucred) error {
	if d.inTree[int(c.Pid)] {
		return nil
	}
	if c.Pid > 0 {
		if err := unix.Kill(int(c.Pid), 0); err == nil || errors.Is(err, unix.EPERM) {
			stage.Logf("%s: queued message %d carries the credentials of pid %d, outside the dump: a restore sends them while that pid exists", e.where(), n, c.Pid)
			return nil
		}
	}
	return stage.Hint(cannot(e, "queued message %d carries the credentials of pid %d, which has exited: a restore could not send them again (the kernel takes only a live pid)", n, c.Pid),
		"checkpoint again once the program has read its messages")
}
