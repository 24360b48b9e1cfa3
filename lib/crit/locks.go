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
		line += fmt.Sprintf(" on fd %d", l.Fd)
		if pb.FileLockKind(l.Kind) != pb.FileLockKind_LOCK_POSIX {
			line += fmt.Sprintf(", held by desc %d", l.DescId)
		}
		fmt.Fprintln(w, line)
	}
}
