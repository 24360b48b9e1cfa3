// Package proc parses the /proc files crpipe reads: stat, status, the task
// list and children of a process, and cgroup membership. Parsers take bytes
// so tests and fuzzers reach them without a live process.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"crpipe/lib/sys"
)

// Root is where procfs is mounted; tests may point it elsewhere.
var Root = "/proc"

// Path joins Root, the pid and elements.
func Path(pid int, elem ...string) string {
	return filepath.Join(append([]string{Root, strconv.Itoa(pid)}, elem...)...)
}

// Stat is the part of /proc/PID/stat (or /proc/PID/task/TID/stat) crpipe uses.
type Stat struct {
	Pid        int
	Comm       string
	State      byte
	Ppid       int
	Pgid       int
	Sid        int
	TtyNr      int // field 7: the controlling terminal's device (0: none)
	Tpgid      int // field 8: the foreground process group of that terminal (-1: none)
	Flags      uint64
	NumThreads int
	StartTime  uint64 // field 22, clock ticks since boot: with the pid, an identity
	ExitCode   int    // field 52: a zombie's wait status
}

// ErrNoProcess is wrapped when a pid does not exist (or is already gone).
var ErrNoProcess = errors.New("no such process")

// ReadStat reads /proc/PID/stat.
func ReadStat(pid int) (*Stat, error) {
	b, err := readProcFile(pid, "stat")
	if err != nil {
		return nil, err
	}
	s, err := ParseStat(b)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	return s, nil
}

// ReadTaskStat reads /proc/PID/task/TID/stat.
func ReadTaskStat(pid, tid int) (*Stat, error) {
	b, err := readProcFile(pid, "task", strconv.Itoa(tid), "stat")
	if err != nil {
		return nil, err
	}
	s, err := ParseStat(b)
	if err != nil {
		return nil, fmt.Errorf("pid %d tid %d: %w", pid, tid, err)
	}
	return s, nil
}

func readProcFile(pid int, elem ...string) ([]byte, error) {
	b, err := sys.ReadFile(Path(pid, elem...))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
		}
		return nil, err
	}
	return b, nil
}

// ParseStat parses the contents of a stat file. The command name may hold
// spaces and parentheses, so it runs to the last ')'.
func ParseStat(b []byte) (*Stat, error) {
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 1 || closing < open {
		return nil, errors.New("malformed stat: no (comm)")
	}
	s := &Stat{Comm: string(b[open+1 : closing])}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:open])))
	if err != nil {
		return nil, fmt.Errorf("malformed stat: pid: %w", err)
	}
	s.Pid = pid
	// Fields after comm, numbered from 3 (state) as in proc(5).
	f := strings.Fields(string(b[closing+1:]))
	if len(f) < 20 {
		return nil, fmt.Errorf("malformed stat: %d fields after comm, want at least 20", len(f))
	}
	field := func(n int) string { return f[n-3] }
	if len(field(3)) != 1 {
		return nil, fmt.Errorf("malformed stat: state %q", field(3))
	}
	s.State = field(3)[0]
	ints := []struct {
		n   int
		dst *int
	}{{4, &s.Ppid}, {5, &s.Pgid}, {6, &s.Sid}, {7, &s.TtyNr}, {8, &s.Tpgid}, {20, &s.NumThreads}}
	for _, x := range ints {
		v, err := strconv.Atoi(field(x.n))
		if err != nil {
			return nil, fmt.Errorf("malformed stat: field %d: %w", x.n, err)
		}
		*x.dst = v
	}
	if s.Flags, err = strconv.ParseUint(field(9), 10, 64); err != nil {
		return nil, fmt.Errorf("malformed stat: field 9: %w", err)
	}
	if s.StartTime, err = strconv.ParseUint(field(22), 10, 64); err != nil {
		return nil, fmt.Errorf("malformed stat: field 22: %w", err)
	}
	if len(f) >= 52-2 {
		if s.ExitCode, err = strconv.Atoi(field(52)); err != nil {
			return nil, fmt.Errorf("malformed stat: field 52: %w", err)
		}
	}
	return s, nil
}

// Status is the part of /proc/PID/status crpipe uses.
type Status struct {
	Name      string
	State     byte
	Tgid      int
	Pid       int
	PPid      int
	TracerPid int
	Uid       [4]int // real, effective, saved, filesystem
	Gid       [4]int
	Threads   int
	NSpid     []int
	SigPnd    uint64 // thread-private pending signals
	ShdPnd    uint64 // process-shared pending signals
	SigBlk    uint64
	SigIgn    uint64
	SigCgt    uint64
	VmLck     uint64 // kB of memory the process has locked (mm-wide)
	RssAnon   uint64 // kB of resident anonymous memory (mm-wide)
}

// ReadStatus reads /proc/PID/status.
func ReadStatus(pid int) (*Status, error) {
	b, err := readProcFile(pid, "status")
	if err != nil {
		return nil, err
	}
	s, err := ParseStatus(b)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	return s, nil
}

