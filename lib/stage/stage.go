// Package stage is the plumbing every crpipe command shares: flags, the
// stream on stdin and stdout, pass-through of records a stage does not own,
// error and hint formatting, exit codes and profiling hooks.
package stage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"

	"golang.org/x/sys/unix"

	"crpipe/lib/cli"
	"crpipe/lib/image"
)

// HintError carries a remedy the user can act on; Main prints it on a
// "hint:" line after the error.
type HintError struct {
	Err  error
	Hint string
}

func (e *HintError) Error() string { return e.Err.Error() }
func (e *HintError) Unwrap() error { return e.Err }

// Hint attaches a hint to err (nil stays nil).
func Hint(err error, hint string) error {
	if err == nil {
		return nil
	}
	return &HintError{Err: err, Hint: hint}
}

// UsageError marks misuse (exit status 2); lib/cli returns one for every
// mistake on a command line.
type UsageError = cli.UsageError

// Hints that cr-files (for an fd) and cr-pages (for a mapping) both give
// about the same kernel object.
const (
	HintIoUring = "the kernel can neither show an io_uring's state nor build it again; run the program without io_uring if it can (MariaDB: innodb_use_native_aio=0)"
	HintHugetlb = "run the program without hugetlb pages if it can (PostgreSQL: huge_pages = off; Java: -XX:-UseLargePages); transparent huge pages are dumped and restored"
)

// Usagef reports misuse of a command.
func Usagef(format string, a ...any) error { return &UsageError{Err: fmt.Errorf(format, a...)} }

// Verbose is set by -v on every command.
var Verbose bool

// Logf prints a diagnostic line on stderr when -v is given.
func Logf(format string, a ...any) {
	if Verbose {
		fmt.Fprintf(os.Stderr, "%s: %s\n", logName(), OneLine(fmt.Sprintf(format, a...)))
	}
}

// logName names the command on Logf's lines: the program's, or, for a
// stage run in cr-dump's process (RunIn), the stage's, which is the
// package of Logf's caller (crpipe/lib/tcp for cr-tcp); a package the
// stages share logs as cr-dump.
func logName() string {
	name := filepath.Base(os.Args[0])
	if !InDump() {
		return name
	}
	pc, _, _, ok := runtime.Caller(2)
	if f := runtime.FuncForPC(pc); ok && f != nil {
		if rest, ok := strings.CutPrefix(f.Name(), "crpipe/lib/"); ok {
			if pkg, _, ok := strings.Cut(rest, "."); ok && !strings.Contains(pkg, "/") {
				if _, ran := ranHere.Load("cr-" + pkg); ran {
					return "cr-" + pkg
				}
			}
		}
	}
	return name
}

// CompressFlag is --compress, shared by every stage that writes a stream.
var CompressFlag = &cli.BoolFlag{Name: "compress", Usage: "write the stream as lz4 (parallel blocks)"}

// Main runs app with the shared flags and conventions and exits.
func Main(app *cli.App) {
	name := filepath.Base(os.Args[0])
	if app.Name == "" {
		app.Name = name
	}
	setUp(app, &Verbose)
	limitMemory()
	stop := startProfiling(name)
	err := app.Run(os.Args)
	stop()
	os.Exit(Report(name, err))
}

// setUp gives app the flags and conventions every command shares; -v sets
// *verbose, if not nil.
func setUp(app *cli.App, verbose *bool) {
	app.Flags = append(app.Flags, &cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "print diagnostics on stderr", Destination: verbose})
}

// RunIn runs app, a stage of the dump pipeline, in this process, with in
// and out where Main's stage has stdin and stdout: cr-dump runs its
// stages so, each on goroutines of its own, one Go program to start
// instead of six (lib/dump). args follow the program's name. The stage's
// error is returned, not printed (Status gives its exit status); a panic
// of the goroutine that runs it becomes its error, the stack printed.
// RunIn closes neither file; the stage closes out once its stream is
// complete (EndOutput). Verbose is the caller's: -v is accepted, and
// changes nothing.
func RunIn(app *cli.App, args []string, in, out *os.File) (err error) {
	here.Store(true)
	ranHere.Store(app.Name, true)
	setUp(app, nil)
	app.Metadata = map[string]any{streamsKey: streams{in, out}}
	defer func() {
		headerRead(in)     // a stage that failed early: its writer waits no more
		framesWritten(out) // nor its reader, which sees the end
		links.Delete(in)
		links.Delete(out)
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "%s: panic: %v\n%s", app.Name, r, debug.Stack())
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return app.Run(append([]string{app.Name}, args...))
}

// here is set once a stage has run in this process (RunIn); ranHere
// holds the names of those that have.
var (
	here    atomic.Bool
	ranHere sync.Map
)

