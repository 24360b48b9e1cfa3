package sys

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TCP repair (Linux 3.5; TCP_REPAIR_WINDOW 4.8; needs CAP_NET_ADMIN in the
// socket's network namespace). A socket in repair mode does not talk to its
// peer: its sequence numbers and queues can be read and written, and closing
// it sends nothing (no FIN, no RST).

// Repair queues (TCP_REPAIR_QUEUE).
const (
	TCPNoQueue   = 0
	TCPRecvQueue = 1
	TCPSendQueue = 2
)

// TCP states as the kernel numbers them (include/net/tcp_states.h).
const (
	TCPEstablished = 1
	TCPSynSent     = 2
	TCPSynRecv     = 3
	TCPFinWait1    = 4
	TCPFinWait2    = 5
	TCPTimeWait    = 6
	TCPClose       = 7
	TCPCloseWait   = 8
	TCPLastAck     = 9
	TCPListen      = 10
	TCPClosing     = 11
)

var tcpStateNames = [...]string{"", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
	"TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING"}

// TCPStateName names a kernel TCP state.
func TCPStateName(s uint32) string {
	if int(s) < len(tcpStateNames) && s != 0 {
		return tcpStateNames[s]
	}
	return fmt.Sprintf("state-%d", s)
}

// TCP options that TCP_REPAIR_OPTIONS sets (the codes of the TCP header).
const (
	TCPOptMSS       = 2
	TCPOptWindow    = 3
	TCPOptSACKPerm  = 4
	TCPOptTimestamp = 8
)

// tcp_info.tcpi_options bits.
const (
	TCPIOptTimestamps = 1
	TCPIOptSACK       = 2
	TCPIOptWscale     = 4
	TCPIOptECN        = 8
)

// TCPInfo is the part of struct tcp_info that restore needs. The wscale
// nibbles sit in a bitfield byte that x/sys/unix's TCPInfo does not show.
type TCPInfo struct {
	State     uint8
	Options   uint8
	SndWscale uint8
	RcvWscale uint8
	SndMSS    uint32
	RcvMSS    uint32
	Unacked   uint32 // a listener: connections waiting in its accept queue
	Sacked    uint32 // a listener: its backlog (sk_max_ack_backlog)
}

// GetTCPInfo reads TCP_INFO.
func GetTCPInfo(fd int) (TCPInfo, error) {
	var b [104]byte // up to tcpi_total_retrans and beyond; the kernel copies min(len, its size)
	l := uint32(len(b))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_INFO,
		uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return TCPInfo{}, fmt.Errorf("TCP_INFO: %w", e)
	}
	if l < 32 {
		return TCPInfo{}, fmt.Errorf("TCP_INFO: short answer (%d bytes)", l)
	}
	le := binary.LittleEndian
	return TCPInfo{
		State:     b[0],
		Options:   b[5],
		SndWscale: b[6] & 0xf,
		RcvWscale: b[6] >> 4,
		SndMSS:    le.Uint32(b[16:]),
		RcvMSS:    le.Uint32(b[20:]),
		Unacked:   le.Uint32(b[24:]),
		Sacked:    le.Uint32(b[28:]),
	}, nil
}

// SetTCPRepair switches repair mode: unix.TCP_REPAIR_ON, TCP_REPAIR_OFF
// (which sends a window probe) or TCP_REPAIR_OFF_NO_WP.
func SetTCPRepair(fd, mode int) error {
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR, mode); err != nil {
		return fmt.Errorf("TCP_REPAIR %d: %w", mode, err)
	}
	return nil
}

// TCPRepairMode reads whether the socket is in repair mode.
func TCPRepairMode(fd int) (bool, error) {
	v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR)
	if err != nil {
		return false, fmt.Errorf("TCP_REPAIR: %w", err)
	}
	return v != 0, nil
}

// SetTCPRepairQueue selects the queue that TCP_QUEUE_SEQ, send and
// recv(MSG_PEEK) work on in repair mode.
func SetTCPRepairQueue(fd, q int) error {
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, q); err != nil {
		return fmt.Errorf("TCP_REPAIR_QUEUE %d: %w", q, err)
	}
	return nil
}

// TCPQueueSeq reads the sequence number of the selected queue: write_seq
// for the send queue, rcv_nxt for the receive queue.
func TCPQueueSeq(fd int) (uint32, error) {
	v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ)
	if err != nil {
		return 0, fmt.Errorf("TCP_QUEUE_SEQ: %w", err)
	}
	return uint32(v), nil
}

// SetTCPQueueSeq sets the first sequence number of the selected queue
// (only on a closed socket, before the repair connect).
func SetTCPQueueSeq(fd int, seq uint32) error {
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ, int(int32(seq))); err != nil {
		return fmt.Errorf("TCP_QUEUE_SEQ %d: %w", seq, err)
	}
	return nil
}

