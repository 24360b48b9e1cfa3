package proc

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Security is the credential and seccomp part of /proc/PID/task/TID/status.
type Security struct {
	Uid, Gid       [4]int // real, effective, saved, filesystem
	Groups         []uint32
	CapInh, CapPrm uint64
	CapEff, CapBnd uint64
	CapAmb         uint64
	NoNewPrivs     bool
	Seccomp        int // 0 disabled, 1 strict, 2 filter
	SeccompFilters int
	TracerPid      int
}

// ReadSecurity reads the credentials of thread tid of pid.
func ReadSecurity(pid, tid int) (*Security, error) {
	b, err := readProcFile(pid, "task", strconv.Itoa(tid), "status")
	if err != nil {
		return nil, err
	}
	s, err := ParseSecurity(b)
	if err != nil {
		return nil, fmt.Errorf("pid %d tid %d: %w", pid, tid, err)
	}
	return s, nil
}

// ParseSecurity parses the contents of a status file for Security. Uid,
// Gid and the five capability sets must be there.
func ParseSecurity(b []byte) (*Security, error) {
	s := &Security{}
	seen := 0
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		var err error
		hex := func(dst *uint64) {
			*dst, err = strconv.ParseUint(v, 16, 64)
			seen++
		}
		switch k {
		case "Uid":
			err = parseIDs(v, &s.Uid)
			seen++
		case "Gid":
			err = parseIDs(v, &s.Gid)
			seen++
		case "Groups":
			for _, g := range strings.Fields(v) {
				n, e := strconv.ParseUint(g, 10, 32)
				if e != nil {
					err = e
					break
				}
				s.Groups = append(s.Groups, uint32(n))
			}
			if len(s.Groups) > 65536 {
				err = errors.New("more than 65536 groups")
			}
		case "CapInh":
			hex(&s.CapInh)
		case "CapPrm":
			hex(&s.CapPrm)
		case "CapEff":
			hex(&s.CapEff)
		case "CapBnd":
			hex(&s.CapBnd)
		case "CapAmb":
			hex(&s.CapAmb)
		case "NoNewPrivs":
			s.NoNewPrivs = v == "1"
		case "Seccomp":
			s.Seccomp, err = strconv.Atoi(v)
		case "Seccomp_filters":
			s.SeccompFilters, err = strconv.Atoi(v)
		case "TracerPid":
			s.TracerPid, err = strconv.Atoi(v)
		}
		if err != nil {
			return nil, fmt.Errorf("malformed status: %s: %w", k, err)
		}
	}
	if seen != 7 {
		return nil, errors.New("malformed status: no Uid, Gid or capability sets")
	}
	return s, nil
}

// Timer is one POSIX timer of /proc/PID/timers.
type Timer struct {
	ID     int32
	Signo  uint32
	Sigval uint64
	Notify uint32 // SIGEV_SIGNAL 0, SIGEV_NONE 1, SIGEV_THREAD 2, | SIGEV_THREAD_ID 4
	Target int    // the pid or, with SIGEV_THREAD_ID, the tid signalled
	Clock  int32
}

// ReadTimers reads /proc/PID/timers (CONFIG_CHECKPOINT_RESTORE).
func ReadTimers(pid int) ([]Timer, error) {
	b, err := readProcFile(pid, "timers")
	if err != nil {
		return nil, err
	}
	ts, err := ParseTimers(b)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	return ts, nil
}

