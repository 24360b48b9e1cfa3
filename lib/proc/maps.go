package proc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
)

// Mapping is one VMA as /proc/PID/maps or /proc/PID/smaps shows it.
type Mapping struct {
	Start, End uint64
	Read       bool
	Write      bool
	Exec       bool
	Shared     bool // 's' in the permissions: MAP_SHARED
	Offset     uint64
	Major      uint32 // device of the backing file
	Minor      uint32
	Inode      uint64
	// Path is the backing file, a pseudo path such as "[heap]", or "" for
	// anonymous memory. A " (deleted)" suffix is removed and Deleted set.
	Path    string
	Deleted bool

	// Filled from smaps only.
	Rss           uint64 // bytes
	Anonymous     uint64
	AnonHugePages uint64
	Swap          uint64
	VmFlags       []string // two-letter flags, e.g. "gd" (grows down), "hg" (MADV_HUGEPAGE)
}

// Len is the size of the mapping in bytes.
func (m *Mapping) Len() uint64 { return m.End - m.Start }

// HasVmFlag reports whether smaps listed flag (e.g. "gd") for the mapping.
func (m *Mapping) HasVmFlag(flag string) bool {
	for _, f := range m.VmFlags {
		if f == flag {
			return true
		}
	}
	return false
}

// ErrMapsSyntax is wrapped by parse errors of maps and smaps.
var ErrMapsSyntax = errors.New("malformed maps line")

// maxMapsLine bounds one line: a path is at most PATH_MAX (4096) bytes, and
// the kernel's escaping of newlines can grow it fourfold.
const maxMapsLine = 4*4096 + 256

// VmaFlags is what ReadVmFlags reads of one VMA.
type VmaFlags struct {
	VmFlags       []string // two-letter flags, as in Mapping
	ProtectionKey int      // pkey_mprotect(2); 0 is the default key
	// MayShare: smaps counts pages of the VMA mapped more than once
	// (Shared_Clean, Shared_Dirty, Shared_Hugetlb) or swapped out (Swap,
	// whose slots fork shares too). Without it, no page of the VMA is
	// shared with another process.
	MayShare bool
}

// ReadVmFlags reads the VmFlags and ProtectionKey lines of every VMA in
// /proc/PID/smaps, keyed by the VMA's start, and whether it may share
// pages (VmaFlags.MayShare); it parses nothing else.
// smaps is the only place the kernel shows them (mlock, madvise, sealing,
// protection keys); it is read as a stream, since with 10,000 VMAs it is
// megabytes.
func ReadVmFlags(pid int) (map[uint64]VmaFlags, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	flags := map[uint64]VmaFlags{}
	seen := vmFlagLines{}
	sc, done := lineScanner(f)
	defer done()
	var start uint64
	var inVma bool
	for sc.Scan() {
		line := sc.Bytes()
		if rest, ok := bytes.CutPrefix(line, []byte("VmFlags:")); ok {
			if !inVma {
				return nil, fmt.Errorf("pid %d: smaps: VmFlags before any VMA: %w", pid, ErrMapsSyntax)
			}
			e := flags[start]
			e.VmFlags = seen.fields(rest)
			flags[start] = e
			continue
		}
		if sharedLine(line) {
			if !inVma {
				return nil, fmt.Errorf("pid %d: smaps: %q before any VMA: %w", pid, line, ErrMapsSyntax)
			}
			e := flags[start]
			e.MayShare = true
			flags[start] = e
			continue
		}
		if rest, ok := bytes.CutPrefix(line, []byte("ProtectionKey:")); ok {
			k, err := strconv.Atoi(string(bytes.TrimSpace(rest)))
			if !inVma || err != nil {
				return nil, fmt.Errorf("pid %d: smaps line %q: %w", pid, line, ErrMapsSyntax)
			}
			e := flags[start]
			e.ProtectionKey = k
			flags[start] = e
			continue
		}
		// A VMA's first line starts with its range; field lines with a
		// name and a colon.
		sp := bytes.IndexByte(line, ' ')
		dash := bytes.IndexByte(line, '-')
		if sp <= 0 || dash <= 0 || dash > sp || line[sp-1] == ':' {
			continue
		}
		if start, err = strconv.ParseUint(string(line[:dash]), 16, 64); err != nil {
			return nil, fmt.Errorf("pid %d: smaps line %q: %w", pid, line, ErrMapsSyntax)
		}
		inVma = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("pid %d: smaps: %w", pid, err)
	}
	return flags, nil
}

// sharedLine: a line of smaps that counts, above 0 kB, pages that may be
// shared with another process.
func sharedLine(line []byte) bool {
	for _, p := range sharedFields {
		if rest, ok := bytes.CutPrefix(line, p); ok {
			return !bytes.Equal(bytes.TrimSpace(rest), zeroKB)
		}
	}
	return false
}

var (
	sharedFields = [][]byte{[]byte("Shared_Clean:"), []byte("Shared_Dirty:"), []byte("Shared_Hugetlb:"), []byte("Swap:")}
	zeroKB       = []byte("0 kB")
)

// lineBufs keeps the 64 KiB buffers of the maps and smaps scanners from
// one file to the next: a dump reads both for every process, and a fresh
// buffer each time was a third of what cr-pages allocated.
var lineBufs = sync.Pool{New: func() any { return new([64 << 10]byte) }}

// lineScanner scans r by lines with a buffer from lineBufs, given back by
// done (after which nothing the scanner returned may be used).
func lineScanner(r io.Reader) (sc *bufio.Scanner, done func()) {
	buf := lineBufs.Get().(*[64 << 10]byte)
	sc = bufio.NewScanner(r)
	sc.Buffer(buf[:0], maxMapsLine)
	return sc, func() { lineBufs.Put(buf) }
}

