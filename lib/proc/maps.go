package proc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"crpipe/lib/sys"
)

// Mapping is one VMA as /proc/PID/maps or /proc/PID/smaps shows it. A
// dump holds one per VMA, and a process can have 65,530: it is kept small.
type Mapping struct {
	Start, End uint64
	Offset     uint64
	Inode      uint64
	Major      uint32 // device of the backing file
	Minor      uint32
	Read       bool
	Write      bool
	Exec       bool
	Shared     bool // 's' in the permissions: MAP_SHARED
	Deleted    bool
	// Path is the backing file, a pseudo path such as "[heap]", or "" for
	// anonymous memory. A " (deleted)" suffix is removed and Deleted set.
	Path    string
	VmFlags VmFlags // from smaps only
}

// Len is the size of the mapping in bytes.
func (m *Mapping) Len() uint64 { return m.End - m.Start }

// HasVmFlag reports whether smaps listed flag (e.g. "gd") for the mapping.
func (m *Mapping) HasVmFlag(flag string) bool { return m.VmFlags.Has(flag) }

// VmFlags are the two-letter flags of a VMA in smaps (proc(5)), one bit
// each in the order of vmFlagNames; flags not in it are not kept.
type VmFlags uint64

var vmFlagNames = [...]string{
	"rd", "wr", "ex", "sh", "mr", "mw", "me", "ms", "gd", "pf", "dw", "lo", "io",
	"sr", "rr", "dc", "de", "ac", "nr", "ht", "sf", "nl", "ar", "wf", "dd", "sd",
	"mm", "hg", "nh", "mg", "um", "uw", "ui", "ss", "sl", "bt", "mt", "lf", "dp",
	"gu", "mp", "pk",
}

// Has reports whether flag is set; flag must be one of vmFlagNames.
func (f VmFlags) Has(flag string) bool {
	var b VmFlags
	if len(flag) == 2 && 'a' <= flag[0] && flag[0] <= 'z' && 'a' <= flag[1] && flag[1] <= 'z' {
		b = vmFlag(flag)
	}
	if b == 0 {
		panic("proc: unknown VmFlag " + flag)
	}
	return f&b != 0
}

// vmFlag is the bit of flag, one of vmFlagNames.
func vmFlag(flag string) VmFlags { return vmFlagByCode[flag[0]-'a'][flag[1]-'a'] }

