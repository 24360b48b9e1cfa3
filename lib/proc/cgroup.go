package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrNoCgroup2 is returned when no cgroup2 filesystem is mounted.
var ErrNoCgroup2 = errors.New("no cgroup2 filesystem is mounted")

// Cgroup2Mount finds the cgroup2 mount point in /proc/self/mountinfo (it is
// /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid ones).
func Cgroup2Mount() (string, error) {
	b, err := os.ReadFile(filepath.Join(Root, "self/mountinfo"))
	if err != nil {
		return "", err
	}
	return ParseCgroup2Mount(b)
}

// ParseCgroup2Mount returns the first cgroup2 mount point whose root is "/"
// in a mountinfo file.
// The lines are cut from b where they are, not copied through a
// bufio.Scanner's buffer.
func ParseCgroup2Mount(b []byte) (string, error) {
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		pre, post, ok := bytes.Cut(line, []byte(" - "))
		if !ok {
			continue
		}
		pf, qf := bytes.Fields(pre), bytes.Fields(post)
		if len(pf) < 5 || len(qf) < 1 || string(qf[0]) != "cgroup2" || string(pf[3]) != "/" {
			continue
		}
		return unescapeMountinfo(string(pf[4])), nil
	}
	return "", ErrNoCgroup2
}

// unescapeMountinfo undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// Cgroup2Of returns the cgroup v2 path of pid relative to the cgroup2 root
// ("/" or "/a/b"), from the "0::" line of /proc/PID/cgroup.
func Cgroup2Of(pid int) (string, error) {
	b, err := readProcFile(pid, "cgroup")
	if err != nil {
		return "", err
	}
	p, err := ParseCgroup2Line(b)
	if err != nil {
		return "", fmt.Errorf("pid %d: %w", pid, err)
	}
	return p, nil
}

// ParseCgroup2Line finds the cgroup v2 ("0::") entry of a /proc/PID/cgroup file.
func ParseCgroup2Line(b []byte) (string, error) {
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			// A cgroup removed under the task reads "/path (deleted)".
			p = strings.TrimSuffix(p, " (deleted)")
			if !strings.HasPrefix(p, "/") {
				return "", fmt.Errorf("malformed cgroup v2 path %q", p)
			}
			return p, nil
		}
	}
	return "", errors.New("no cgroup v2 entry in /proc/PID/cgroup")
}
