package proc

import (
	"bufio"
	"bytes"
	"os"
	"strconv"

	"crpipe/lib/sys"
)

// PtyIndex returns the pty index of a controlling terminal's device number
// (Stat.TtyNr), or -1 when it is no pty slave (Unix98 slaves are major
// 136, the minor is the index).
func PtyIndex(ttyNr int) int {
	major, minor := (ttyNr>>8)&0xfff, (ttyNr&0xff)|((ttyNr>>12)&0xfff00)
	if ttyNr == 0 || major != 136 {
		return -1
	}
	return minor
}

// PtyMasters returns the indexes of the pty masters (/dev/ptmx) pid holds
// open, from the "tty-index" of their fdinfo.
func PtyMasters(pid int) ([]int, error) {
	dir := Path(pid, "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		link, err := os.Readlink(dir + "/" + e.Name())
		if err != nil || (link != "/dev/ptmx" && link != "/dev/pts/ptmx") {
			continue
		}
		info, err := sys.ReadFile(Path(pid, "fdinfo", e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		sc := bufio.NewScanner(bytes.NewReader(info))
		for sc.Scan() {
			if v, ok := bytes.CutPrefix(sc.Bytes(), []byte("tty-index:")); ok {
				if n, err := strconv.Atoi(string(bytes.TrimSpace(v))); err == nil {
					out = append(out, n)
				}
			}
		}
	}
	return out, nil
}
