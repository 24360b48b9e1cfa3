package netlock

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"crpipe/lib/sys"
)

// Release undoes a dump's hold on the network for processes that go on
// running (cr-freeze thaw after a failed or --leave-running dump): every
// TCP socket of pids that is in repair mode leaves it (sending a window
// probe, so the peer answers at once), then the lock table is removed from
// the network namespace of each of those sockets (which need not be its
// process's: cr-tcp locked the sockets' namespaces). It is
// idempotent, and costs nothing but a look at /proc when no process has a
// TCP socket.
func Release(table string, pids []int) (repaired int, err error) {
	if err := checkTable(table); err != nil {
		return 0, err
	}
	var errs []error
	netns := map[uint64]*os.File{} // of the TCP sockets
	defer func() {
		for _, f := range netns {
			f.Close()
		}
	}()
	for _, pid := range pids {
		n, err := unrepair(pid, netns)
		repaired += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	// Unlock only after every socket left repair: a peer's retransmission
	// must not reach a socket that still stands still.
	for _, f := range netns {
		if err := Unlock(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), table); err != nil {
			errs = append(errs, err)
		}
	}
	return repaired, errors.Join(errs...)
}

// unrepair takes the TCP sockets of pid out of repair mode, and adds their
// network namespaces to netns.
func unrepair(pid int, netns map[uint64]*os.File) (n int, err error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("pid %d: %w", pid, err)
	}
	pidfd := -1
	defer func() {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
	}()
	seen := map[string]bool{}
	for _, e := range ents {
		link, err := os.Readlink(dir + "/" + e.Name())
		if err != nil || !strings.HasPrefix(link, "socket:[") || seen[link] {
			continue
		}
		seen[link] = true
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pidfd < 0 {
			if pidfd, err = unix.PidfdOpen(pid, 0); err != nil {
				return n, fmt.Errorf("pid %d: pidfd_open: %w", pid, err)
			}
		}
		s, err := unix.PidfdGetfd(pidfd, fd, 0)
		if err != nil {
			continue // closed meanwhile
		}
		proto, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		if err == nil && proto == unix.IPPROTO_TCP {
			if f, ino, err := sys.SocketNetns(s); err == nil {
				if _, ok := netns[ino]; ok {
					f.Close()
				} else {
					netns[ino] = f
				}
			}
			if on, err := sys.TCPRepairMode(s); err == nil && on {
				if err := sys.SetTCPRepair(s, unix.TCP_REPAIR_OFF); err != nil {
					unix.Close(s)
					return n, fmt.Errorf("pid %d fd %d: %w", pid, fd, err)
				}
				n++
			}
		}
		unix.Close(s)
	}
	return n, nil
}
