package parasite

import (
	"errors"
	"fmt"

	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/seize"
	"crpipe/lib/sys"
)

// Held is a frozen process tree whose every thread the calling locked OS
// thread holds in a ptrace stop, so that its cgroup can be thawed for code
// to run in a chosen thread (cr-pages' page lender, lib/inject/lend.go)
// while nothing else runs: Run's life cycle, for a caller that injects on
// its own schedule.
type Held struct {
	fr      *pb.Freeze
	seized  []int
	targets []*target
	thawed  bool
	Procs   []HeldProcess
}

// HeldProcess is a held process, its threads, and a syscall instruction
// of its own.
type HeldProcess struct {
	Pid    int
	Tids   []int
	Insn   uint64
	Cgroup string // the frozen cgroup it is in
}

// Hold seizes every thread of the live processes of procs, which must sit
// in fr's frozen cgroup. On failure nothing is held.
func Hold(fr *pb.Freeze, procs []*pb.Process) (h *Held, err error) {
	mount, err := proc.Cgroup2Mount()
	if err != nil {
		return nil, err
	}
	h = &Held{fr: fr}
	defer func() {
		if err != nil {
			err = errors.Join(err, h.Release())
			h = nil
		}
	}()
	for _, p := range procs {
		if p.State == "Z" {
			continue
		}
		tg, err := prepare(p, fr, mount, nil, nil)
		if err != nil {
			return h, err
		}
		h.targets = append(h.targets, tg)
		if err := tg.seize(&h.seized); err != nil {
			return h, err
		}
	}
	for _, tg := range h.targets {
		if err := tg.waitStops(); err != nil {
			return h, err
		}
		h.Procs = append(h.Procs, HeldProcess{Pid: tg.pid, Tids: tg.tids, Insn: tg.insn, Cgroup: tg.cgroup})
	}
	return h, nil
}

// Thaw thaws the cgroup: the held threads stay in their stops, and only a
// thread given code to run by an injection runs.
func (h *Held) Thaw() error {
	if err := sys.CgroupFreeze(h.fr.Cgroup, false, 0); err != nil {
		return err
	}
	h.thawed = true
	return nil
}

// Release freezes the cgroup again if it was thawed, then detaches every
// thread (each back at the stop it was seized in: the caller has ended its
// injection sessions).
func (h *Held) Release() error {
	var errs []error
	if h.thawed {
		if err := sys.CgroupFreeze(h.fr.Cgroup, true, FreezeTimeout); err != nil {
			errs = append(errs, fmt.Errorf("refreeze: %w", err))
		}
		h.thawed = false
	}
	for _, tid := range h.seized {
		if err := sys.PtraceDetach(tid, 0); err != nil {
			errs = append(errs, seize.ThreadError(pidOf(h.targets, tid), tid, err))
		}
	}
	h.seized = nil
	return errors.Join(errs...)
}
