package crit

import (
	"bufio"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"crpipe/lib/image"
	"crpipe/lib/pb"
)

// Show prints a human summary of the stream. On damage it prints what it
// read before, then returns the error.
func Show(out io.Writer, in io.Reader) error {
	s, err := scan(in, true)
	w := bufio.NewWriter(out)
	s.show(w, err != nil)
	if ferr := w.Flush(); err == nil {
		err = ferr
	}
	return err
}

func (s *stream) show(w io.Writer, damaged bool) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	if s.hdr.Major == 0 {
		return // not even a header
	}
	state := "complete, end counts match"
	if damaged {
		state = "DAMAGED: the summary covers the frames before the damage"
	}
	p("%s, %d frames, %d page frames, %s of page data (%s)", s.version(), s.frames, s.pageFrames, size(s.pageBytes), state)
	if s.frames > 0 {
		p("frames: %s", s.typeCounts())
	}
	for _, inv := range s.inventory {
		p("inventory: root pid %d, host %s, kernel %s, boot %s, page size %d, created %s, by %s",
			inv.RootPid, quote(inv.Hostname), quote(inv.Kernel), quote(inv.BootId), inv.PageSize,
			time.Unix(0, inv.CreatedUnixNano).UTC().Format(time.RFC3339), quote(inv.ToolVersion))
	}
	for _, fr := range s.freeze {
		t := ""
		if fr.Transient {
			t = " (transient)"
		}
		p("freeze: %s, cgroup %s%s", quote(fr.Method), fr.Cgroup, t)
		for _, o := range fr.Original {
			p("  pid %d was in %s", o.Pid, o.Cgroup2)
		}
	}
	s.files.index(s.procs)
	for _, pr := range s.procs {
		p("")
		pr.show(w, &s.files)
	}
	s.tcp.show(w)
	var unknown []string
	for _, t := range s.types {
		if t != image.TypePages && newMessage(t) == nil {
			unknown = append(unknown, fmt.Sprintf("%s ×%d", t, s.perType[t]))
		}
	}
	if len(unknown) > 0 {
		p("")
		p("frames of types this crit does not know (passed through by every stage): %s", strings.Join(unknown, ", "))
	}
}

func quote(s string) string {
	if s == "" {
		return `""`
	}
	if strings.ContainsAny(s, " \t\n\"") {
		return fmt.Sprintf("%q", s)
	}
	return s
}

func (pr *proc) show(w io.Writer, fr *fileRecords) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	if x := pr.process; x != nil {
		p("process %d (%s): ppid %d, pgid %d, sid %d, state %s, threads %s, start time %d",
			x.Pid, x.Comm, x.Ppid, x.Pgid, x.Sid, quote(x.State), uints(x.Threads), x.StartTime)
	} else {
		p("process %d (no process record)", pr.pid)
	}
	for _, f := range pr.files {
		p("  exe %s, cwd %s, root %s, umask %03o", f.Exe, f.Cwd, f.Root, f.Umask)
	}
	for _, mm := range pr.mms {
		pr.showMm(w, mm)
	}
	if len(pr.mms) == 0 && len(pr.runs) > 0 {
		var n uint64
		for _, r := range pr.runs {
			n += r.pages
		}
		p("  %d pages dumped, no mm record", n)
	}
	for _, th := range pr.threads {
		r := th.Regs
		line := fmt.Sprintf("  thread %d: rip %#x rsp %#x", th.Tid, r.GetRip(), r.GetRsp())
		line += fmt.Sprintf(" fs_base %#x, sigmask %s, xsave %d bytes", r.GetFsBase(), sigset(th.Sigmask), len(th.Xsave))
		if th.Rseq != nil {
			line += fmt.Sprintf(", rseq %#x (%d bytes)", th.Rseq.AbiPointer, th.Rseq.AbiSize)
		}
		p("%s", line)
	}
	for _, st := range pr.states {
		p("  thread %d: clear_child_tid %#x", st.Tid, st.ClearChildTid)
		if len(st.Sigactions) == 0 {
			continue
		}
		p("  sigactions (of thread %d):", st.Tid)
		tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		for _, sa := range st.Sigactions {
			h := fmt.Sprintf("handler %#x", sa.Handler)
			switch sa.Handler {
			case 0:
				h = "default"
			case 1:
				h = "ignore"
			}
			fmt.Fprintf(tw, "    %s\t%s\tflags %s\tmask %s\trestorer %#x\n", signalName(sa.Signo), h, saFlagString(sa.Flags), sigset(sa.Mask), sa.Restorer)
		}
		tw.Flush()
	}
	for _, f := range pr.files {
		fr.showFds(w, f)
	}
}