// InDump says whether the stages run in cr-dump's own process (RunIn),
// not each in a process of its own.
func InDump() bool { return here.Load() }

// streams are the files a stage reads its stream from and writes it to:
// stdin and stdout, or the pipes RunIn was given.
type streams struct{ in, out *os.File }

const streamsKey = "crpipe/stage.streams"

func streamsOf(c *cli.Context) streams {
	if c != nil {
		if s, ok := c.App.Metadata[streamsKey].(streams); ok {
			return s
		}
	}
	return streams{os.Stdin, os.Stdout}
}

// memoryLimit is the soft limit of the Go heap of every command (unless
// GOMEMLIMIT says otherwise): a stage streams through a few buffers, and
// the garbage of per-block allocations (lz4) would otherwise let the heap
// double before a collection, past the 32 MB of peak RSS a stage may use.
const memoryLimit = 20 << 20

func limitMemory() {
	if os.Getenv("GOMEMLIMIT") == "" {
		if os.Getenv("GOGC") == "" {
			deferFirstCollection()
		}
		setLimit()
	}
}

// firstCollectionAt is the soft limit until the first collection: the
// collector is held back until the heap nears it (or ReserveHeap's
// limit, if lower), then given its usual pacing (GOGC=100). Its first
// collection otherwise comes at a heap of 4 MB, which a small dump
// reaches: it flushes every P's cached spans, and what is allocated after
// takes fresh spans and pages, ~7 ms of CPU on the PVM guest for a dump
// of ~60 ms (doc/performance.md, 74). Not memoryLimit: a large dump's
// garbage would grow the heap to it first, with page faults of its own
// (64 × 16 MiB: 4,144 against 2,732, and 33 MB of peak RSS).
const firstCollectionAt = 13 << 20

var (
	limitMu      sync.Mutex
	firstPending bool // the first collection has not run
)

func deferFirstCollection() {
	limitMu.Lock()
	firstPending = true
	limitMu.Unlock()
	debug.SetGCPercent(-1)
	// Freed by the first collection, whichever triggers it (the limit,
	// or a runtime.GC), after which its cleanup runs.
	first := new([64]byte)
	runtime.AddCleanup(first, func(int) {
		limitMu.Lock()
		firstPending = false
		limitMu.Unlock()
		debug.SetGCPercent(100)
		setLimit()
	}, 0)
}

// setLimit sets the heap's soft limit for the state reserved now.
func setLimit() {
	limitMu.Lock()
	defer limitMu.Unlock()
	l := softLimit(heapReserved.Load())
	if firstPending {
		l = min(l, firstCollectionAt)
	}
	debug.SetMemoryLimit(l)
}

// heapReserved is the state ReserveHeap was told the command holds.
var heapReserved atomic.Int64

// heapHeadroom is the room for garbage above the reserved state: the
// collector runs when the heap has grown by about that much. The soft
// limit is the larger of memoryLimit and the reserved state plus this.
// A limit far above the live heap also keeps freed spans resident (the
// scavenger returns memory only near it): with 65,000 mappings cr-pages
// peaked at 35-38 MB under a limit of 35 MiB, at 28 MB under 20 MiB with
// the same CPU, and under 18 MiB the collector doubled its CPU
// (doc/performance.md, 38).
const heapHeadroom = 8 << 20

// ProcessHeap is the heap a command may hold per process of the tree,
// besides its VMAs (VmaHeap): its records, its restore's state. Measured
// with 1,000 single-threaded processes: cr-restore ~4.5 KB (its large
// records held encoded), cr-seize ~3 KB (a thread's xsave area), the other
// stages 1-3 KB; the rest is room for the collector (doc/performance.md,
// 64). With 64 KiB a process the heap grew to twice what it held, and
// cr-restore peaked at 41 MB there.
const ProcessHeap = 10 << 10

// VmaHeap is the heap a command holds per VMA of a process whose memory
// it dumps or restores (measured with 65,000 one-page mappings: cr-pages
// ~170 bytes live, its maps entry, VMA, runs and encoded Mm record;
// cr-restore less). A process can have 65,530 VMAs (vm.max_map_count),
// and under a limit below them the collector ran back to back: half the
// CPU of a dump or restore of 60,000.
const VmaHeap = 176

// ReserveHeap tells the soft limit of the heap that the command holds n
// more bytes (or n fewer), state it must hold whatever it streams: a
// tree's records grow with the tree, and under a limit below them the
// collector runs back to back (a restore of 600 processes took 4.5 s,
// half of it collecting, against 2.1 s with the room).
func ReserveHeap(n int64) {
	heapReserved.Add(n)
	if os.Getenv("GOMEMLIMIT") == "" {
		setLimit()
	}
}

// softLimit is the heap's soft limit with reserved bytes of state held.
func softLimit(reserved int64) int64 {
	return max(memoryLimit, reserved+heapHeadroom)
}

