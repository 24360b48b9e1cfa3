// Package pages is the cr-pages stage: for every process in the stream it
// appends an Mm record (every VMA, the address-space layout, auxv, exe) and
// the page frames holding the memory a restore cannot get from elsewhere.
//
// Which pages: of private mappings (anonymous, heap, stack, and private file
// mappings) the anonymous pages that are present or swapped out, but not the
// shared zero page, nor pages of private anonymous memory that are all
// zeros (found as they are copied; the mm record's pages_total counts them);
// of shared anonymous mappings the pages their shmem object
// holds. Never pages of shared file mappings (they are in the file) nor of
// [vdso], [vvar] and [vsyscall] (their positions are recorded). A file
// deleted since it was mapped goes into the image whole, as a ghost-file
// record before the Mm record (ghost.go).
//
// PAGEMAP_SCAN (Linux 6.7) finds those pages in the kernel, so unpopulated
// and zero-page memory costs nothing; process_vm_readv copies them with one
// large local buffer and up to 1024 remote ranges per call, and a second
// buffer overlaps reading with checksumming and writing. Memory use is two
// 4 MiB buffers whatever the size of the process. The process must be
// frozen (cgroup freezer) or stopped; no ptrace is needed.
package pages

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"

	"crpipe/lib/cli"
	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// Command is the cr-pages command.
func Command() *cli.App {
	return stage.FilterCommand("cr-pages", "append the memory mappings and page contents of every frozen process in the stream",
		[]cli.Flag{stage.GhostLimitFlag, &cli.BoolFlag{Name: "lend", Usage: "have large processes put their own pages into the stream instead of copies " +
			"(faster; the stream then refers to their memory until it is read: only for a dump whose processes are killed, or stay frozen, until the image is read to the end, as cr-dump does)"}},
		func(c *cli.Context) (stage.Filter, error) {
			limit, err := stage.GhostLimit(c)
			if err != nil {
				return stage.Filter{}, err
			}
			lendMin, err := lendMinFromEnv()
			if err != nil {
				return stage.Filter{}, stage.Usagef("%v", err)
			}
			return FilterWith(Options{GhostLimit: limit, Lend: c.Bool("lend"), LendMin: lendMin}), nil
		})
}

// Filter returns the cr-pages filter with default options.
func Filter() stage.Filter { return FilterWith(defaultOptions) }

// FilterWith returns the cr-pages filter: it remembers every live Process
// record (a zombie has no memory) and dumps those processes once the input
// is complete.
func FilterWith(opts Options) stage.Filter {
	go WarmBuffers() // while the tree is not frozen yet
	up := &stage.Upstream{}
	fast := &fastSetup{}
	observe := func(f *image.Frame) error {
		n := len(up.Procs)
		if err := up.Observe(f); err != nil {
			return err
		}
		if len(up.Procs) > n && !fast.requested && (len(up.Procs) >= fastMinProcs || hasAnon(up.Procs[n], fastMinAnon)) {
			fast.start()
		}
		return nil
	}
	return stage.Filter{
		Observe: observe,
		Finish: func(w *image.Writer) (err error) {
			defer fast.close()
			if err := up.NeedProcs(); err != nil {
				return err
			}
			var ls *lenders
			if opts.Lend {
				if err := up.NeedFreeze(); err != nil {
					return err
				}
				if ls, err = startLenders(up.Freeze, up.Procs, opts.LendMin); err != nil {
					return err
				}
				defer func() {
					if cerr := ls.close(); cerr != nil {
						err = errors.Join(err, cerr)
					}
				}()
			}
			err = stream(w, up.Procs, newGhosts(opts, up), ls, fast.get, func(p *pb.Process, st Stats) {
				mib := float64(st.Pages) * image.PageSize / (1 << 20)
				stage.Logf("pid %d: %d vmas, %d pages (%.1f MiB; %d of zeros left out) in %d frames, %v (%.2f GB/s)", p.Pid, st.Vmas, st.Pages, mib, st.Zero, st.Frames,
					st.Elapsed.Round(100_000), float64(st.Pages)*image.PageSize/st.Elapsed.Seconds()/1e9)
			})
			if err != nil {
				return err
			}
			if stage.Verbose { // not a /proc read on the frozen tree's path for nothing
				if hwm, err := peakRSS(); err == nil {
					stage.Logf("peak RSS %.1f MB", float64(hwm)/1e6)
				}
			}
			return nil
		},
	}
}

// peakRSS is this process's VmHWM in bytes. (getrusage's ru_maxrss would
// include the RSS of the process that exec'ed us.)
func peakRSS() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range bytes.Split(b, []byte{'\n'}) {
		if v, ok := bytes.CutPrefix(line, []byte("VmHWM:")); ok {
			kb, err := strconv.ParseInt(string(bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(v), []byte("kB")))), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/self/status")
}