// ParseTimers parses the contents of a timers file: per timer the lines
//
//	ID: 0
//	signal: 34/00000000deadbeef
//	notify: signal/tid.4242
//	ClockID: 1
func ParseTimers(b []byte) ([]Timer, error) {
	var ts []Timer
	var cur *Timer
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("malformed timers line %q", line)
		}
		v = strings.TrimSpace(v)
		if k == "ID" {
			id, err := strconv.ParseInt(v, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("malformed timers: ID: %w", err)
			}
			if len(ts) >= 1<<20 {
				return nil, errors.New("malformed timers: too many")
			}
			ts = append(ts, Timer{ID: int32(id)})
			cur = &ts[len(ts)-1]
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("malformed timers: %s before ID", k)
		}
		var err error
		switch k {
		case "signal":
			sig, val, ok := strings.Cut(v, "/")
			if !ok {
				return nil, fmt.Errorf("malformed timers: signal %q", v)
			}
			var n uint64
			if n, err = strconv.ParseUint(sig, 10, 32); err == nil {
				cur.Signo = uint32(n)
				cur.Sigval, err = strconv.ParseUint(val, 16, 64)
			}
		case "notify":
			how, target, ok := strings.Cut(v, "/")
			kind, num, ok2 := strings.Cut(target, ".")
			if !ok || !ok2 {
				return nil, fmt.Errorf("malformed timers: notify %q", v)
			}
			switch how {
			case "signal":
				cur.Notify = 0
			case "none":
				cur.Notify = 1
			case "thread":
				cur.Notify = 2
			default:
				return nil, fmt.Errorf("malformed timers: notify %q", v)
			}
			switch kind {
			case "tid":
				cur.Notify |= 4
			case "pid":
			default:
				return nil, fmt.Errorf("malformed timers: notify %q", v)
			}
			cur.Target, err = strconv.Atoi(num)
		case "ClockID":
			var n int64
			n, err = strconv.ParseInt(v, 10, 32)
			cur.Clock = int32(n)
		}
		if err != nil {
			return nil, fmt.Errorf("malformed timers: %s: %w", k, err)
		}
	}
	return ts, nil
}

// ReadPersonality reads /proc/PID/personality (a hex number).
func ReadPersonality(pid int) (uint32, error) {
	n, err := readNumber(pid, "personality", 16)
	return uint32(n), err
}

// ReadOomScoreAdj reads /proc/PID/oom_score_adj.
func ReadOomScoreAdj(pid int) (int32, error) {
	n, err := readNumber(pid, "oom_score_adj", 10)
	return int32(n), err
}

// ReadCoredumpFilter reads /proc/PID/coredump_filter (hex).
func ReadCoredumpFilter(pid int) (uint32, error) {
	n, err := readNumber(pid, "coredump_filter", 16)
	return uint32(n), err
}

// readNumber reads a /proc/PID file that holds one 32-bit number.
func readNumber(pid int, name string, base int) (int64, error) {
	b, err := readProcFile(pid, name)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	n, err := strconv.ParseInt(s, base, 64)
	if err != nil || n < -1<<31 || n >= 1<<32 {
		return 0, fmt.Errorf("pid %d: malformed %s %q", pid, name, b)
	}
	return n, nil
}

// ReadTaskComm reads /proc/PID/task/TID/comm, the thread's name.
func ReadTaskComm(pid, tid int) (string, error) {
	b, err := readProcFile(pid, "task", strconv.Itoa(tid), "comm")
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

// Limit is one resource limit; RLIM_INFINITY is all ones.
type Limit struct{ Cur, Max uint64 }

// ReadLimits reads /proc/PID/limits: the limits by resource number
// (RLIMIT_CPU first), as many as the kernel lists.
func ReadLimits(pid int) ([]Limit, error) {
	b, err := readProcFile(pid, "limits")
	if err != nil {
		return nil, err
	}
	l, err := ParseLimits(b)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	return l, nil
}

// ParseLimits parses the contents of a limits file: a header, then one
// line per resource in resource order, "%-25s %-20s %-20s %-10s" with the
// name, soft limit, hard limit and unit; "unlimited" for RLIM_INFINITY.
func ParseLimits(b []byte) ([]Limit, error) {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "Limit") {
		return nil, errors.New("malformed limits: no header")
	}
	var ls []Limit
	for _, line := range lines[1:] {
		if len(line) < 27 {
			return nil, fmt.Errorf("malformed limits line %q", line)
		}
		f := strings.Fields(line[26:])
		if len(f) < 2 {
			return nil, fmt.Errorf("malformed limits line %q", line)
		}
		var l Limit
		for i, dst := range []*uint64{&l.Cur, &l.Max} {
			if f[i] == "unlimited" {
				*dst = ^uint64(0)
				continue
			}
			n, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("malformed limits line %q: %w", line, err)
			}
			*dst = n
		}
		ls = append(ls, l)
	}
	return ls, nil
}
