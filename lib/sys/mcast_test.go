package sys

import (
	"bytes"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseIgmp(t *testing.T) {
	v4, err := parseIgmp([]byte("Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter\n" +
		"1\tlo        :     2      V3\n\t\t\t\t010000E0     1 0:00000000\t\t0\n\t\t\t\t030201EF     1 0:00000000\t\t0\n" +
		"4\teth0      :     1      V3\n\t\t\t\t010000E0     1 0:00000000\t\t0\n"))
	if err != nil || len(v4) != 3 {
		t.Fatalf("parseIgmp: %v %v", v4, err)
	}
	if g := v4[1]; g.Ifindex != 1 || g.Device != "lo" || !net.IP(g.Group).Equal(net.IPv4(239, 1, 2, 3)) {
		t.Errorf("second group %+v, want 239.1.2.3 on lo (1)", g)
	}
	if g := v4[2]; g.Ifindex != 4 || g.Device != "eth0" {
		t.Errorf("third group %+v, want on eth0 (4)", g)
	}
	v6, err := parseIgmp6([]byte("1    lo              ff150000000000000000000000001234     1 00000004 0\n"))
	if err != nil || len(v6) != 1 || v6[0].Family != unix.AF_INET6 || !bytes.Equal(v6[0].Group, net.ParseIP("ff15::1234")) {
		t.Fatalf("parseIgmp6: %+v %v", v6, err)
	}
	for _, bad := range []string{"Idx\n\t\t010000E0 1\n", "Idx\nx\tlo : 1\n"} {
		if gs, err := parseIgmp([]byte(bad)); err == nil {
			t.Errorf("parseIgmp(%q) = %v, want an error", bad, gs)
		}
	}
}

// TestMcastMembership joins a group with a source filter on lo and reads
// it back, then a socket that joined nothing.
func TestMcastMembership(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	group := net.IPv4(239, 7, 7, 7).To4()
	src := [][]byte{net.IPv4(127, 0, 0, 9).To4()}
	if err := McastJoin(fd, unix.AF_INET, 1, group, McastInclude, src); err != nil {
		t.Skipf("cannot join a group on lo here: %v", err)
	}
	member, mode, sources, err := McastMembership(fd, unix.AF_INET, 1, group)
	if err != nil || !member || mode != McastInclude || len(sources) != 1 || !bytes.Equal(sources[0], src[0]) {
		t.Fatalf("membership %v mode %d sources %v, %v", member, mode, sources, err)
	}
	other, _ := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	defer unix.Close(other)
	if member, _, _, err := McastMembership(other, unix.AF_INET, 1, group); err != nil || member {
		t.Errorf("a socket that joined nothing: member %v, %v", member, err)
	}
}

// InterfaceIndex finds lo where /sys says it is, and refuses a name no
// interface has.
func TestInterfaceIndex(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	b, err := os.ReadFile("/sys/class/net/lo/ifindex")
	if err != nil {
		t.Fatal(err)
	}
	want, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := InterfaceIndex(fd, "lo"); err != nil || got != want {
		t.Errorf("InterfaceIndex(lo) = %d, %v; want %d", got, err, want)
	}
	if got, err := InterfaceIndex(fd, "crpipe-none0"); !errors.Is(err, unix.ENODEV) {
		t.Errorf("InterfaceIndex of a missing interface = %d, %v; want ENODEV", got, err)
	}
}