// OneLine escapes the control characters of s (\n as `\n`, the others,
// C1 ones too, which a terminal acts on, as `\xNN`): an error or a log
// line stays one line whatever a file or socket name in it holds (a name
// may contain a newline), for readers and for cr-dump, which reads its
// stages' errors line by line.
func OneLine(s string) string {
	if !strings.ContainsFunc(s, unicode.IsControl) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case unicode.IsControl(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// Report prints err the house way and returns the exit status.
func Report(name string, err error) int {
	if err == nil {
		return 0
	}
	fmt.Fprintf(os.Stderr, "%s: error: %s\n", name, OneLine(err.Error()))
	if h := HintOf(err); h != "" {
		fmt.Fprintf(os.Stderr, "%s: hint: %s\n", name, OneLine(h))
	}
	return Status(err)
}

// HintOf is the hint attached to err, if any.
func HintOf(err error) string {
	var h *HintError
	if errors.As(err, &h) {
		return h.Hint
	}
	return ""
}

// Status is the exit status of a command that failed with err.
func Status(err error) int {
	if err == nil {
		return 0
	}
	var u *UsageError
	var ee *ExitStatus
	var ns *neighbourError
	switch {
	case errors.As(err, &u):
		return 2
	case errors.As(err, &ee):
		return ee.Code
	case errors.As(err, &ns):
		return ns.code
	}
	return 1
}

// Exit statuses of a stage of the dump pipeline beyond 0, 1 (failed) and
// 2 (usage). A stage that failed only because a neighbour did says so in
// its status, not just in words, so that cr-dump blames the stage that
// failed first (lib/dump) even when that one's message holds the same
// words. crit and cr-restore, whose input is the image itself, exit 1 on
// a truncated one.
const (
	ExitInputTruncated = 3 // its input ended without an end frame (image.ErrTruncated)
	ExitOutputClosed   = 4 // the reader of its output went away (EPIPE)
	ExitInterrupted    = 5 // SIGTERM, SIGINT or SIGHUP: it put back what it held and stopped
)

// NeighbourStatus gives err, the failure of a stage of the dump pipeline,
// the exit status that says it failed only because a neighbour did, if it
// did (found in err's chain, not its words).
func NeighbourStatus(err error) error {
	code := 0
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrInterrupted):
		code = ExitInterrupted
	case errors.Is(err, unix.EPIPE):
		code = ExitOutputClosed
	case errors.Is(err, image.ErrTruncated):
		code = ExitInputTruncated
	default:
		return err
	}
	return &neighbourError{err, code}
}

type neighbourError struct {
	error
	code int
}

func (e *neighbourError) Unwrap() error { return e.error }

// ErrInterrupted is wrapped by the error of a stage stopped by a signal
// it caught (Interrupted).
var ErrInterrupted = errors.New("interrupted")

// Interrupted is the error of a stage that stopped on sig, caught once
// what it held was put back; then says what it left, if anything.
func Interrupted(sig os.Signal, then string) error {
	if then != "" {
		then = "; " + then
	}
	return fmt.Errorf("%w by %v%s", ErrInterrupted, sig, then)
}

// ExitStatus makes a command exit with a given code (cr-restore passes the
// restored root's status on).
type ExitStatus struct{ Code int }

