package proc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"crpipe/lib/sys"
)

// MmStat holds the address-space fields of /proc/PID/stat (see proc_pid_stat(5)).
// They read as 0 without PTRACE_MODE_READ access to the process.
type MmStat struct {
	StartTime  uint64 // field 22, clock ticks since boot: identity
	StartCode  uint64 // 26
	EndCode    uint64 // 27
	StartStack uint64 // 28
	StartData  uint64 // 45
	EndData    uint64 // 46
	StartBrk   uint64 // 47
	ArgStart   uint64 // 48
	ArgEnd     uint64 // 49
	EnvStart   uint64 // 50
	EnvEnd     uint64 // 51
}

// ErrStatSyntax is wrapped by ParseMmStat errors.
var ErrStatSyntax = errors.New("malformed stat line")

// ReadMmStat reads the address-space fields of /proc/PID/stat.
func ReadMmStat(pid int) (MmStat, error) {
	b, err := sys.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return MmStat{}, err
	}
	st, err := ParseMmStat(b)
	if err != nil {
		return st, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return st, nil
}

// ParseMmStat parses the address-space fields out of a /proc/PID/stat line.
func ParseMmStat(b []byte) (MmStat, error) {
	var st MmStat
	// comm (field 2) may contain spaces and parentheses: fields resume after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return st, fmt.Errorf("no ')' after comm: %w", ErrStatSyntax)
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state).
	const first = 3
	if len(f) < 51-first+1 {
		return st, fmt.Errorf("%d fields, want at least 51: %w", len(f)+first-1, ErrStatSyntax)
	}
	for _, x := range []struct {
		n   int
		dst *uint64
	}{
		{22, &st.StartTime}, {26, &st.StartCode}, {27, &st.EndCode}, {28, &st.StartStack},
		{45, &st.StartData}, {46, &st.EndData}, {47, &st.StartBrk}, {48, &st.ArgStart},
		{49, &st.ArgEnd}, {50, &st.EnvStart}, {51, &st.EnvEnd},
	} {
		v, err := strconv.ParseUint(string(f[x.n-first]), 10, 64)
		if err != nil {
			return st, fmt.Errorf("field %d %q: %w", x.n, f[x.n-first], ErrStatSyntax)
		}
		*x.dst = v
	}
	return st, nil
}

// maxAuxv bounds /proc/PID/auxv: the kernel keeps at most AT_VECTOR_SIZE
// (2*(2+20+AT_VECTOR_SIZE_ARCH+1)) words, well under 1 KiB on x86_64.
const maxAuxv = 4096

// ReadAuxv returns the raw auxiliary vector of pid (pairs of native words,
// ending with AT_NULL).
func ReadAuxv(pid int) ([]byte, error) {
	b, err := sys.ReadFile(fmt.Sprintf("/proc/%d/auxv", pid))
	if err != nil {
		return nil, err
	}
	if len(b) > maxAuxv {
		return nil, fmt.Errorf("/proc/%d/auxv: longer than %d bytes", pid, maxAuxv)
	}
	return b, nil
}

// AtSysinfoEhdr is the auxv entry that holds the vDSO's address.
const AtSysinfoEhdr = 33

// AuxvValue returns the value of entry key in a raw auxiliary vector
// (ReadAuxv), 0 when it has none.
func AuxvValue(auxv []byte, key uint64) uint64 {
	le := binary.LittleEndian
	for i := 0; i+16 <= len(auxv); i += 16 {
		if le.Uint64(auxv[i:]) == key {
			return le.Uint64(auxv[i+8:])
		}
	}
	return 0
}