// TCPRepairWindow is struct tcp_repair_window.
type TCPRepairWindow struct {
	SndWl1    uint32
	SndWnd    uint32
	MaxWindow uint32
	RcvWnd    uint32
	RcvWup    uint32
}

// GetTCPRepairWindow reads TCP_REPAIR_WINDOW (repair mode, Linux 4.8).
func GetTCPRepairWindow(fd int) (TCPRepairWindow, error) {
	var w TCPRepairWindow
	l := uint32(unsafe.Sizeof(w))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_REPAIR_WINDOW,
		uintptr(unsafe.Pointer(&w)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return w, fmt.Errorf("TCP_REPAIR_WINDOW: %w", e)
	}
	if l != uint32(unsafe.Sizeof(w)) {
		return w, fmt.Errorf("TCP_REPAIR_WINDOW: %d bytes, want %d", l, unsafe.Sizeof(w))
	}
	return w, nil
}

// SetTCPRepairWindow writes TCP_REPAIR_WINDOW (repair mode, after the
// receive queue is restored: the kernel checks the window against rcv_nxt).
func SetTCPRepairWindow(fd int, w TCPRepairWindow) error {
	if _, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_REPAIR_WINDOW,
		uintptr(unsafe.Pointer(&w)), unsafe.Sizeof(w), 0); e != 0 {
		return fmt.Errorf("TCP_REPAIR_WINDOW: %w", e)
	}
	return nil
}

// TCPRepairOpt is struct tcp_repair_opt.
type TCPRepairOpt struct {
	Code uint32
	Val  uint32
}

// SetTCPRepairOptions sets the options the handshake negotiated (repair
// mode, established, nothing sent yet). They cannot be read back: take
// them from TCP_INFO and TCP_MAXSEG.
func SetTCPRepairOptions(fd int, opts []TCPRepairOpt) error {
	if len(opts) == 0 {
		return nil
	}
	if _, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_REPAIR_OPTIONS,
		uintptr(unsafe.Pointer(&opts[0])), uintptr(len(opts))*unsafe.Sizeof(opts[0]), 0); e != 0 {
		return fmt.Errorf("TCP_REPAIR_OPTIONS: %w", e)
	}
	return nil
}

// TCPTimestamp reads the socket's timestamp clock (tcp clock + the
// connection's offset); SetTCPTimestamp (repair mode) moves the offset so
// the clock reads ts now, which keeps the peer's PAWS check happy.
func TCPTimestamp(fd int) (uint32, error) {
	v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_TIMESTAMP)
	if err != nil {
		return 0, fmt.Errorf("TCP_TIMESTAMP: %w", err)
	}
	return uint32(v), nil
}

func SetTCPTimestamp(fd int, ts uint32) error {
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_TIMESTAMP, int(int32(ts))); err != nil {
		return fmt.Errorf("TCP_TIMESTAMP: %w", err)
	}
	return nil
}

// Socket queue sizes (ioctl).
const (
	SIOCINQ     = unix.SIOCINQ     // unread bytes in the receive queue
	SIOCOUTQ    = unix.SIOCOUTQ    // bytes in the send queue, sent and unacknowledged included
	SIOCOUTQNSD = unix.SIOCOUTQNSD // bytes in the send queue not sent yet
)

// SockQueueLen runs one of the queue size ioctls.
func SockQueueLen(fd int, req uint) (int, error) {
	v, err := unix.IoctlGetInt(fd, req)
	if err != nil {
		return 0, fmt.Errorf("ioctl %#x: %w", req, err)
	}
	return v, nil
}

// PeekTCPQueue reads n bytes of the queue selected with SetTCPRepairQueue
// without consuming them (repair mode).
func PeekTCPQueue(fd, n int) ([]byte, error) {
	buf := make([]byte, n)
	got := 0
	for got < n {
		// MSG_PEEK always starts at the head of the queue.
		m, _, err := unix.Recvfrom(fd, buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("peek: %w", err)
		}
		if m <= got {
			return nil, fmt.Errorf("peek: %d of %d bytes", m, n)
		}
		got = m
	}
	return buf, nil
}

// WriteTCPQueue writes data into the selected queue (repair mode): the
// receive queue as if received, the send queue as if sent and not yet
// acknowledged.
func WriteTCPQueue(fd int, data []byte) error {
	for len(data) > 0 {
		n, err := unix.SendmsgN(fd, data, nil, nil, unix.MSG_DONTWAIT)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("write queue: %w", err)
		}
		if n == 0 {
			return errors.New("write queue: no progress")
		}
		data = data[n:]
	}
	return nil
}
