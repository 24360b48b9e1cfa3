package restore

import (
	"fmt"
	"strconv"
	"strings"

	"crpipe/lib/sys"
)

// taskVma is one mapping of the task being rebuilt, as /proc/PID/maps shows it.
type taskVma struct {
	start, end uint64
	name       string
}

func parseRange(line string, lo, hi *uint64) bool {
	f := strings.Fields(line)
	if len(f) == 0 {
		return false
	}
	a, b, ok := strings.Cut(f[0], "-")
	if !ok {
		return false
	}
	x, err1 := strconv.ParseUint(a, 16, 64)
	y, err2 := strconv.ParseUint(b, 16, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	*lo, *hi = x, y
	return true
}

// taskMaps reads the current mappings of a task we created.
func taskMaps(pid int) ([]taskVma, error) {
	b, err := sys.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	var out []taskVma
	for _, line := range strings.Split(string(b), "\n") {
		var v taskVma
		if !parseRange(line, &v.start, &v.end) {
			continue
		}
		if f := strings.Fields(line); len(f) >= 6 {
			v.name = strings.Join(f[5:], " ")
		}
		out = append(out, v)
	}
	return out, nil
}
