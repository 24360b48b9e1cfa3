package crit

import (
	"fmt"
	"strings"

	"crpipe/lib/pb"
)

// Linux x86_64 constants, spelled out here because crit runs anywhere and
// lib/image knows no kernel.

const (
	protRead  = 0x1
	protWrite = 0x2
	protExec  = 0x4
	mapShared = 0x01
)

// prot is /proc/PID/maps style: "r-xp".
func prot(p, flags uint32) string {
	b := []byte("---p")
	if p&protRead != 0 {
		b[0] = 'r'
	}
	if p&protWrite != 0 {
		b[1] = 'w'
	}
	if p&protExec != 0 {
		b[2] = 'x'
	}
	if flags&mapShared != 0 {
		b[3] = 's'
	}
	return string(b)
}

// enumName turns VMA_FILE_PRIVATE into "file-private".
func enumName(full, prefix string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(full, prefix)), "_", "-")
}

func vmaKind(k uint32) string {
	if n, ok := pb.VmaKind_name[int32(k)]; ok && k <= 1<<31-1 {
		return enumName(n, "VMA_")
	}
	return fmt.Sprintf("kind-%d", k)
}

func fdKind(k uint32) string {
	if n, ok := pb.FdKind_name[int32(k)]; ok && k <= 1<<31-1 {
		return enumName(n, "FD_")
	}
	return fmt.Sprintf("kind-%d", k)
}

type bitName struct {
	bit  uint64
	name string
}

func bits(v uint64, names []bitName) []string {
	var out []string
	for _, n := range names {
		if v&n.bit == n.bit && n.bit != 0 {
			out = append(out, n.name)
			v &^= n.bit
		}
	}
	if v != 0 {
		out = append(out, fmt.Sprintf("%#x", v))
	}
	return out
}

var openFlags = []bitName{
	{0o100, "creat"}, {0o200, "excl"}, {0o400, "noctty"}, {0o1000, "trunc"},
	{0o2000, "append"}, {0o4000, "nonblock"}, {0o10000, "dsync"}, {0o20000, "async"},
	{0o40000, "direct"}, {0o100000, "largefile"}, {0o200000, "directory"},
	{0o400000, "nofollow"}, {0o1000000, "noatime"}, {0o2000000, "cloexec"},
	{0o4000000, "sync"}, {0o10000000, "path"}, {0o20000000, "tmpfile"},
}

// openFlagString is "wronly|append".
func openFlagString(f uint32) string {
	acc := []string{"rdonly", "wronly", "rdwr", "accmode-3"}[f&3]
	return strings.Join(append([]string{acc}, bits(uint64(f&^3), openFlags)...), "|")
}

var saFlags = []bitName{
	{0x1, "SA_NOCLDSTOP"}, {0x2, "SA_NOCLDWAIT"}, {0x4, "SA_SIGINFO"},
	{0x04000000, "SA_RESTORER"}, {0x08000000, "SA_ONSTACK"}, {0x10000000, "SA_RESTART"},
	{0x40000000, "SA_NODEFER"}, {0x80000000, "SA_RESETHAND"},
}

func saFlagString(f uint64) string {
	if f == 0 {
		return "0"
	}
	return strings.Join(bits(f, saFlags), "|")
}

var signalNames = [...]string{1: "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE",
	"SIGKILL", "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT", "SIGCHLD",
	"SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU", "SIGXFSZ", "SIGVTALRM",
	"SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR", "SIGSYS"}

func signalName(n uint32) string {
	if n > 0 && int(n) < len(signalNames) {
		return signalNames[n]
	}
	return fmt.Sprintf("SIG%d", n)
}

// sigset is a mask as signal names: bit n-1 is signal n.
func sigset(m uint64) string {
	if m == 0 {
		return "none"
	}
	var out []string
	for n := uint32(1); n <= 64; n++ {
		if m&(1<<(n-1)) != 0 {
			out = append(out, signalName(n))
		}
	}
	return strings.Join(out, ",")
}

// size is a byte count for people: "8 KiB", "1.5 MiB".
func size(n uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v, u := float64(n), 0
	for v >= 1024 && u < len(units)-1 {
		v /= 1024
		u++
	}
	if u == 0 || v == float64(uint64(v)) {
		return fmt.Sprintf("%d %s", uint64(v), units[u])
	}
	return fmt.Sprintf("%.1f %s", v, units[u])
}