// vmFlagLines keeps one []string per distinct VmFlags line: a process's
// VMAs have a handful of different ones, and 10,000 VMAs with a slice each
// were 3 MB of cr-pages' heap. The slices are shared: read-only.
type vmFlagLines map[string][]string

func (seen vmFlagLines) fields(line []byte) []string {
	if f, ok := seen[string(line)]; ok {
		return f
	}
	f := strings.Fields(string(line))
	seen[string(line)] = f
	return f
}

// ReadSmaps reads /proc/PID/smaps.
func ReadSmaps(pid int) ([]Mapping, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ms, err := ParseSmaps(f)
	if err != nil {
		return nil, fmt.Errorf("/proc/%d/smaps: %w", pid, err)
	}
	return ms, nil
}

// ReadMaps reads /proc/PID/maps.
func ReadMaps(pid int) ([]Mapping, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ms, err := ParseSmaps(f)
	if err != nil {
		return nil, fmt.Errorf("/proc/%d/maps: %w", pid, err)
	}
	return ms, nil
}

// ParseSmaps parses the text of /proc/PID/smaps, or of /proc/PID/maps (which
// is smaps without the per-mapping "Key: value" lines).
func ParseSmaps(r io.Reader) ([]Mapping, error) {
	sc, done := lineScanner(r)
	defer done()
	var ms []Mapping
	n := 0
	for sc.Scan() {
		n++
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		sp := bytes.IndexByte(line, ' ')
		first := line
		if sp >= 0 {
			first = line[:sp]
		}
		if len(first) > 0 && first[len(first)-1] == ':' {
			if len(ms) == 0 {
				return nil, fmt.Errorf("line %d: %q before any mapping: %w", n, first, ErrMapsSyntax)
			}
			if err := parseSmapsField(&ms[len(ms)-1], string(first[:len(first)-1]), line[len(first):]); err != nil {
				return nil, fmt.Errorf("line %d: %v: %w", n, err, ErrMapsSyntax)
			}
			continue
		}
		m, err := ParseMapsLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		ms = append(ms, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", n+1, err)
	}
	return ms, nil
}

func parseSmapsField(m *Mapping, key string, rest []byte) error {
	var dst *uint64
	switch key {
	case "VmFlags":
		m.VmFlags = strings.Fields(string(rest))
		return nil
	case "Rss":
		dst = &m.Rss
	case "Anonymous":
		dst = &m.Anonymous
	case "AnonHugePages":
		dst = &m.AnonHugePages
	case "Swap":
		dst = &m.Swap
	default:
		return nil // other counters are not needed (yet)
	}
	f := strings.Fields(string(rest))
	if len(f) != 2 || f[1] != "kB" {
		return fmt.Errorf("%s: %q is not a size in kB", key, rest)
	}
	v, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil || v > 1<<53 {
		return fmt.Errorf("%s: %q is not a size in kB", key, rest)
	}
	*dst = v << 10
	return nil
}

// ParseMapsLine parses one line of /proc/PID/maps:
//
//	7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0                          [heap]
func ParseMapsLine(line []byte) (Mapping, error) {
	var m Mapping
	s := string(line)
	fields := make([]string, 0, 5)
	for i := 0; i < 5; i++ {
		s = strings.TrimLeft(s, " ")
		j := strings.IndexByte(s, ' ')
		if j < 0 {
			if i == 4 { // inode is last when there is no path
				fields = append(fields, s)
				s = ""
				break
			}
			return m, fmt.Errorf("%q: too few fields: %w", line, ErrMapsSyntax)
		}
		fields = append(fields, s[:j])
		s = s[j+1:]
	}
	bad := func(what string) (Mapping, error) {
		return Mapping{}, fmt.Errorf("%q: bad %s: %w", line, what, ErrMapsSyntax)
	}
	lo, hi, ok := strings.Cut(fields[0], "-")
	if !ok {
		return bad("address range")
	}
	var err error
	if m.Start, err = strconv.ParseUint(lo, 16, 64); err != nil {
		return bad("start address")
	}
	if m.End, err = strconv.ParseUint(hi, 16, 64); err != nil || m.End < m.Start {
		return bad("end address")
	}
	p := fields[1]
	if len(p) != 4 || !strings.Contains("r-", p[0:1]) || !strings.Contains("w-", p[1:2]) || !strings.Contains("x-", p[2:3]) || !strings.Contains("sp", p[3:4]) {
		return bad("permissions")
	}
	m.Read, m.Write, m.Exec, m.Shared = p[0] == 'r', p[1] == 'w', p[2] == 'x', p[3] == 's'
	if m.Offset, err = strconv.ParseUint(fields[2], 16, 64); err != nil {
		return bad("offset")
	}
	maj, min, ok := strings.Cut(fields[3], ":")
	if !ok {
		return bad("device")
	}
	ma, err1 := strconv.ParseUint(maj, 16, 32)
	mi, err2 := strconv.ParseUint(min, 16, 32)
	if err1 != nil || err2 != nil {
		return bad("device")
	}
	m.Major, m.Minor = uint32(ma), uint32(mi)
	if m.Inode, err = strconv.ParseUint(fields[4], 10, 64); err != nil {
		return bad("inode")
	}
	path := strings.TrimLeft(s, " ")
	if p, ok := strings.CutSuffix(path, " (deleted)"); ok {
		path, m.Deleted = p, true
	}
	// The kernel escapes newlines in paths as \012.
	m.Path = strings.ReplaceAll(path, `\012`, "\n")
	return m, nil
}
