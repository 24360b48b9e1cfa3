// Package netlock is crpipe's network lock: while a TCP connection is
// checkpointed (its socket in repair mode, then closed silently when the
// process is killed) and until the restored socket is live, the packets of
// the connection are dropped by netfilter, so the peer retransmits and
// never meets a closed port that would answer with a reset.
//
// The lock is one nft table of family inet named crpipe-<root pid>, owned
// by crpipe alone: cr-tcp creates it in the dumped tree's network namespace,
// cr-restore creates (or extends) it in the namespace it restores into and
// removes it once the restored tree runs, and cr-freeze thaw (a failed or
// --leave-running dump) takes the sockets out of repair mode and removes
// it. Nothing else on the host is touched: the table is added, extended
// and deleted as a whole, each change in one atomic nft transaction.
//
// The table has two base chains (prerouting and output, at the raw
// priority, before conntrack) that drop a packet whose 4-tuple is in a set
// (both directions of every flow are elements), unless it carries Mark:
// segments crpipe writes itself to drive a restored socket.
//
// The nft tool does the netlink work (package nftables on Debian).
package netlock

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"

	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// Mark is the fwmark of packets that pass a lock.
const Mark = 0x63727470 // "crtp"

// Flow is a connection as the wire sees it: an IPv4 connection of an IPv6
// socket (IPv4-mapped addresses) is an IPv4 flow.
type Flow struct {
	Local, Peer netip.AddrPort
}

func (f Flow) String() string { return f.Local.String() + "-" + f.Peer.String() }

// TableName is the name of the lock of the tree whose root is rootPid.
func TableName(rootPid int) string { return fmt.Sprintf("crpipe-%d", rootPid) }

// isTableName says whether name is one TableName gives: "crpipe-"
// followed by digits (a regexp here cost every command its package's
// initialisation, doc/performance.md 93).
func isTableName(name string) bool {
	digits, ok := strings.CutPrefix(name, "crpipe-")
	if !ok || digits == "" {
		return false
	}
	for _, c := range []byte(digits) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func checkTable(table string) error {
	if !isTableName(table) {
		return fmt.Errorf("network lock: %q is not a crpipe table name", table)
	}
	return nil
}

// Script is the nft transaction that creates the lock table (or extends
// an existing one) with flows. It is idempotent: the chains are flushed
// and refilled in the same transaction, so no packet sees them empty.
func Script(table string, flows []Flow) string {
	var b strings.Builder
	t := "inet " + table
	fmt.Fprintf(&b, "add table %s\n", t)
	fmt.Fprintf(&b, "add set %s flows4 { type ipv4_addr . inet_service . ipv4_addr . inet_service ; }\n", t)
	fmt.Fprintf(&b, "add set %s flows6 { type ipv6_addr . inet_service . ipv6_addr . inet_service ; }\n", t)
	for _, c := range []struct{ name, hook string }{{"in", "prerouting"}, {"out", "output"}} {
		fmt.Fprintf(&b, "add chain %s %s { type filter hook %s priority raw ; policy accept ; }\n", t, c.name, c.hook)
		fmt.Fprintf(&b, "flush chain %s %s\n", t, c.name)
		fmt.Fprintf(&b, "add rule %s %s meta mark %#x accept\n", t, c.name, Mark)
		fmt.Fprintf(&b, "add rule %s %s ip saddr . tcp sport . ip daddr . tcp dport @flows4 drop\n", t, c.name)
		fmt.Fprintf(&b, "add rule %s %s ip6 saddr . tcp sport . ip6 daddr . tcp dport @flows6 drop\n", t, c.name)
	}
	var e4, e6 []string
	for _, f := range flows {
		l, p := f.Local, f.Peer
		l = netip.AddrPortFrom(l.Addr().Unmap(), l.Port())
		p = netip.AddrPortFrom(p.Addr().Unmap(), p.Port())
		if !l.Addr().IsValid() || !p.Addr().IsValid() || l.Addr().Is4() != p.Addr().Is4() {
			continue
		}
		out := fmt.Sprintf("%s . %d . %s . %d", l.Addr().WithZone(""), l.Port(), p.Addr().WithZone(""), p.Port())
		in := fmt.Sprintf("%s . %d . %s . %d", p.Addr().WithZone(""), p.Port(), l.Addr().WithZone(""), l.Port())
		if l.Addr().Is4() {
			e4 = append(e4, out, in)
		} else {
			e6 = append(e6, out, in)
		}
	}
	for _, s := range []struct {
		set   string
		elems []string
	}{{"flows4", e4}, {"flows6", e6}} {
		// Large transactions are fine for nft; keep lines readable anyway.
		for i := 0; i < len(s.elems); i += 256 {
			j := min(i+256, len(s.elems))
			fmt.Fprintf(&b, "add element %s %s { %s }\n", t, s.set, strings.Join(s.elems[i:j], ", "))
		}
	}
	return b.String()
}

// ErrNoNft says the nft tool is missing.
var ErrNoNft = errors.New("the nft tool is not installed")

func nft(netns, script string) error {
	path, err := exec.LookPath("nft")
	if err != nil {
		return stage.Hint(fmt.Errorf("network lock: %w", ErrNoNft), "install nftables (apt-get install nftables): cr-tcp locks connections with it")
	}
	return sys.InNetns(netns, func() error {
		cmd := exec.Command(path, "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			msg := strings.TrimSpace(stderr.String())
			if i := strings.IndexByte(msg, '\n'); i > 0 {
				msg = msg[:i]
			}
			return fmt.Errorf("network lock: nft: %v: %s", err, msg)
		}
		return nil
	})
}

// Lock creates the lock table in the network namespace at netns ("" for
// the caller's), or adds flows to it.
func Lock(netns, table string, flows []Flow) error {
	if err := checkTable(table); err != nil {
		return err
	}
	return nft(netns, Script(table, flows))
}

// Unlock removes the lock table from the network namespace at netns. A
// table that is not there is not an error.
func Unlock(netns, table string) error {
	if err := checkTable(table); err != nil {
		return err
	}
	if _, err := exec.LookPath("nft"); err != nil {
		return nil // no nft, so no crpipe lock either
	}
	// add then delete in one transaction: deleting is idempotent this way.
	return nft(netns, fmt.Sprintf("add table inet %s\ndelete table inet %s\n", table, table))
}

// Tables lists the crpipe lock tables of the network namespace at netns.
func Tables(netns string) ([]string, error) {
	path, err := exec.LookPath("nft")
	if err != nil {
		return nil, nil
	}
	var out []string
	err = sys.InNetns(netns, func() error {
		b, err := exec.Command(path, "list", "tables", "inet").Output()
		if err != nil {
			return fmt.Errorf("nft list tables: %w", err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if name, ok := strings.CutPrefix(strings.TrimSpace(l), "table inet "); ok && isTableName(name) {
				out = append(out, name)
			}
		}
		return nil
	})
	return out, err
}
