package sys

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A socket's multicast memberships can only be asked about one group at a
// time (MCAST_MSFILTER, which also gives the source filter). The groups to
// ask about are those of the network namespace, /proc/PID/net/igmp and
// igmp6: every membership of every socket counts there.

// McastGroup is a group some socket of a network namespace joined on an
// interface.
type McastGroup struct {
	Family  int // AF_INET or AF_INET6
	Ifindex int
	Device  string
	Group   []byte // 4 or 16 bytes
}

// McastGroups lists the multicast groups joined in pid's network
// namespace (a kernel without IPv6 has no igmp6).
func McastGroups(pid int) ([]McastGroup, error) {
	var gs []McastGroup
	b, err := ReadFile(fmt.Sprintf("/proc/%d/net/igmp", pid))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	v4, err := parseIgmp(b)
	if err != nil {
		return nil, err
	}
	gs = append(gs, v4...)
	b, err = ReadFile(fmt.Sprintf("/proc/%d/net/igmp6", pid))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	v6, err := parseIgmp6(b)
	if err != nil {
		return nil, err
	}
	return append(gs, v6...), nil
}

// parseIgmp reads /proc/net/igmp: a line per device ("1\tlo  : 1 V3"),
// then a line per group, its address in hex as the kernel holds it
// (network order read as a little-endian word: 010000E0 is 224.0.0.1).
func parseIgmp(b []byte) ([]McastGroup, error) {
	var gs []McastGroup
	var ifindex int
	var dev string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for first := true; sc.Scan(); first = false {
		line := sc.Text()
		f := strings.Fields(line)
		if first || len(f) == 0 {
			continue
		}
		if line[0] != '\t' && line[0] != ' ' { // a device
			n, err := strconv.Atoi(f[0])
			if err != nil || len(f) < 2 {
				return nil, fmt.Errorf("igmp line %q: malformed", line)
			}
			ifindex, dev = n, strings.TrimSuffix(f[1], ":")
			continue
		}
		v, err := strconv.ParseUint(f[0], 16, 32)
		if err != nil || dev == "" {
			return nil, fmt.Errorf("igmp line %q: malformed", line)
		}
		g := make([]byte, 4)
		binary.LittleEndian.PutUint32(g, uint32(v))
		gs = append(gs, McastGroup{Family: unix.AF_INET, Ifindex: ifindex, Device: dev, Group: g})
	}
	return gs, sc.Err()
}

// parseIgmp6 reads /proc/net/igmp6: "ifindex device group(32 hex) users
// flags timer".
func parseIgmp6(b []byte) ([]McastGroup, error) {
	var gs []McastGroup
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.Atoi(f[0])
		if err != nil || len(f) < 3 || len(f[2]) != 32 {
			return nil, fmt.Errorf("igmp6 line %q: malformed", line)
		}
		g, err := hex.DecodeString(f[2])
		if err != nil {
			return nil, fmt.Errorf("igmp6 line %q: %w", line, err)
		}
		gs = append(gs, McastGroup{Family: unix.AF_INET6, Ifindex: n, Device: f[1], Group: g})
	}
	return gs, nil
}

// Source filter modes (MCAST_INCLUDE, MCAST_EXCLUDE).
const (
	McastInclude = 0
	McastExclude = 1
)

// maxMcastSources bounds the sources read per group (the kernel's default
// igmp_max_msf is 10).
const maxMcastSources = 64

// groupFilter is struct group_filter: an interface index, the group, the
// filter mode, the number of sources and the sources (sockaddr_storage
// each).
const (
	storageSz = 128 // sizeof(struct sockaddr_storage)
	gfGroup   = 8
	gfFmode   = gfGroup + storageSz
	gfNumsrc  = gfFmode + 4
	gfSlist   = gfNumsrc + 4
)

