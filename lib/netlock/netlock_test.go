package netlock

import (
	"net/netip"
	"strings"
	"testing"
)

func TestScript(t *testing.T) {
	flows := []Flow{
		{Local: netip.MustParseAddrPort("198.18.0.10:7000"), Peer: netip.MustParseAddrPort("198.18.0.2:40000")},
		// An IPv6 socket's IPv4 connection is an IPv4 flow on the wire.
		{Local: netip.MustParseAddrPort("[::ffff:127.0.0.1]:7000"), Peer: netip.MustParseAddrPort("[::ffff:127.0.0.1]:5555")},
		{Local: netip.MustParseAddrPort("[2001:db8::1]:80"), Peer: netip.MustParseAddrPort("[2001:db8::2]:1234")},
	}
	s := Script("crpipe-42", flows)
	for _, want := range []string{
		"add table inet crpipe-42\n",
		"flush chain inet crpipe-42 in\n",
		"add rule inet crpipe-42 out meta mark 0x63727470 accept\n",
		"add element inet crpipe-42 flows4 { 198.18.0.10 . 7000 . 198.18.0.2 . 40000, 198.18.0.2 . 40000 . 198.18.0.10 . 7000, 127.0.0.1 . 7000 . 127.0.0.1 . 5555, 127.0.0.1 . 5555 . 127.0.0.1 . 7000 }\n",
		"add element inet crpipe-42 flows6 { 2001:db8::1 . 80 . 2001:db8::2 . 1234, 2001:db8::2 . 1234 . 2001:db8::1 . 80 }\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q:\n%s", want, s)
		}
	}
	// The mark rule comes before the drop rules of each chain.
	if strings.Index(s, "in meta mark") > strings.Index(s, "in ip saddr") {
		t.Errorf("the mark rule is not first:\n%s", s)
	}
	if s := Script("crpipe-42", nil); strings.Contains(s, "add element") {
		t.Errorf("elements without flows:\n%s", s)
	}
}

func TestTableNames(t *testing.T) {
	if TableName(4242) != "crpipe-4242" {
		t.Fatal(TableName(4242))
	}
	for _, bad := range []string{"", "crpipe-", "crpipe-1; flush ruleset", "filter", "crpipe-12a"} {
		if err := Lock("", bad, nil); err == nil {
			t.Errorf("Lock accepted table %q", bad)
		}
		if err := Unlock("", bad); err == nil {
			t.Errorf("Unlock accepted table %q", bad)
		}
	}
}

func TestIsTableName(t *testing.T) {
	for name, want := range map[string]bool{
		TableName(42): true, "crpipe-0": true, "crpipe-": false, "crpipe-4a": false, "crpipe-42 ": false,
		"xcrpipe-42": false, "crpipe--1": false, "filter": false, "": false,
	} {
		if got := isTableName(name); got != want {
			t.Errorf("isTableName(%q) = %v, want %v", name, got, want)
		}
	}
	if checkTable("crpipe-7; flush ruleset") == nil {
		t.Error("checkTable took a name with more after the digits")
	}
}
