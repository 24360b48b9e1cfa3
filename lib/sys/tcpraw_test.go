package sys

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// TestTCPSegmentChecksum checks the checksum the way a receiver does: the
// ones' complement sum of pseudo-header and segment is all ones.
func TestTCPSegmentChecksum(t *testing.T) {
	for _, c := range []struct{ src, dst string }{
		{"198.18.0.2:40000", "198.18.0.10:7000"},
		{"[2001:db8::2]:1234", "[2001:db8::1]:80"},
	} {
		seg := TCPSegment{
			Src: netip.MustParseAddrPort(c.src), Dst: netip.MustParseAddrPort(c.dst),
			Seq: 0x01020304, Ack: 0xfffffff0, Flags: TCPFlagFIN | TCPFlagACK, Window: 512,
			Options: []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}, Payload: []byte("odd"),
		}
		b, err := seg.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		if got := int(b[12]>>4) * 4; got != 32 {
			t.Errorf("%s: header length %d, want 32", c.src, got)
		}
		var sum uint32
		add := func(p []byte) {
			for len(p) >= 2 {
				sum += uint32(binary.BigEndian.Uint16(p))
				p = p[2:]
			}
			if len(p) == 1 {
				sum += uint32(p[0]) << 8
			}
		}
		add(seg.Src.Addr().AsSlice())
		add(seg.Dst.Addr().AsSlice())
		add([]byte{0, 6})
		add([]byte{byte(len(b) >> 8), byte(len(b))})
		add(b)
		for sum>>16 != 0 {
			sum = sum&0xffff + sum>>16
		}
		if sum != 0xffff {
			t.Errorf("%s: checksum does not verify (sum %#x)", c.src, sum)
		}
	}
	if _, err := (TCPSegment{Src: netip.MustParseAddrPort("1.2.3.4:1"), Dst: netip.MustParseAddrPort("[::1]:2")}).Bytes(); err == nil {
		t.Error("mixed families accepted")
	}
	if _, err := (TCPSegment{Src: netip.MustParseAddrPort("1.2.3.4:1"), Dst: netip.MustParseAddrPort("1.2.3.4:2"), Options: []byte{1}}).Bytes(); err == nil {
		t.Error("unpadded options accepted")
	}
}
