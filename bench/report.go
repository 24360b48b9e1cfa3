package main

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// measurement is a duration per repetition, and what else each run showed.
type measurement struct {
	Name          string             `json:"name"`
	Seconds       []float64          `json:"seconds"`
	Min           float64            `json:"min_s"`
	Median        float64            `json:"median_s"`
	GBpsBest      float64            `json:"gbps_best,omitempty"`
	GBpsMedian    float64            `json:"gbps_median,omitempty"`
	FrozenSeconds []float64          `json:"frozen_seconds,omitempty"`
	FrozenMin     float64            `json:"frozen_min_s,omitempty"`
	FrozenMedian  float64            `json:"frozen_median_s,omitempty"`
	ImageBytes    int64              `json:"image_bytes,omitempty"`
	Usage         map[string][]usage `json:"usage,omitempty"` // per stage, per repetition
	Errors        []string           `json:"errors,omitempty"`
}

// wresult is everything measured for one workload.
type wresult struct {
	Name         string         `json:"name"`
	Bytes        int64          `json:"bytes"`
	Measurements []*measurement `json:"measurements"`
	Verified     int            `json:"verified_restores"` // restores whose workload checked its memory and said PASS
	Errors       []string       `json:"errors,omitempty"`
	byName       map[string]*measurement
}

func (w *workload) result() *wresult {
	return &wresult{Name: w.Name, Bytes: w.Bytes, byName: map[string]*measurement{}}
}

func (r *wresult) get(name string) *measurement {
	if m := r.byName[name]; m != nil {
		return m
	}
	m := &measurement{Name: name, Usage: map[string][]usage{}}
	r.byName[name] = m
	r.Measurements = append(r.Measurements, m)
	return m
}

func (r *wresult) record(name string, d time.Duration, err error) {
	m := r.get(name)
	if err != nil {
		m.Errors = append(m.Errors, err.Error())
		return
	}
	m.Seconds = append(m.Seconds, d.Seconds())
}

func (r *wresult) recordRun(name string, run runResult) {
	r.record(name, run.d, run.err)
	m := r.get(name)
	if run.err == nil {
		if run.frozen > 0 {
			m.FrozenSeconds = append(m.FrozenSeconds, run.frozen.Seconds())
		}
		m.ImageBytes = max(m.ImageBytes, run.imageBytes)
	}
	r.addUsage(name, run.usage)
}

func (r *wresult) addUsage(name string, us []usage) {
	m := r.get(name)
	for _, u := range us {
		m.Usage[u.Name] = append(m.Usage[u.Name], u)
	}
}

// target is one goal of issue 10, checked against this run.
type target struct {
	What  string  `json:"what"`
	Value float64 `json:"value"`
	Goal  string  `json:"goal"`
	OK    bool    `json:"ok"`
	Note  string  `json:"note,omitempty"`
}

type report struct {
	Time      string     `json:"time"`
	Host      string     `json:"host"`
	Kernel    string     `json:"kernel"`
	CPUs      int        `json:"cpus"`
	Reps      int        `json:"reps"`
	WarmupMB  int        `json:"warmup_mb"`
	WarmupSec float64    `json:"warmup_s"`
	Seconds   float64    `json:"seconds"`
	Workloads []*wresult `json:"workloads"`
	Targets   []target   `json:"targets"`
	Commit    string     `json:"commit,omitempty"`
}

func newReport() *report {
	var u unix.Utsname
	unix.Uname(&u)
	host, _ := os.Hostname()
	commit := ""
	if b, err := runOut("git", "rev-parse", "--short", "HEAD"); err == nil {
		commit = strings.TrimSpace(b)
	}
	return &report{
		Time:   time.Now().UTC().Format(time.RFC3339),
		Host:   host,
		Kernel: unix.ByteSliceToString(u.Release[:]),
		CPUs:   runtime.NumCPU(),
		Reps:   *repsFlag,
		Commit: commit,
	}
}