// McastMembership reads fd's membership of group on ifindex: false when fd
// did not join it; else its filter mode and sources.
func McastMembership(fd, family, ifindex int, group []byte) (member bool, mode uint32, sources [][]byte, err error) {
	buf := make([]byte, gfSlist+maxMcastSources*storageSz)
	binary.LittleEndian.PutUint32(buf, uint32(ifindex))
	putStorage(buf[gfGroup:], family, group)
	binary.LittleEndian.PutUint32(buf[gfNumsrc:], maxMcastSources) // room for; the kernel says how many
	level := unix.IPPROTO_IP
	if family == unix.AF_INET6 {
		level = unix.IPPROTO_IPV6
	}
	l := uint32(len(buf))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), unix.MCAST_MSFILTER,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
	switch {
	case e == unix.EADDRNOTAVAIL:
		return false, 0, nil, nil
	case e != 0:
		return false, 0, nil, fmt.Errorf("getsockopt MCAST_MSFILTER: %w", e)
	}
	mode = binary.LittleEndian.Uint32(buf[gfFmode:])
	n := int(binary.LittleEndian.Uint32(buf[gfNumsrc:]))
	if n > maxMcastSources {
		return false, 0, nil, fmt.Errorf("a multicast group with %d sources (more than %d)", n, maxMcastSources)
	}
	for i := 0; i < n; i++ {
		sources = append(sources, storageAddr(buf[gfSlist+i*storageSz:], family))
	}
	return true, mode, sources, nil
}

// McastJoin joins group on ifindex with a source filter (MCAST_JOIN_GROUP,
// then MCAST_MSFILTER unless it is the join's own: exclude nothing).
func McastJoin(fd, family, ifindex int, group []byte, mode uint32, sources [][]byte) error {
	level := unix.IPPROTO_IP
	if family == unix.AF_INET6 {
		level = unix.IPPROTO_IPV6
	}
	req := make([]byte, gfGroup+storageSz) // struct group_req
	binary.LittleEndian.PutUint32(req, uint32(ifindex))
	putStorage(req[gfGroup:], family, group)
	if err := setsockoptBytes(fd, level, unix.MCAST_JOIN_GROUP, req); err != nil {
		return fmt.Errorf("MCAST_JOIN_GROUP: %w", err)
	}
	if mode == McastExclude && len(sources) == 0 {
		return nil
	}
	buf := make([]byte, gfSlist+max(len(sources), 1)*storageSz)
	binary.LittleEndian.PutUint32(buf, uint32(ifindex))
	putStorage(buf[gfGroup:], family, group)
	binary.LittleEndian.PutUint32(buf[gfFmode:], mode)
	binary.LittleEndian.PutUint32(buf[gfNumsrc:], uint32(len(sources)))
	for i, s := range sources {
		putStorage(buf[gfSlist+i*storageSz:], family, s)
	}
	if err := setsockoptBytes(fd, level, unix.MCAST_MSFILTER, buf); err != nil {
		return fmt.Errorf("MCAST_MSFILTER: %w", err)
	}
	return nil
}

func setsockoptBytes(fd, level, opt int, b []byte) error {
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// putStorage writes addr as a sockaddr_in or sockaddr_in6 (port 0).
func putStorage(b []byte, family int, addr []byte) {
	binary.LittleEndian.PutUint16(b, uint16(family))
	if family == unix.AF_INET6 {
		copy(b[8:24], addr) // sin6_port, sin6_flowinfo, then sin6_addr
		return
	}
	copy(b[4:8], addr) // sin_port, then sin_addr
}

func storageAddr(b []byte, family int) []byte {
	if family == unix.AF_INET6 {
		return append([]byte(nil), b[8:24]...)
	}
	return append([]byte(nil), b[4:8]...)
}

// InterfaceIndex is the index of the network interface name in the network
// namespace of socket fd (SIOCGIFINDEX): the restored socket's own, where
// its groups are joined again.
func InterfaceIndex(fd int, name string) (int, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, err
	}
	return int(ifr.Uint32()), nil
}
