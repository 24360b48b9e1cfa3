package files

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// fdinfo is what /proc/PID/fdinfo/FD says about every kind of fd.
type fdinfo struct {
	pos   int64
	flags uint32 // octal in the file; includes O_CLOEXEC for a close-on-exec fd
	mntID int
	ino   uint64
}

var errFdinfoSyntax = errors.New("malformed fdinfo")

// parseFdinfo reads the common lines of an fdinfo file; kind-specific lines
// (eventfd-count, tfd, inotify ...) are left for the kinds that need them.
func parseFdinfo(b []byte) (fdinfo, error) {
	var fi fdinfo
	var have int
	for _, line := range bytes.Split(b, []byte{'\n'}) {
		k, v, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		var err error
		switch string(k) {
		case "pos":
			fi.pos, err = strconv.ParseInt(string(v), 10, 64)
			have |= 1
		case "flags":
			var f uint64
			f, err = strconv.ParseUint(string(v), 8, 32)
			fi.flags = uint32(f)
			have |= 2
		case "mnt_id":
			fi.mntID, err = strconv.Atoi(string(v))
		case "ino":
			fi.ino, err = strconv.ParseUint(string(v), 10, 64)
		}
		if err != nil {
			return fi, fmt.Errorf("%s: %q: %w", k, v, errFdinfoSyntax)
		}
	}
	if have != 3 {
		return fi, fmt.Errorf("no pos or flags line: %w", errFdinfoSyntax)
	}
	return fi, nil
}

// parseUmask finds the Umask line of /proc/PID/status (Linux 4.7).
func parseUmask(status []byte) (uint32, error) {
	for _, line := range bytes.Split(status, []byte{'\n'}) {
		if v, ok := bytes.CutPrefix(line, []byte("Umask:")); ok {
			u, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 8, 32)
			if err != nil || u > 0o777 {
				return 0, fmt.Errorf("status: Umask %q is not a mode", bytes.TrimSpace(v))
			}
			return uint32(u), nil
		}
	}
	return 0, errors.New("status has no Umask line (needs Linux 4.7)")
}