func stats(s []float64) (lo, med float64) {
	if len(s) == 0 {
		return 0, 0
	}
	c := append([]float64(nil), s...)
	sort.Float64s(c)
	lo = c[0]
	if len(c)%2 == 1 {
		med = c[len(c)/2]
	} else {
		med = (c[len(c)/2-1] + c[len(c)/2]) / 2
	}
	return lo, med
}

// finish computes minima, medians, throughputs and the targets.
func (rep *report) finish() {
	for _, w := range rep.Workloads {
		for _, m := range w.Measurements {
			m.Min, m.Median = stats(m.Seconds)
			m.FrozenMin, m.FrozenMedian = stats(m.FrozenSeconds)
			if m.Min > 0 && w.Bytes > 0 && !strings.HasPrefix(m.Name, "tiny") {
				m.GBpsBest = float64(w.Bytes) / m.Min / 1e9
				m.GBpsMedian = float64(w.Bytes) / m.Median / 1e9
			}
		}
	}
	// ratio adds a target; it returns it (nil when not measured).
	ratio := func(w *wresult, limit, ours string, what string) *target {
		l, o := w.byName[limit], w.byName[ours]
		if l == nil || o == nil || l.Min == 0 || o.Min == 0 {
			return nil
		}
		v := l.Min / o.Min
		rep.Targets = append(rep.Targets, target{
			What: fmt.Sprintf("%s: %s", w.Name, what), Value: v, Goal: fmt.Sprintf("≥ %.0f%%", 100*ratioGoal), OK: v >= ratioGoal,
			Note: fmt.Sprintf("best %.3f s against %.3f s; medians %.0f%%", o.Min, l.Min, 100*l.Median/o.Median),
		})
		return &rep.Targets[len(rep.Targets)-1]
	}
	byName := map[string]*wresult{}
	for _, w := range rep.Workloads {
		byName[w.Name] = w
	}
	for _, name := range []string{"1 GiB random", "4 GiB random"} {
		if w := byName[name]; w != nil {
			// The dump a user runs is cr-dump's; the bare pipeline's beside.
			null, file := dumpRows(w)
			if t := ratio(w, mPVR, null, "dump → /dev/null against process_vm_readv"); t != nil {
				t.Note += bareNote(w, mPVR, mDumpNull, null)
			}
			if t := ratio(w, mWrite, file, "dump → tmpfs against plain write (of memory)"); t != nil {
				if hot := w.byName[mWriteHot]; hot != nil && hot.Min > 0 {
					t.Note += fmt.Sprintf("; against a write from a 4 MiB buffer (in the caches) %.0f%%", 100*hot.Min/w.byName[file].Min)
				}
				t.Note += bareNote(w, mWrite, mDumpFile, file)
			}
			ratio(w, mFill, mRestore, "restore ← tmpfs against populate + memcpy")
		}
	}
	if w := byName["1 GiB random, THP"]; w != nil {
		ratio(w, mFillHuge, mRestore, "restore ← tmpfs against THP populate + memcpy")
		ratio(w, mFill, mRestore, "restore ← tmpfs against 4 KiB populate + memcpy (beat it: > 100%)")
	}
	for _, w := range rep.Workloads {
		if strings.Contains(w.Name, "compressible") {
			if m := w.byName[mDumpComp]; m != nil && m.Min > 0 {
				rep.Targets = append(rep.Targets, target{What: w.Name + ": dump --compress", Value: m.GBpsBest,
					Goal: fmt.Sprintf("≥ %.1f GB/s", compressGoalGBs), OK: m.GBpsBest >= compressGoalGBs,
					Note: fmt.Sprintf("image %.1f MiB; median %.2f GB/s", float64(m.ImageBytes)/(1<<20), m.GBpsMedian)})
			}
		}
		if strings.HasSuffix(w.Name, "random") && strings.Contains(w.Name, "GiB") {
			c, u := w.byName[mDumpComp], w.byName[mDumpFile]
			if c != nil && u != nil && c.Min > 0 && u.Min > 0 {
				v := u.Min / c.Min
				rep.Targets = append(rep.Targets, target{What: w.Name + ": dump --compress → tmpfs against uncompressed", Value: v,
					Goal: fmt.Sprintf("≥ %.0f%%", 100*compressKeep), OK: v >= compressKeep,
					Note: fmt.Sprintf("%.3f s against %.3f s", c.Min, u.Min)})
			}
		}
		if strings.Contains(w.Name, "zero") {
			if m := w.byName[mDumpFile]; m != nil && m.ImageBytes > 0 {
				v := float64(m.ImageBytes) / float64(w.Bytes)
				rep.Targets = append(rep.Targets, target{What: w.Name + ": image size against memory", Value: v,
					Goal: "≈ 0 (zero pages cost no bytes)", OK: v < 0.01,
					Note: fmt.Sprintf("%.1f MiB", float64(m.ImageBytes)/(1<<20))})
			}
		}
	}
	if w := byName["64 processes × 16 MiB random"]; w != nil {
		// Scales with cores: the dump on every CPU against the same on one
		// (80% of linear, as the other ratios).
		// cr-dump's where measured, the bare pipeline's beside it.
		all, one := mDumpNull, mDumpOne
		if a, o := w.byName[mDumpPorc], w.byName[mPorcOne]; a != nil && o != nil && a.Min > 0 && o.Min > 0 {
			all, one = mDumpPorc, mPorcOne
		}
		m, o := w.byName[all], w.byName[one]
		if m != nil && o != nil && m.Min > 0 && o.Min > 0 {
			v, goal := o.Min/m.Min, 0.8*float64(rep.CPUs)
			note := fmt.Sprintf("%.3f s against %.3f s; medians %.2f×", m.Min, o.Min, o.Median/m.Median)
			if bm, bo := w.byName[mDumpNull], w.byName[mDumpOne]; all != mDumpNull && bm != nil && bo != nil && bm.Min > 0 && bo.Min > 0 {
				note += fmt.Sprintf("; cr-dump (the bare pipeline: %.3f s against %.3f s, %.2f×)", bm.Min, bo.Min, bo.Min/bm.Min)
			}
			rep.Targets = append(rep.Targets, target{What: fmt.Sprintf("64 × 16 MiB: dump → /dev/null on %d CPUs against one", rep.CPUs), Value: v,
				Goal: fmt.Sprintf("≥ %.1f× (scales with cores)", goal), OK: v >= goal, Note: note})
		}
		// Not process count: as fast as one process with the same memory.
		if one := byName["1 GiB random"]; one != nil {
			null, _ := dumpRows(w)
			if oneNull, _ := dumpRows(one); oneNull != null {
				null = mDumpNull // the same kind of dump on both sides
			}
			m, o := w.byName[null], one.byName[null]
			if m != nil && o != nil && m.Min > 0 && o.Min > 0 {
				v := o.Min / m.Min
				rep.Targets = append(rep.Targets, target{What: "64 × 16 MiB: dump → /dev/null against one process of 1 GiB", Value: v,
					Goal: "≥ 80% (not process count)", OK: v >= 0.8,
					Note: fmt.Sprintf("%.3f s against %.3f s", m.Min, o.Min)})
			}
		}
	}
	if w := byName["tiny counter"]; w != nil {
		// cr-dump, then cr-restore -d (measureTiny).
		if m := w.byName[mTinyTotal]; m != nil && m.Min > 0 {
			rep.Targets = append(rep.Targets, target{What: "tiny counter: dump + restore", Value: m.Min * 1000,
				Goal: fmt.Sprintf("< %d ms", tinyLimitMS), OK: m.Min*1000 < tinyLimitMS,
				Note: fmt.Sprintf("median %.0f ms", m.Median*1000)})
		}
	}
	var worst usage
	var where string
	for _, w := range rep.Workloads {
		for _, m := range w.Measurements {
			for _, us := range m.Usage {
				for _, u := range us {
					if u.MaxRSSMB > worst.MaxRSSMB {
						worst, where = u, w.Name+", "+m.Name
					}
				}
			}
		}
	}
	if worst.Name != "" {
		rep.Targets = append(rep.Targets, target{What: "peak RSS of every stage, and of cr-dump running them all", Value: worst.MaxRSSMB,
			Goal: fmt.Sprintf("≤ %d MB", rssLimitMB), OK: worst.MaxRSSMB <= rssLimitMB,
			Note: fmt.Sprintf("largest: %s (%s)", worst.Name, where)})
	}
	verified, restores := 0, 0
	for _, w := range rep.Workloads {
		verified += w.Verified
		for _, m := range w.Measurements {
			if m.Name == mRestore || m.Name == mTinyRest {
				restores += len(m.Seconds)
			}
		}
	}
	rep.Targets = append(rep.Targets, target{What: "restored workloads that checked their memory and said PASS", Value: float64(verified),
		Goal: "every one checked", OK: verified > 0, Note: fmt.Sprintf("%d restores, %d checked", restores, verified)})
}