// String lists the flags as smaps does, two letters each.
func (f VmFlags) String() string {
	var names []string
	for i, n := range vmFlagNames {
		if f&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	return strings.Join(names, " ")
}

// vmFlagByCode is each flag's bit by the two letters of its name: a
// VmFlags line is parsed for every VMA, with no map lookup per flag.
var vmFlagByCode = func() (t [26][26]VmFlags) {
	for i, n := range vmFlagNames {
		t[n[0]-'a'][n[1]-'a'] = 1 << i
	}
	return t
}()

// parseVmFlags reads the flags of a VmFlags line (after "VmFlags:").
func parseVmFlags(line []byte) VmFlags {
	var f VmFlags
	for len(line) > 0 {
		line = bytes.TrimLeft(line, " \t")
		w := line
		if i := bytes.IndexAny(line, " \t"); i >= 0 {
			w, line = line[:i], line[i:]
		} else {
			line = nil
		}
		if len(w) == 2 && 'a' <= w[0] && w[0] <= 'z' && 'a' <= w[1] && w[1] <= 'z' {
			f |= vmFlagByCode[w[0]-'a'][w[1]-'a']
		}
	}
	return f
}

// ErrMapsSyntax is wrapped by parse errors of maps and smaps.
var ErrMapsSyntax = errors.New("malformed maps line")

// maxMapsLine bounds one line: a path is at most PATH_MAX (4096) bytes, and
// the kernel's escaping of newlines can grow it fourfold.
const maxMapsLine = 4*4096 + 256

// VmaFlags is what ReadVmFlags reads of one VMA.
type VmaFlags struct {
	Start         uint64 // the VMA's
	VmFlags       VmFlags
	ProtectionKey int32 // pkey_mprotect(2); 0 is the default key (int32: 24 bytes an entry, not 32)
	// MayShare: smaps counts pages of the VMA mapped more than once
	// (Shared_Clean, Shared_Dirty, Shared_Hugetlb) or swapped out (Swap,
	// whose slots fork shares too). Without it, no page of the VMA is
	// shared with another process.
	MayShare bool
}

// ReadVmFlags reads the VmFlags and ProtectionKey lines of every VMA in
// /proc/PID/smaps, in the order of the VMAs (by address), and whether
// each may share pages (VmaFlags.MayShare); it parses nothing else.
// smaps is the only place the kernel shows them (mlock, madvise, sealing,
// protection keys); it is read as a stream, since with 10,000 VMAs it is
// megabytes.
func ReadVmFlags(pid int) ([]VmaFlags, error) {
	f, err := sys.Open(fmt.Sprintf("/proc/%d/smaps", pid), unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var flags gather[VmaFlags]
	sc, done := lineScanner(f)
	defer done()
	cur := func(line []byte) (*VmaFlags, error) {
		e := flags.last()
		if e == nil {
			return nil, fmt.Errorf("pid %d: smaps: %q before any VMA: %w", pid, line, ErrMapsSyntax)
		}
		return e, nil
	}
	for sc.Scan() {
		line := sc.Bytes()
		if rest, ok := bytes.CutPrefix(line, []byte("VmFlags:")); ok {
			e, err := cur(line)
			if err != nil {
				return nil, err
			}
			e.VmFlags = parseVmFlags(rest)
			continue
		}
		if sharedLine(line) {
			e, err := cur(line)
			if err != nil {
				return nil, err
			}
			e.MayShare = true
			continue
		}
		if rest, ok := bytes.CutPrefix(line, []byte("ProtectionKey:")); ok {
			e, err := cur(line)
			if err != nil {
				return nil, err
			}
			key, ok := parseDecimal(bytes.TrimSpace(rest))
			if !ok || key > math.MaxInt32 {
				return nil, fmt.Errorf("pid %d: smaps line %q: %w", pid, line, ErrMapsSyntax)
			}
			e.ProtectionKey = int32(key)
			continue
		}
		// A VMA's first line starts with its range; field lines with a
		// name and a colon.
		sp := bytes.IndexByte(line, ' ')
		dash := bytes.IndexByte(line, '-')
		if sp <= 0 || dash <= 0 || dash > sp || line[sp-1] == ':' {
			continue
		}
		start, ok := parseHex(line[:dash])
		if !ok {
			return nil, fmt.Errorf("pid %d: smaps line %q: %w", pid, line, ErrMapsSyntax)
		}
		flags.add(VmaFlags{Start: start})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("pid %d: smaps: %w", pid, err)
	}
	return flags.slice(), nil
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

// Range is the address range [Start, End) of a mapping.
type Range struct{ Start, End uint64 }

// ReadRanges reads the address range of each mapping of pid, in order, and
// nothing else: where only the ranges count, it holds 16 bytes a mapping
// instead of ReadMaps' 72, and parses less (10,000 mappings: 4.7 against
// 6.4 ms, most of either the kernel making the text).
func ReadRanges(pid int) ([]Range, error) {
	var rs gather[Range]
	err := eachMapsLine(pid, func(line []byte) error {
		lo, rest, ok1 := bytes.Cut(line, []byte("-"))
		hi, _, ok2 := bytes.Cut(rest, []byte(" "))
		start, ok3 := parseHex(lo)
		end, ok4 := parseHex(hi)
		if !ok1 || !ok2 || !ok3 || !ok4 || end < start {
			return fmt.Errorf("%q: bad address range: %w", line, ErrMapsSyntax)
		}
		rs.add(Range{start, end})
		return nil
	})
	return rs.slice(), err
}

// ReadSharedFileMaps reads the mappings of pid that map a named file
// shared (MAP_SHARED; the file may be deleted), and nothing else. The
// shmem objects the kernel names like files are left out: shared
// anonymous memory (/dev/zero), memfds, System V segments, hugetlb.
// Only the lines with 's' in their permissions are parsed.
func ReadSharedFileMaps(pid int) ([]Mapping, error) {
	var out []Mapping
	err := eachMapsLine(pid, func(line []byte) error {
		if _, rest, _ := bytes.Cut(line, []byte(" ")); len(rest) < 4 || rest[3] != 's' {
			return nil
		}
		m, err := ParseMapsLine(line)
		if err == nil && m.Inode != 0 && strings.HasPrefix(m.Path, "/") && !m.shmemObject() {
			out = append(out, m)
		}
		return err
	})
	return out, err
}

// eachMapsLine calls f with each line of /proc/PID/maps (valid only during
// the call); the first error ends the scan.
func eachMapsLine(pid int, f func(line []byte) error) error {
	file, err := sys.Open(fmt.Sprintf("/proc/%d/maps", pid), unix.O_RDONLY)
	if err != nil {
		return err
	}
	defer file.Close()
	sc, done := lineScanner(file)
	defer done()
	for sc.Scan() {
		if err := f(sc.Bytes()); err != nil {
			return fmt.Errorf("/proc/%d/maps: %w", pid, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("/proc/%d/maps: %w", pid, err)
	}
	return nil
}

// shmemObject: a mapping of memory the kernel shows under a file name of
// its own making, not of a file.
func (m *Mapping) shmemObject() bool {
	if !m.Deleted {
		return false
	}
	return m.Path == "/dev/zero" || m.Path == "/anon_hugepage" ||
		strings.HasPrefix(m.Path, "/memfd:") || strings.HasPrefix(m.Path, "/SYSV")
}

// parseHex parses a lower-case hexadecimal number of 1 to 16 digits.
func parseHex(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 16 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		switch {
		case '0' <= c && c <= '9':
			n = n<<4 | uint64(c-'0')
		case 'a' <= c && c <= 'f':
			n = n<<4 | uint64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return n, true
}

// ReadSmaps reads /proc/PID/smaps.
func ReadSmaps(pid int) ([]Mapping, error) {
	f, err := sys.Open(fmt.Sprintf("/proc/%d/smaps", pid), unix.O_RDONLY)
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
	f, err := sys.Open(fmt.Sprintf("/proc/%d/maps", pid), unix.O_RDONLY)
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
	var ms gather[Mapping]
	// One copy of each path: a file is mapped several times.
	paths := map[string]string{}
	intern := func(b []byte) string {
		if p, ok := paths[string(b)]; ok {
			return p
		}
		p := string(b)
		paths[p] = p
		return p
	}
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
			m := ms.last()
			if m == nil {
				return nil, fmt.Errorf("line %d: %q before any mapping: %w", n, first, ErrMapsSyntax)
			}
			if string(first) == "VmFlags:" { // the counters are not needed
				m.VmFlags = parseVmFlags(line[len(first):])
			}
			continue
		}
		m, err := parseMapsLine(line, intern)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		ms.add(m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", n+1, err)
	}
	return ms.slice(), nil
}

// ParseMapsLine parses one line of /proc/PID/maps:
//
//	7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0                          [heap]
func ParseMapsLine(line []byte) (Mapping, error) {
	return parseMapsLine(line, func(b []byte) string { return string(b) })
}

// parseMapsLine is ParseMapsLine with the path made a string by str. It
// makes nothing else: 65,530 lines are parsed per process at most.
func parseMapsLine(line []byte, str func([]byte) string) (Mapping, error) {
	var m Mapping
	var f [5][]byte // range, permissions, offset, device, inode
	rest := line
	for i := range f {
		rest = bytes.TrimLeft(rest, " ")
		j := bytes.IndexByte(rest, ' ')
		if j < 0 {
			if i == len(f)-1 { // inode is last when there is no path
				f[i], rest = rest, nil
				break
			}
			return m, fmt.Errorf("%q: too few fields: %w", line, ErrMapsSyntax)
		}
		f[i], rest = rest[:j], rest[j+1:]
	}
	bad := func(what string) (Mapping, error) {
		return Mapping{}, fmt.Errorf("%q: bad %s: %w", line, what, ErrMapsSyntax)
	}
	lo, hi, ok := bytes.Cut(f[0], []byte("-"))
	if !ok {
		return bad("address range")
	}
	if m.Start, ok = parseHex(lo); !ok {
		return bad("start address")
	}
	if m.End, ok = parseHex(hi); !ok || m.End < m.Start {
		return bad("end address")
	}
	p := f[1]
	if len(p) != 4 || p[0] != 'r' && p[0] != '-' || p[1] != 'w' && p[1] != '-' || p[2] != 'x' && p[2] != '-' || p[3] != 's' && p[3] != 'p' {
		return bad("permissions")
	}
	m.Read, m.Write, m.Exec, m.Shared = p[0] == 'r', p[1] == 'w', p[2] == 'x', p[3] == 's'
	if m.Offset, ok = parseHex(f[2]); !ok {
		return bad("offset")
	}
	maj, min, ok := bytes.Cut(f[3], []byte(":"))
	ma, ok1 := parseHex(maj)
	mi, ok2 := parseHex(min)
	if !ok || !ok1 || !ok2 || ma > math.MaxUint32 || mi > math.MaxUint32 {
		return bad("device")
	}
	m.Major, m.Minor = uint32(ma), uint32(mi)
	if m.Inode, ok = parseDecimal(f[4]); !ok {
		return bad("inode")
	}
	path := bytes.TrimLeft(rest, " ")
	if p, ok := bytes.CutSuffix(path, []byte(" (deleted)")); ok {
		path, m.Deleted = p, true
	}
	// The kernel escapes newlines in paths as \012.
	if bytes.Contains(path, []byte(`\012`)) {
		path = bytes.ReplaceAll(path, []byte(`\012`), []byte("\n"))
	}
	if len(path) > 0 {
		m.Path = str(path)
	}
	return m, nil
}

// parseDecimal parses an unsigned decimal number that fits 64 bits.
func parseDecimal(b []byte) (uint64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' || n > (math.MaxUint64-uint64(c-'0'))/10 {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}
