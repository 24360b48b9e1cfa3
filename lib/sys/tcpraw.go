package sys

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// TCP header flags.
const (
	TCPFlagFIN = 0x01
	TCPFlagSYN = 0x02
	TCPFlagRST = 0x04
	TCPFlagPSH = 0x08
	TCPFlagACK = 0x10
)

// TCPSegment is a TCP segment crpipe writes itself, with its addresses,
// to drive a socket of this host through a step that repair mode has no
// option for (the peer's FIN, say). Src may be any address: the segment is
// delivered to a local Dst through loopback, with no source check.
type TCPSegment struct {
	Src, Dst netip.AddrPort
	Seq, Ack uint32
	Flags    uint8
	Window   uint16 // as the header carries it (scaled)
	Options  []byte // TCP options, padded to 4 bytes by the caller
	Payload  []byte
}

// Bytes lays out the TCP header and payload, checksum included.
func (s TCPSegment) Bytes() ([]byte, error) {
	if len(s.Options)%4 != 0 || len(s.Options) > 40 {
		return nil, fmt.Errorf("tcp segment: %d bytes of options", len(s.Options))
	}
	if s.Src.Addr().Is4() != s.Dst.Addr().Is4() {
		return nil, fmt.Errorf("tcp segment: %v to %v mixes address families", s.Src, s.Dst)
	}
	hl := 20 + len(s.Options)
	b := make([]byte, hl+len(s.Payload))
	be := binary.BigEndian
	be.PutUint16(b[0:], s.Src.Port())
	be.PutUint16(b[2:], s.Dst.Port())
	be.PutUint32(b[4:], s.Seq)
	be.PutUint32(b[8:], s.Ack)
	b[12] = byte(hl/4) << 4
	b[13] = s.Flags
	be.PutUint16(b[14:], s.Window)
	copy(b[20:], s.Options)
	copy(b[hl:], s.Payload)
	// Checksum over the pseudo-header and the segment.
	var sum uint32
	add := func(p []byte) {
		for i := 0; i+1 < len(p); i += 2 {
			sum += uint32(be.Uint16(p[i:]))
		}
		if len(p)%2 == 1 {
			sum += uint32(p[len(p)-1]) << 8
		}
	}
	src, dst := s.Src.Addr().AsSlice(), s.Dst.Addr().AsSlice()
	add(src)
	add(dst)
	var tail [4]byte
	be.PutUint16(tail[0:], unix.IPPROTO_TCP)
	be.PutUint16(tail[2:], uint16(len(b)))
	if s.Src.Addr().Is6() {
		var l [8]byte
		be.PutUint32(l[0:], uint32(len(b)))
		l[7] = unix.IPPROTO_TCP
		add(l[:])
	} else {
		add(tail[:])
	}
	add(b)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	be.PutUint16(b[16:], ^uint16(sum))
	return b, nil
}

// SendTCPSegment writes s with an IP header of its own through a raw
// socket (CAP_NET_RAW) of the caller's network namespace, with fwmark mark.
func SendTCPSegment(s TCPSegment, mark uint32) error {
	tcp, err := s.Bytes()
	if err != nil {
		return err
	}
	be := binary.BigEndian
	var pkt []byte
	var to unix.Sockaddr
	family := unix.AF_INET
	if s.Src.Addr().Is4() {
		pkt = make([]byte, 20+len(tcp))
		pkt[0] = 0x45
		be.PutUint16(pkt[2:], uint16(len(pkt)))
		be.PutUint16(pkt[6:], 0x4000) // DF
		pkt[8] = 64
		pkt[9] = unix.IPPROTO_TCP
		src, dst := s.Src.Addr().As4(), s.Dst.Addr().As4()
		copy(pkt[12:], src[:])
		copy(pkt[16:], dst[:])
		copy(pkt[20:], tcp) // the kernel fills in the IP checksum and id
		to = &unix.SockaddrInet4{Addr: dst}
	} else {
		family = unix.AF_INET6
		pkt = make([]byte, 40+len(tcp))
		pkt[0] = 0x60
		be.PutUint16(pkt[4:], uint16(len(tcp)))
		pkt[6] = unix.IPPROTO_TCP
		pkt[7] = 64
		src, dst := s.Src.Addr().As16(), s.Dst.Addr().As16()
		copy(pkt[8:], src[:])
		copy(pkt[24:], dst[:])
		copy(pkt[40:], tcp)
		to = &unix.SockaddrInet6{Addr: dst}
	}
	// IPPROTO_RAW sockets take the IP header from the caller (IPv6: Linux 4.5).
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	if mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
			return fmt.Errorf("raw socket: SO_MARK: %w", err)
		}
	}
	if err := unix.Sendto(fd, pkt, 0, to); err != nil {
		return fmt.Errorf("send %v -> %v: %w", s.Src, s.Dst, err)
	}
	return nil
}