func secs(m *measurement) string {
	if m == nil || len(m.Seconds) == 0 {
		if m != nil && len(m.Errors) > 0 {
			return "failed"
		}
		return ""
	}
	return fmt.Sprintf("%.3f / %.3f", m.Min, m.Median)
}

func gbps(m *measurement) string {
	if m == nil || m.GBpsBest == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f", m.GBpsBest)
}

func printReport(w io.Writer, rep *report) {
	fmt.Fprintf(w, "\n### crpipe bench (%s, kernel %s, %d CPUs, commit %s)\n\n", rep.Host, rep.Kernel, rep.CPUs, rep.Commit)
	fmt.Fprintf(w, "%d repetitions, interleaved, after touching and freeing %d MiB (%.1f s); the whole run took %.0f s. Times are min / median in seconds; GB/s from the minimum.\n\n",
		rep.Reps, rep.WarmupMB, rep.WarmupSec, rep.Seconds)

	fmt.Fprintln(w, "Dumps by the bare pipeline (cr-freeze | ... | cr-pages, as a shell runs it) and by cr-dump (the stages in its one process, left running).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| workload | pipeline → /dev/null | GB/s | cr-dump → /dev/null | GB/s | pipeline → tmpfs | GB/s | frozen (→ tmpfs) | restore ← tmpfs | GB/s | image MiB | --compress → tmpfs | GB/s | lz4 MiB |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rep.Workloads {
		if r.byName[mTinyTotal] != nil {
			continue
		}
		df, c := r.byName[mDumpFile], r.byName[mDumpComp]
		frozen, img, cimg := "", "", ""
		if df != nil && df.FrozenMin > 0 {
			frozen = fmt.Sprintf("%.3f / %.3f", df.FrozenMin, df.FrozenMedian)
		}
		if df != nil && df.ImageBytes > 0 {
			img = fmt.Sprintf("%.1f", float64(df.ImageBytes)/(1<<20))
		}
		if c != nil && c.ImageBytes > 0 {
			cimg = fmt.Sprintf("%.1f", float64(c.ImageBytes)/(1<<20))
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Name,
			secs(r.byName[mDumpNull]), gbps(r.byName[mDumpNull]), secs(r.byName[mDumpPorc]), gbps(r.byName[mDumpPorc]), secs(df), gbps(df), frozen,
			secs(r.byName[mRestore]), gbps(r.byName[mRestore]), img, secs(c), gbps(c), cimg)
	}
	for _, r := range rep.Workloads {
		if t := r.byName[mTinyTotal]; t != nil {
			fmt.Fprintf(w, "\n%s, cr-dump then cr-restore -d: dump %s s, restore %s s, dump + restore %s s (min / median).\n",
				r.Name, secs(r.byName[mTinyDump]), secs(r.byName[mTinyRest]), secs(t))
		}
		if p := r.byName[mSnapshot]; p != nil {
			fmt.Fprintf(w, "\n%s, %s: %s s (%s GB/s), frozen %.3f / %.3f s (to the cgroup's removal, after the thaw).\n", r.Name, mSnapshot, secs(p), gbps(p), p.FrozenMin, p.FrozenMedian)
		}
	}

	fmt.Fprintln(w, "\nLimits of the machine, measured beside each workload (min / median s, GB/s from the minimum):")
	fmt.Fprintln(w, "\n| workload | process_vm_readv | GB/s | memcpy | GB/s | write to tmpfs | GB/s | (from 4 MiB) | populate + memcpy | GB/s | THP populate + memcpy | GB/s |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rep.Workloads {
		if r.byName[mPVR] == nil {
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Name,
			secs(r.byName[mPVR]), gbps(r.byName[mPVR]), secs(r.byName[mMemcpy]), gbps(r.byName[mMemcpy]),
			secs(r.byName[mWrite]), gbps(r.byName[mWrite]), secs(r.byName[mWriteHot]), secs(r.byName[mFill]), gbps(r.byName[mFill]),
			secs(r.byName[mFillHuge]), gbps(r.byName[mFillHuge]))
	}

	fmt.Fprintln(w, "\nTargets (issue 10), ratios of minima measured in this run:")
	fmt.Fprintln(w, "\n| target | value | goal | met | |")
	fmt.Fprintln(w, "|---|---:|---|---|---|")
	for _, t := range rep.Targets {
		v := fmt.Sprintf("%.2f", t.Value)
		if strings.HasPrefix(t.Goal, "≥ ") && strings.HasSuffix(t.Goal, "%") || strings.HasPrefix(t.Goal, "≥ 80%") {
			v = fmt.Sprintf("%.0f%%", 100*t.Value)
		}
		if strings.Contains(t.What, "image size") {
			v = fmt.Sprintf("%.1f%%", 100*t.Value)
		}
		if strings.Contains(t.Goal, "×") {
			v = fmt.Sprintf("%.2f×", t.Value)
		}
		ok := "yes"
		if !t.OK {
			ok = "**no**"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", t.What, v, t.Goal, ok, t.Note)
	}

	fmt.Fprintln(w, "\nPer stage, dump → tmpfs and restore: peak RSS MB (max over repetitions) / CPU s (median):")
	names := append(stageNames(), "cr-restore")
	fmt.Fprintf(w, "\n| workload | %s |\n|---|%s\n", strings.Join(names, " | "), strings.Repeat("---:|", len(names)))
	for _, r := range rep.Workloads {
		cells := make([]string, len(names))
		any := false
		for _, mn := range []string{mDumpFile, mRestore} {
			m := r.byName[mn]
			if m == nil {
				continue
			}
			for i, n := range names {
				us := m.Usage[n]
				if len(us) == 0 {
					continue
				}
				var rss float64
				cpu := make([]float64, 0, len(us))
				for _, u := range us {
					rss = max(rss, u.MaxRSSMB)
					cpu = append(cpu, u.CPUSec)
				}
				_, med := stats(cpu)
				cells[i] = fmt.Sprintf("%.1f / %.2f", rss, med)
				any = true
			}
		}
		if any {
			fmt.Fprintf(w, "| %s | %s |\n", r.Name, strings.Join(cells, " | "))
		}
	}
	for _, r := range rep.Workloads {
		for _, e := range r.Errors {
			fmt.Fprintf(w, "\n- %s: error: %s", r.Name, e)
		}
		for _, m := range r.Measurements {
			for _, e := range m.Errors {
				fmt.Fprintf(w, "\n- %s, %s: error: %s", r.Name, m.Name, e)
			}
		}
	}
	fmt.Fprintln(w)
}

func writeResults(rep *report) error {
	if err := os.MkdirAll(*outFlag, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	base := filepath.Join(*outFlag, time.Now().UTC().Format("20060102-150405"))
	if err := os.WriteFile(base+".json", append(b, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(base+".svg", []byte(plot(rep)), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s.json and %s.svg\n", base, base)
	return nil
}

// plot draws throughput per workload (best of the repetitions) as grouped
// horizontal bars, with the machine's limits as marks where measured.
func plot(rep *report) string {
	type series struct {
		name, color string
	}
	bars := []struct {
		m     string
		s     series
		limit string
	}{
		{mDumpNull, series{"dump → /dev/null", "#1f77b4"}, mPVR},
		{mDumpFile, series{"dump → tmpfs", "#2ca02c"}, mWrite},
		{mDumpComp, series{"dump --compress → tmpfs", "#9467bd"}, ""},
		{mRestore, series{"restore ← tmpfs", "#d62728"}, mFill},
	}
	var rows []*wresult
	maxV := 1.0
	for _, r := range rep.Workloads {
		if r.byName[mTinyTotal] != nil {
			continue
		}
		rows = append(rows, r)
		for _, b := range bars {
			for _, n := range []string{b.m, b.limit} {
				if m := r.byName[n]; m != nil {
					maxV = max(maxV, m.GBpsBest)
				}
			}
		}
	}
	const left, width, barH, gap, top = 260, 560, 9, 14, 60
	rowH := len(bars)*barH + gap
	height := top + len(rows)*rowH + 40
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", left+width+160, height)
	fmt.Fprintf(&sb, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&sb, `<text x="10" y="18" font-size="14">crpipe throughput per workload, GB/s (best of %d; %s, %d CPUs, %s)</text>`+"\n", rep.Reps, html.EscapeString(rep.Kernel), rep.CPUs, rep.Time)
	lx := 10
	for _, b := range bars {
		fmt.Fprintf(&sb, `<rect x="%d" y="30" width="10" height="10" fill="%s"/><text x="%d" y="39">%s</text>`+"\n", lx, b.s.color, lx+14, html.EscapeString(b.s.name))
		lx += 30 + 7*len(b.s.name)
	}
	fmt.Fprintf(&sb, `<line x1="%d" y1="33" x2="%d" y2="41" stroke="black" stroke-width="2"/><text x="%d" y="39">limit (process_vm_readv, write, fill)</text>`+"\n", lx, lx, lx+6)
	scale := float64(width) / maxV
	for g := 0.0; g <= maxV; g += gridStep(maxV) {
		x := left + int(g*scale)
		fmt.Fprintf(&sb, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#ddd"/><text x="%d" y="%d" text-anchor="middle">%.1f</text>`+"\n", x, top-6, x, height-30, x, height-16, g)
	}
	for i, r := range rows {
		y := top + i*rowH
		fmt.Fprintf(&sb, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", left-6, y+rowH/2, html.EscapeString(r.Name))
		for j, b := range bars {
			by := y + j*barH
			if m := r.byName[b.m]; m != nil && m.GBpsBest > 0 {
				fmt.Fprintf(&sb, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"><title>%s: %.2f GB/s</title></rect>`+"\n", left, by, int(m.GBpsBest*scale), barH-1, b.s.color, html.EscapeString(b.s.name), m.GBpsBest)
			}
			if l := r.byName[b.limit]; b.limit != "" && l != nil && l.GBpsBest > 0 {
				x := left + int(l.GBpsBest*scale)
				fmt.Fprintf(&sb, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black" stroke-width="2"><title>%s: %.2f GB/s</title></line>`+"\n", x, by-1, x, by+barH, html.EscapeString(b.limit), l.GBpsBest)
			}
		}
	}
	sb.WriteString("</svg>\n")
	return sb.String()
}

func gridStep(maxV float64) float64 {
	for _, s := range []float64{0.5, 1, 2, 5, 10} {
		if maxV/s <= 10 {
			return s
		}
	}
	return 20
}

func runOut(name string, args ...string) (string, error) {
	b, err := execOutput(name, args...)
	return string(b), err
}

// dumpRows are the rows of w's dumps into /dev/null and into a tmpfs file
// that the targets compare: cr-dump's where measured (the dump a user
// runs), the bare pipeline's otherwise.
func dumpRows(w *wresult) (null, file string) {
	null, file = mDumpNull, mDumpFile
	if m := w.byName[mDumpPorc]; m != nil && m.Min > 0 {
		null = mDumpPorc
	}
	if m := w.byName[mSnapshot]; m != nil && m.Min > 0 {
		file = mSnapshot
	}
	return null, file
}

// bareNote gives the bare pipeline's ratio to limit beside cr-dump's.
func bareNote(w *wresult, limit, bare, used string) string {
	l, b := w.byName[limit], w.byName[bare]
	if used == bare || l == nil || b == nil || b.Min == 0 {
		return ""
	}
	return fmt.Sprintf("; cr-dump (the bare pipeline: best %.3f s, %.0f%%)", b.Min, 100*l.Min/b.Min)
}
