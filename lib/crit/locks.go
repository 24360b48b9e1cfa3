package crit

import (
	"fmt"
	"io"
	"strings"

	"crpipe/lib/pb"
)

// showLocks prints the file locks a process takes again on restore
// (lib/pb/locks.proto).
func showLocks(w io.Writer, f *pb.Files) {
	if len(f.Locks) == 0 {
		return
	}
	fmt.Fprintf(w, "  locks:\n")
	for _, l := range f.Locks {
		kind := strings.ToLower(strings.TrimPrefix(pb.FileLockKind(l.Kind).String(), "LOCK_"))
		mode := "read"
		if l.Write {
			mode = "write"
		}
		line := fmt.Sprintf("    %s %s", kind, mode)
		if pb.FileLockKind(l.Kind) != pb.FileLockKind_LOCK_FLOCK {
			end := "EOF"
			if l.Length != 0 {
				end = fmt.Sprint(l.Start + l.Length - 1)
			}
			line += fmt.Sprintf(" bytes %d-%s", l.Start, end)
		}
		switch {
		case l.VmaStart != 0:
			line += fmt.Sprintf(" through the shared mapping at %#x", l.VmaStart)
		case pb.FileLockKind(l.Kind) != pb.FileLockKind_LOCK_POSIX:
			line += fmt.Sprintf(" on fd %d, held by desc %d", l.Fd, l.DescId)
		default:
			line += fmt.Sprintf(" on fd %d", l.Fd)
		}
		fmt.Fprintln(w, line)
	}
}
