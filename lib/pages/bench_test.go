package pages

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/pb"
)

// rawRead copies [start, end) of pid into one reused buffer of bufLen bytes
// with process_vm_readv: the limit a dump is measured against.
func rawRead(t testing.TB, pid int, r region, buf []byte) {
	for a := r.start; a < r.end; {
		n := min(uint64(len(buf)), r.end-a)
		local := []unix.Iovec{{Base: &buf[0], Len: n}}
		remote := []unix.RemoteIovec{{Base: uintptr(a), Len: int(n)}}
		got, err := unix.ProcessVMReadv(pid, local, remote, 0)
		if err != nil || uint64(got) != n {
			t.Fatalf("process_vm_readv at %#x: %d, %v", a, got, err)
		}
		a += n
	}
}

// cpuTime is the user+system CPU time of this process in seconds.
func cpuTime() float64 {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func dumpToDiscard(t testing.TB, pid int) Stats {
	w, err := image.NewWriter(io.Discard, image.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := DumpProcess(w, &pb.Process{Pid: uint32(pid)})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return st
}

func hogMiB(t testing.TB) int {
	mib := 1024
	if s := os.Getenv("CRPIPE_BENCH_MIB"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			mib = n
		}
	}
	return mib
}

// TestBandwidth compares the dump of a process holding 1 GiB of random
// memory (to /dev/null, in-process) with raw process_vm_readv of the same
// memory into a reused buffer, interleaved, minimum and median of 5 runs.
// The target of issue 10 is a ratio of at least 0.8; set
// CRPIPE_BENCH_STRICT=1 to fail below it (the figures of a shared VM vary).
func TestBandwidth(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the 1 GiB bandwidth measurement")
	}
	requirePagemapScan(t)
	mib := hogMiB(t)
	p := startStopped(t, "hog", strconv.Itoa(mib))
	r := p.regions["hog"]
	size := float64(r.end - r.start)
	buf4 := make([]byte, 4<<20)
	buf64 := make([]byte, 64<<20)
	var raw4, raw64, dump, rawCPU, dumpCPU []float64
	for i := 0; i < 5; i++ {
		t0, c0 := time.Now(), cpuTime()
		rawRead(t, p.pid, r, buf4)
		raw4 = append(raw4, size/time.Since(t0).Seconds()/1e9)
		rawCPU = append(rawCPU, -(cpuTime()-c0)/size*(1<<30))
		t0 = time.Now()
		rawRead(t, p.pid, r, buf64)
		raw64 = append(raw64, size/time.Since(t0).Seconds()/1e9)
		t0, c0 = time.Now(), cpuTime()
		st := dumpToDiscard(t, p.pid)
		dump = append(dump, float64(st.Pages)*image.PageSize/time.Since(t0).Seconds()/1e9)
		dumpCPU = append(dumpCPU, -(cpuTime()-c0)/size*(1<<30))
		if st.Pages*image.PageSize < uint64(size) {
			t.Fatalf("dumped %d pages of %d MiB", st.Pages, mib)
		}
	}
	best := func(xs []float64) (float64, float64) {
		s := append([]float64(nil), xs...)
		sort.Float64s(s)
		return s[len(s)-1], s[len(s)/2]
	}
	// Fastest run = minimum time.
	r4, r4m := best(raw4)
	r64, r64m := best(raw64)
	d, dm := best(dump)
	rc, _ := best(rawCPU) // negated: best is the least CPU time
	dc, _ := best(dumpCPU)
	limit := max(r4, r64)
	t.Logf("%d MiB random: process_vm_readv 4 MiB buffer %.2f GB/s (median %.2f), 64 MiB buffer %.2f GB/s (median %.2f); dump %.2f GB/s (median %.2f) = %.0f%% of the limit",
		mib, r4, r4m, r64, r64m, d, dm, 100*d/limit)
	t.Logf("CPU time per GiB: process_vm_readv %.0f ms, dump %.0f ms (two threads: read, checksum+write)", -rc*1000, -dc*1000)
	if os.Getenv("CRPIPE_BENCH_STRICT") != "" && d < 0.8*limit {
		t.Errorf("dump at %.0f%% of process_vm_readv, target 80%%", 100*d/limit)
	}
}

// BenchmarkDump dumps a process with CRPIPE_BENCH_MIB (default 1024) MiB of
// random memory to io.Discard.
func BenchmarkDump(b *testing.B) {
	requirePagemapScan(b)
	p := startStopped(b, "hog", strconv.Itoa(hogMiB(b)))
	r := p.regions["hog"]
	b.SetBytes(int64(r.end - r.start))
	for b.Loop() {
		dumpToDiscard(b, p.pid)
	}
}

// BenchmarkProcessVMReadv is the limit BenchmarkDump is measured against.
func BenchmarkProcessVMReadv(b *testing.B) {
	requirePagemapScan(b)
	p := startStopped(b, "hog", strconv.Itoa(hogMiB(b)))
	r := p.regions["hog"]
	buf := make([]byte, 4<<20)
	b.SetBytes(int64(r.end - r.start))
	for b.Loop() {
		rawRead(b, p.pid, r, buf)
	}
}

// TestPeakRSS runs the cr-pages binary on a process with 1 GiB of random
// memory, writing to /dev/null, and checks its peak RSS stays under 32 MB
// (issue 10), whatever the size of the process.
func TestPeakRSS(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the 1 GiB peak RSS measurement")
	}
	requirePagemapScan(t)
	bin := filepath.Join(t.TempDir(), "cr-pages")
	if out, err := exec.Command("go", "build", "-o", bin, "crpipe/cmd/cr-pages").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	p := startStopped(t, "hog", strconv.Itoa(hogMiB(t)))
	in := filepath.Join(t.TempDir(), "in.img")
	if err := os.WriteFile(in, inputStream(t, p.pid), 0o600); err != nil {
		t.Fatal(err)
	}
	stdin, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	cmd := exec.Command(bin, "-v")
	cmd.Stdin, cmd.Stdout = stdin, devnull
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("cr-pages: %v\n%s", err, stderr.String())
	}
	elapsed := time.Since(t0)
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	// ru_maxrss would count the RSS of this test process, which exec'ed
	// cr-pages from a vfork: cr-pages reports its own VmHWM with -v.
	var rss float64
	for _, line := range strings.Split(stderr.String(), "\n") {
		if _, v, ok := strings.Cut(line, "peak RSS "); ok {
			fmt.Sscanf(v, "%f MB", &rss)
		}
	}
	t.Logf("cr-pages, %d MiB to /dev/null: %v wall, %.2f s CPU, peak RSS %.1f MB\n%s", hogMiB(t), elapsed.Round(time.Millisecond),
		float64(ru.Utime.Nano()+ru.Stime.Nano())/1e9, rss, strings.TrimSpace(stderr.String()))
	if rss == 0 || rss > 32 {
		t.Errorf("peak RSS %.1f MB, want at most 32 MB", rss)
	}
}