// ParseStatus parses the contents of a status file. Unknown keys are ignored.
func ParseStatus(b []byte) (*Status, error) {
	s := &Status{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		var err error
		switch k {
		case "Name":
			s.Name = v
		case "State":
			if v == "" {
				return nil, errors.New("malformed status: empty State")
			}
			s.State = v[0]
		case "Tgid":
			s.Tgid, err = strconv.Atoi(v)
		case "Pid":
			s.Pid, err = strconv.Atoi(v)
		case "PPid":
			s.PPid, err = strconv.Atoi(v)
		case "TracerPid":
			s.TracerPid, err = strconv.Atoi(v)
		case "Threads":
			s.Threads, err = strconv.Atoi(v)
		case "Uid":
			err = parseIDs(v, &s.Uid)
		case "Gid":
			err = parseIDs(v, &s.Gid)
		case "NSpid":
			for _, x := range strings.Fields(v) {
				n, e := strconv.Atoi(x)
				if e != nil {
					err = e
					break
				}
				s.NSpid = append(s.NSpid, n)
			}
		case "SigPnd":
			s.SigPnd, err = strconv.ParseUint(v, 16, 64)
		case "ShdPnd":
			s.ShdPnd, err = strconv.ParseUint(v, 16, 64)
		case "SigBlk":
			s.SigBlk, err = strconv.ParseUint(v, 16, 64)
		case "SigIgn":
			s.SigIgn, err = strconv.ParseUint(v, 16, 64)
		case "SigCgt":
			s.SigCgt, err = strconv.ParseUint(v, 16, 64)
		case "VmLck":
			s.VmLck, err = strconv.ParseUint(strings.TrimSuffix(v, " kB"), 10, 64)
		case "RssAnon":
			s.RssAnon, err = strconv.ParseUint(strings.TrimSuffix(v, " kB"), 10, 64)
		}
		if err != nil {
			return nil, fmt.Errorf("malformed status: %s: %w", k, err)
		}
	}
	if s.Pid == 0 {
		return nil, errors.New("malformed status: no Pid")
	}
	return s, nil
}

func parseIDs(v string, dst *[4]int) error {
	f := strings.Fields(v)
	if len(f) != 4 {
		return fmt.Errorf("want 4 ids, got %d", len(f))
	}
	for i := range f {
		n, err := strconv.Atoi(f[i])
		if err != nil {
			return err
		}
		dst[i] = n
	}
	return nil
}

// Threads lists the tids of pid, the thread group leader first, the rest
// in ascending order.
func Threads(pid int) ([]int, error) {
	ents, err := os.ReadDir(Path(pid, "task"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
		}
		return nil, err
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return leaderFirst(pid, tids), nil
}

func leaderFirst(pid int, tids []int) []int {
	sort.Slice(tids, func(i, j int) bool {
		if (tids[i] == pid) != (tids[j] == pid) {
			return tids[i] == pid
		}
		return tids[i] < tids[j]
	})
	return tids
}

// Children lists the child processes of pid (of all its threads), in
// ascending order. It reads /proc/PID/task/TID/children
// (CONFIG_PROC_CHILDREN) and falls back to scanning every process's ppid.
func Children(pid int) ([]int, error) {
	tids, err := Threads(pid)
	if err != nil {
		return nil, err
	}
	var kids []int
	for _, tid := range tids {
		b, err := sys.ReadFile(Path(pid, "task", strconv.Itoa(tid), "children"))
		if errors.Is(err, os.ErrNotExist) {
			if _, serr := os.Stat(Path(pid, "task", strconv.Itoa(tid))); serr == nil {
				return childrenByScan(pid)
			}
			continue // the thread exited meanwhile
		}
		if err != nil {
			return nil, err
		}
		for _, x := range strings.Fields(string(b)) {
			n, err := strconv.Atoi(x)
			if err != nil {
				return nil, fmt.Errorf("pid %d: malformed children list: %w", pid, err)
			}
			kids = append(kids, n)
		}
	}
	sort.Ints(kids)
	return kids, nil
}

func childrenByScan(pid int) ([]int, error) {
	ents, err := os.ReadDir(Root)
	if err != nil {
		return nil, err
	}
	var kids []int
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := ReadStat(n); err == nil && st.Ppid == pid {
			kids = append(kids, n)
		}
	}
	sort.Ints(kids)
	return kids, nil
}

// BootID returns /proc/sys/kernel/random/boot_id: a pid means nothing on another boot.
func BootID() (string, error) {
	b, err := os.ReadFile(filepath.Join(Root, "sys/kernel/random/boot_id"))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// PathRoot is the directory from which the paths /proc shows of pid's files
// (its maps, its fd links) start, for the caller: /proc prints a path as
// its reader sees it (d_path from the reader's root). In the caller's own
// mount namespace that is the caller's root, whatever pid's chroot
// (postfix's chrooted daemons hold files opened outside it); in another
// one (a container's), it is that namespace's root, which /proc/PID/root
// reaches. A restore opens the paths from its own root, in the namespace
// it runs in.
func PathRoot(pid int) string {
	theirs, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	ours, err2 := os.Readlink("/proc/self/ns/mnt")
	if err1 == nil && err2 == nil && theirs == ours {
		return "/"
	}
	return fmt.Sprintf("/proc/%d/root", pid)
}