func uints(v []uint32) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ",")
}

func (pr *proc) showMm(w io.Writer, mm *pb.Mm) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	vmas := append([]*pb.Vma(nil), mm.Vmas...)
	sort.SliceStable(vmas, func(i, j int) bool { return vmas[i].Start < vmas[j].Start })
	var mapped, dumped uint64
	per := make([]uint64, len(vmas))
	for _, r := range pr.runs {
		dumped += r.pages
		for i, v := range vmas {
			per[i] += overlap(r, v)
		}
	}
	var inside, inherited uint64
	for i, v := range vmas {
		if v.End > v.Start {
			mapped += v.End - v.Start
		}
		inside += per[i]
		for _, r := range v.Inherited {
			if r.End > r.Start {
				inherited += (r.End - r.Start) / image.PageSize
			}
		}
	}
	p("  memory: %d vmas, %s mapped, %d pages (%s) dumped; brk %#x-%#x, code %#x-%#x, stack %#x",
		len(vmas), size(mapped), dumped, size(dumped*image.PageSize), mm.StartBrk, mm.Brk, mm.StartCode, mm.EndCode, mm.StartStack)
	if inherited > 0 {
		p("  shared with the parent since fork: %d pages (%s), not in the image", inherited, size(inherited*image.PageSize))
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "    address range\tsize\tprot\tkind\tpages\t path\n")
	for i, v := range vmas {
		var sz uint64
		if v.End > v.Start {
			sz = v.End - v.Start
		}
		path := v.Path
		if v.Pgoff != 0 {
			path += fmt.Sprintf(" @%#x", v.Pgoff)
		}
		if m := v.Memfd; m != nil {
			path += fmt.Sprintf(" [memfd %s, seals %#x]", size(uint64(max(m.Size, 0))), m.Seals)
		}
		if v.Advice != 0 {
			var names []string
			for _, a := range pb.AdviceFlags {
				if v.Advice&a.Bit != 0 {
					names = append(names, a.Flag)
				}
			}
			path += " [advice " + strings.Join(names, " ") + "]"
		}
		fmt.Fprintf(tw, "    %#x-%#x\t%s\t%s\t%s\t%d\t %s\n", v.Start, v.End, size(sz), prot(v.Prot, v.Flags), vmaKind(v.Kind), per[i], path)
	}
	tw.Flush()
	if dumped != inside {
		p("  warning: %d dumped pages lie outside every vma", dumped-min(inside, dumped))
	}
	// pages_total is an upper bound: pages of zeros may be left out.
	if mm.PagesTotal != 0 && dumped > mm.PagesTotal {
		p("  warning: the mm record announces at most %d pages, the stream has %d", mm.PagesTotal, dumped)
	}
}

// overlap is how many pages of run r lie in v.
func overlap(r pageRun, v *pb.Vma) uint64 {
	lo := max(r.addr, v.Start)
	end := r.addr + r.pages*image.PageSize
	if end < r.addr { // wrapped
		end = ^uint64(0)
	}
	hi := min(end, v.End)
	if hi <= lo {
		return 0
	}
	return (hi - lo) / image.PageSize
}
