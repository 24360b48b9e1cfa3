package files

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"crpipe/lib/pb"
)

// fdinfoField returns the value of the first "key: value" line of an fdinfo
// text (keys may contain spaces, e.g. "settime flags").
func fdinfoField(info []byte, key string) (string, bool) {
	for _, line := range bytes.Split(info, []byte{'\n'}) {
		k, v, ok := bytes.Cut(line, []byte{':'})
		if ok && string(bytes.TrimSpace(k)) == key {
			return string(bytes.TrimSpace(v)), true
		}
	}
	return "", false
}

// fdinfoUint parses a field in base (0: 0x/0 prefixes as Go reads them).
func fdinfoUint(e *entry, key string, base int) (uint64, error) {
	v, ok := fdinfoField(e.info, key)
	if !ok {
		return 0, cannot(e, "fdinfo has no %q line", key)
	}
	n, err := strconv.ParseUint(v, base, 64)
	if err != nil {
		return 0, cannot(e, "fdinfo %s %q: %v", key, v, errFdinfoSyntax)
	}
	return n, nil
}

// dumpEventfd: "eventfd-count" (hex) and "eventfd-semaphore" (Linux 6.6).
func dumpEventfd(e *entry, rec *pb.FileDesc) error {
	count, err := fdinfoUint(e, "eventfd-count", 16)
	if err != nil {
		return err
	}
	sem, err := fdinfoUint(e, "eventfd-semaphore", 10)
	if err != nil {
		return fmt.Errorf("%w (the semaphore flag is shown since Linux 6.6)", err)
	}
	rec.Eventfd = &pb.EventfdState{Count: count, Semaphore: sem != 0}
	return nil
}

// dumpPidfd: "Pid" is the process the pidfd refers to, as cr-files sees
// it: -1 once it has exited and been reaped, 0 outside our PID namespace.
// A restore opens a pidfd for the restored process (or zombie), which must
// be of the dump; the files are restored before threads other than the
// leader exist, so a pidfd of one of those is refused.
func (d *dumper) dumpPidfd(e *entry, rec *pb.FileDesc) error {
	v, ok := fdinfoField(e.info, "Pid")
	n, err := strconv.Atoi(v)
	if !ok || err != nil {
		return cannot(e, "fdinfo Pid %q: %v", v, errFdinfoSyntax)
	}
	of, threadOf := d.owner(n)
	switch {
	case threadOf != nil:
		return cannot(e, "it refers to thread %d of pid %d (PIDFD_THREAD), which a restore creates after the files", n, threadOf.Pid)
	case n <= 0:
		return cannot(e, "the process it refers to has exited (or is outside this PID namespace): a pidfd of it cannot be made again")
	case of == nil:
		return cannot(e, "it refers to pid %d, which is not in the dump", n)
	}
	rec.Pidfd = &pb.PidfdState{Pid: uint32(n)}
	return nil
}

// owner finds the process of the dump whose pid is n, or else the one that
// has n as one of its other threads.
func (d *dumper) owner(n int) (proc, threadOf *pb.Process) {
	for _, p := range d.procs {
		if int(p.Pid) == n {
			return p, nil
		}
		if slices.Contains(p.Threads, uint32(n)) {
			threadOf = p
		}
	}
	return nil, threadOf
}

// dumpSignalfd: "sigmask" (hex).
func dumpSignalfd(e *entry, rec *pb.FileDesc) error {
	mask, err := fdinfoUint(e, "sigmask", 16)
	if err != nil {
		return err
	}
	rec.Signalfd = &pb.SignalfdState{Sigmask: mask}
	return nil
}

// dumpTimerfd: clockid, ticks, settime flags (octal), it_value and
// it_interval as "(sec, nsec)"; it_value is the time left.
func dumpTimerfd(e *entry, rec *pb.FileDesc) error {
	clock, err := fdinfoUint(e, "clockid", 10)
	if err != nil {
		return err
	}
	ticks, err := fdinfoUint(e, "ticks", 10)
	if err != nil {
		return err
	}
	flags, err := fdinfoUint(e, "settime flags", 8)
	if err != nil {
		return err
	}
	value, err := fdinfoTimespec(e, "it_value")
	if err != nil {
		return err
	}
	interval, err := fdinfoTimespec(e, "it_interval")
	if err != nil {
		return err
	}
	rec.Timerfd = &pb.TimerfdState{Clockid: int32(clock), Ticks: ticks, SettimeFlags: uint32(flags), ValueNsec: value, IntervalNsec: interval}
	return nil
}

func fdinfoTimespec(e *entry, key string) (int64, error) {
	v, ok := fdinfoField(e.info, key)
	if !ok {
		return 0, cannot(e, "fdinfo has no %q line", key)
	}
	s, ns, ok := strings.Cut(strings.Trim(v, "()"), ",")
	sec, err1 := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	nsec, err2 := strconv.ParseInt(strings.TrimSpace(ns), 10, 64)
	if !ok || err1 != nil || err2 != nil || sec < 0 || nsec < 0 || nsec >= 1e9 || sec > 1<<32 {
		return 0, cannot(e, "fdinfo %s %q: %v", key, v, errFdinfoSyntax)
	}
	return sec*1e9 + nsec, nil
}