func (e *ExitStatus) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// startProfiling writes CPU and heap profiles to $CRPIPE_PPROF/NAME.{cpu,heap}.pprof.
func startProfiling(name string) func() {
	dir := os.Getenv("CRPIPE_PPROF")
	if dir == "" {
		return func() {}
	}
	cpu, err := os.Create(filepath.Join(dir, name+".cpu.pprof"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: pprof: %v\n", name, err)
		return func() {}
	}
	pprof.StartCPUProfile(cpu)
	return func() {
		pprof.StopCPUProfile()
		cpu.Close()
		if heap, err := os.Create(filepath.Join(dir, name+".heap.pprof")); err == nil {
			pprof.WriteHeapProfile(heap)
			heap.Close()
		}
	}
}

// Output returns the stage's stdout (c's under RunIn; nil c: the
// process's) for a stream, refusing a terminal.
func Output(c *cli.Context) (io.Writer, error) {
	out := streamsOf(c).out
	if isTerminal(out) {
		return nil, Hint(errors.New("refusing to write a binary image stream to a terminal"), "redirect stdout to a file or pipe it into the next stage")
	}
	growPipe(out)
	return out, nil
}

// Input returns the stream to read: FILE when given, else stdin (refusing a terminal).
func Input(path string) (io.ReadCloser, error) {
	if path != "" && path != "-" {
		return os.Open(path)
	}
	return stdinStream(os.Stdin)
}

func stdinStream(in *os.File) (io.ReadCloser, error) {
	if isTerminal(in) {
		return nil, Hint(errors.New("no image stream on stdin (it is a terminal)"), "pipe a stream in, e.g. cr-freeze --pid PID | ..., or give a file")
	}
	growPipe(in)
	return in, nil
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Filter describes a stage that reads a stream, passes every frame through
// unchanged and in order, and appends records of its own before the End frame.
type Filter struct {
	// Observe sees every frame after it has been passed through (optional),
	// except pages frames unless ObservePages is set. Payload is only valid
	// during the call.
	Observe func(f *image.Frame) error
	// ObservePages makes Observe see pages frames too, with their contents.
	// Without it, RunFilter moves the contents of large pages frames from
	// input to output without reading them (image.Reader.DeferPages,
	// SpliceMover): a pass-through stage then costs almost nothing.
	ObservePages bool
	// Finish appends the stage's own records once the input is complete.
	Finish func(w *image.Writer) error
}

// verifyAll is CRPIPE_VERIFY=1: every stage reads and verifies every
// frame, page contents included, instead of moving page contents unread.
func verifyAll() bool { return os.Getenv("CRPIPE_VERIFY") == "1" }

// RunFilter runs a Filter from in to out.
func RunFilter(in io.Reader, out io.Writer, compress bool, fl Filter) error {
	// The header goes out before anything is read (ready.go).
	w, err := image.NewWriter(out, image.WriterOptions{Compress: compress, Donate: donor()})
	if err != nil {
		return err
	}
	if err := AnnounceOutput(w, out, compress); err != nil {
		return fmt.Errorf("output: %w", err)
	}
	r, err := image.NewReader(in)
	headerRead(in)
	if err != nil {
		return fmt.Errorf("input: %w", err)
	}
	if !fl.ObservePages && !verifyAll() {
		r.DeferPages(SpliceMover)
	}
	if pw := newPipeWaiter(in); pw != nil {
		defer pw.close()
		if r.Drained() { // nothing read with the header waits
			pw.awaitFirst(in)
		}
		r.WaitBeforeRead(pw.wait)
	}
	for {
		f, err := r.Next()
		if err != nil {
			return fmt.Errorf("input: %w", err)
		}
		if sig := InterruptSent(); sig != nil {
			return Interrupted(sig, "")
		}
		if f.Type == image.TypeEnd {
			break
		}
		if err := w.Pass(f); err != nil {
			if errors.Is(err, image.ErrTruncated) || errors.Is(err, image.ErrCorrupt) {
				return fmt.Errorf("input: %w", err)
			}
			return fmt.Errorf("output: %w", err)
		}
		if fl.Observe != nil && (fl.ObservePages || f.Type != image.TypePages) {
			if err := fl.Observe(f); err != nil {
				return err
			}
		}
		// What came from upstream goes on as soon as nothing more is at
		// hand, not when the input ends: the stages after this one see a
		// Process record while the ones before them still work on it
		// (cr-pages sets up its VMA iterator as soon as it sees a process
		// worth lending), instead of after the last of them has finished.
		if r.Drained() {
			if err := w.Flush(); err != nil {
				return fmt.Errorf("output: %w", err)
			}
			framesWritten(out)
		}
	}
	if fl.Finish != nil {
		// The frames that came with the End go on too, not behind this
		// stage's own work.
		if err := w.Flush(); err != nil {
			return fmt.Errorf("output: %w", err)
		}
		framesWritten(out)
		if err := fl.Finish(w); err != nil {
			return err
		}
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("output: %w", err)
	}
	return nil
}

// FilterCommand builds the cli.App of a filter stage. build is called with
// the parsed flags and returns the Filter to run.
func FilterCommand(name, usage string, flags []cli.Flag, build func(c *cli.Context) (Filter, error)) *cli.App {
	return &cli.App{
		Name:  name,
		Usage: usage,
		Flags: append(flags, CompressFlag),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return Usagef("unexpected argument %q (the stream comes on stdin)", c.Args().First())
			}
			fl, err := build(c)
			if err != nil {
				return err
			}
			in, err := stdinStream(streamsOf(c).in)
			if err != nil {
				return err
			}
			out, err := Output(c)
			if err != nil {
				return err
			}
			if err := RunFilter(in, out, c.Bool("compress"), fl); err != nil {
				return NeighbourStatus(err)
			}
			if err := EndOutput(c); err != nil {
				return NeighbourStatus(fmt.Errorf("output: %w", err))
			}
			return nil
		},
	}
}

// EndOutput closes the stage's stdout once the stream on it is complete.
// The next stage sees the end of its input at once, not when this process
// has exited: each stage waits for its predecessor's end of file, and a
// Go process takes 1-5 ms to exit (doc/performance.md).
func EndOutput(c *cli.Context) error { return streamsOf(c).out.Close() }
