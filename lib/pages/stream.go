package pages

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/inject"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// processVMReadv is replaced by tests to provoke short reads.
var processVMReadv = unix.ProcessVMReadv

// piece is one contiguous range of a batch's buffer: it becomes one page frame.
type piece struct {
	addr uint64
	off  int // in the batch buffer
	n    int // bytes
	vma  uint32
	mem  bool   // read through /proc/PID/mem: the VMA is not readable, or the pages are shared
	zero bool   // pages of zeros are left out (private anonymous memory)
	sum  uint32 // the frame's checksum, computed by the reader
}

type batch struct {
	pid    int
	buf    []byte
	pieces []piece // the ranges read; once ready, the frames to write
	used   int
	zeros  int // pages of zeros left out
	err    error
	ready  chan struct{} // closed once a copier has read the batch (or err is set)
}

// item is what the writer takes, in stream order: a process's start (its
// Mm record), a batch of its page frames, its end, or an error.
type item struct {
	start *prepared
	b     *batch
	lent  *lentBatch
	end   *prepared
	err   error
}

// lentBatch is a run of pages a process lends (lend.go) instead of their
// being copied.
type lentBatch struct {
	pid     int
	runs    []inject.LendRun
	lastVma uint32 // of the last run
	last    bool   // the process's last: its lender is then taken out
	// Set by lenders.start or lenders.lend, on the lenders' thread:
	started chan struct{} // closed once started (start only)
	g       *inject.Lending
	pipe    *os.File // the lender's
	err     error
}

var errStopped = errors.New("stopped")

// reader assigns runs to batches in a goroutine of its own, and hands each
// full batch to the copiers (work) and, in order, to the writer (order).
type reader struct {
	pid     int
	lend    bool   // the process lends its private anonymous pages
	keepOut uint64 // a page that is copied all the same (lend.go)
	ls      *lenders
	lent    *lentBatch
	lentOut bool // the process's first lent batch is out
	vmas    []vma
	free    <-chan *batch
	work    chan<- *batch
	order   chan<- item
	done    <-chan struct{}
	cur     *batch
}

// copier reads batches' pages from the process: several run at once, one
// per core (up to maxCopiers), because the copy is the bulk of a dump.
type copier struct {
	pid    int
	mem    *os.File
	remote []unix.RemoteIovec
	sub    []piece // the pieces of one window
	out    []piece // the frames of a batch
	sums   []image.PagesSummer
}

// lendable: r is lent when its process lends: private anonymous memory,
// readable, and long enough to be worth a frame of the lender.
func lendable(v *vma, r run) bool {
	return v.scan == scanAnon && v.m.Read && uint64(r.pages)*image.PageSize >= lendMinRun
}

func (rd *reader) add(r run) error {
	start, left := r.start, uint64(r.pages)*image.PageSize
	viaMem := !rd.vmas[r.vma].m.Read || r.shared
	// A page of zeros of private anonymous memory need not be in the
	// image: the restored mapping reads zeros where nothing was written.
	// (Not in a private file mapping, where it would read as the file's
	// bytes, nor in shared memory.)
	zero := rd.vmas[r.vma].scan == scanAnon
	if !rd.lend || !lendable(&rd.vmas[r.vma], r) || r.shared {
		return rd.addCopied(start, left, r.vma, viaMem, zero)
	}
	if p := rd.keepOut; p >= start && p < start+left {
		// The page the kernel writes while the lender runs (its thread's
		// rseq area) is copied: lent, it could change between the
		// checksum and the read. Through /proc/PID/mem: whether it is
		// shared since fork was not looked up (sharing.go).
		if err := rd.addLent(start, p-start, r.vma); err != nil {
			return err
		}
		if err := rd.addCopied(p, image.PageSize, r.vma, true, zero); err != nil {
			return err
		}
		left -= p + image.PageSize - start
		start = p + image.PageSize
	}
	return rd.addLent(start, left, r.vma)
}

// addCopied adds the range [start, start+left) of VMA vma to the batches
// to copy.
func (rd *reader) addCopied(start, left uint64, vma uint32, viaMem, zero bool) error {
	for left > 0 {
		if rd.cur == nil {
			select {
			case b := <-rd.free:
				b.pid, b.pieces, b.used, b.zeros, b.err = rd.pid, b.pieces[:0], 0, 0, nil
				rd.cur = b
			case <-rd.done:
				return errStopped
			}
		}
		b := rd.cur
		space := uint64(len(b.buf) - b.used)
		if space == 0 || len(b.pieces) == batchMaxPieces {
			if err := rd.flushCopied(); err != nil {
				return err
			}
			continue
		}
		n := min(space, left)
		if k := len(b.pieces) - 1; k >= 0 && b.pieces[k].vma == vma && b.pieces[k].mem == viaMem && b.pieces[k].addr+uint64(b.pieces[k].n) == start {
			b.pieces[k].n += int(n)
		} else {
			b.pieces = append(b.pieces, piece{addr: start, off: b.used, n: int(n), vma: vma, mem: viaMem, zero: zero})
		}
		b.used += int(n)
		start += n
		left -= n
	}
	return nil
}

// addLent adds a run to the lent batch. A process's lent runs go out
// together, after its copied frames (frames need not come in address
// order): one run of the lender per process, not one per stretch of
// lendable memory between copied ones.
func (rd *reader) addLent(start, n uint64, vma uint32) error {
	if n == 0 {
		return nil
	}
	if rd.lent != nil && len(rd.lent.runs) == inject.MaxLendRuns {
		if err := rd.flushLent(false); err != nil {
			return err
		}
	}
	if rd.lent == nil {
		rd.lent = &lentBatch{pid: rd.pid}
	}
	// A frame never spans two VMAs: runs of different ones stay apart.
	if k := len(rd.lent.runs) - 1; k >= 0 && rd.lent.lastVma == vma && rd.lent.runs[k].Addr+rd.lent.runs[k].Len == start {
		rd.lent.runs[k].Len += n
	} else {
		rd.lent.runs = append(rd.lent.runs, inject.LendRun{Addr: start, Len: n, Zero: true})
	}
	rd.lent.lastVma = vma
	return nil
}

// flushLent hands the lent batch to the writer; last when it is the
// process's last (its lender can go).
func (rd *reader) flushLent(last bool) error {
	if rd.lent == nil {
		if last && rd.lend {
			// The lender goes, even with nothing lent.
			rd.lent = &lentBatch{pid: rd.pid}
		} else {
			return nil
		}
	}
	rd.lent.last = last
	if !rd.lentOut {
		rd.ls.start(rd.lent)
		rd.lentOut = true
	}
	select {
	case rd.order <- item{lent: rd.lent}:
		rd.lent = nil
		return nil
	case <-rd.done:
		return errStopped
	}
}

// flush hands on what is gathered at the end of a process: the copied
// batch, then the lent one.
func (rd *reader) flush() error {
	if err := rd.flushCopied(); err != nil {
		return err
	}
	return rd.flushLent(true)
}

// flushCopied hands the current batch to the copiers and the writer.
func (rd *reader) flushCopied() error {
	b := rd.cur
	if b == nil || len(b.pieces) == 0 {
		return nil
	}
	rd.cur = nil
	b.ready = make(chan struct{})
	select {
	case rd.order <- item{b: b}:
	case <-rd.done:
		return errStopped
	}
	select {
	case rd.work <- b:
		return nil
	case <-rd.done:
		return errStopped
	}
}

// sumWindow: the batch is read and checksummed this many bytes at a time,
// each piece just after its copy, on the copier's core. (Meant to find the
// bytes in the CPU's cache; on the machines measured the kernel's large
// copies bypass it, and windows of 16 KiB to 4 MiB cost the same. Moving
// the checksum from the writer to the copiers is what paid: the copiers
// run on every core.)
const sumWindow = 256 << 10

// readSummed fills b.buf window by window, leaves out the pages of zeros
// that need not be dumped, and makes b.pieces the frames to write, each
// with its checksum computed as it goes.
func (rd *copier) readSummed(b *batch) error {
	rd.out, rd.sums = rd.out[:0], rd.sums[:0]
	first := 0 // the first piece not yet read completely
	for ws := 0; ws < b.used; ws += sumWindow {
		we := min(ws+sumWindow, b.used)
		rd.sub = rd.sub[:0]
		for k := first; k < len(b.pieces) && b.pieces[k].off < we; k++ {
			p := b.pieces[k]
			lo, hi := max(p.off, ws), min(p.off+p.n, we)
			rd.sub = append(rd.sub, piece{addr: p.addr + uint64(lo-p.off), off: lo, n: hi - lo, mem: p.mem})
		}
		if err := rd.read(b.buf, rd.sub); err != nil {
			return err
		}
		for k := first; k < len(b.pieces) && b.pieces[k].off < we; k++ {
			p := &b.pieces[k]
			lo, hi := max(p.off, ws), min(p.off+p.n, we)
			for lo < hi {
				keep := hi
				if p.zero {
					keep = lo
					for keep < hi && !zeroPage(b.buf[keep:keep+image.PageSize]) {
						keep += image.PageSize
					}
				}
				if keep > lo {
					rd.keep(b.buf, p, lo, keep)
				}
				lo = keep
				for lo < hi && zeroPage(b.buf[lo:lo+image.PageSize]) {
					lo += image.PageSize
					b.zeros++
				}
			}
			if hi == p.off+p.n {
				first = k + 1
			}
		}
	}
	for i := range rd.out {
		rd.out[i].sum = rd.sums[i].Sum(image.PagesHeader{Pid: uint32(b.pid), Addr: rd.out[i].addr})
	}
	b.pieces, rd.out = rd.out, b.pieces
	return nil
}

// keep adds buf[lo:hi], a part of piece p, to the frames of the batch: to
// the last one when it ends where the part starts, else as a new one.
func (rd *copier) keep(buf []byte, p *piece, lo, hi int) {
	addr := p.addr + uint64(lo-p.off)
	if k := len(rd.out) - 1; k >= 0 && rd.out[k].vma == p.vma && rd.out[k].off+rd.out[k].n == lo && rd.out[k].addr+uint64(rd.out[k].n) == addr {
		rd.out[k].n += hi - lo
		rd.sums[k].Add(buf[lo:hi])
		return
	}
	rd.out = append(rd.out, piece{addr: addr, off: lo, n: hi - lo, vma: p.vma})
	rd.sums = append(rd.sums, image.PagesSummer{})
	rd.sums[len(rd.sums)-1].Add(buf[lo:hi])
}

// zeroPage reports whether page is all zeros. Memory in use rarely starts
// a page with a zero word, so on such memory this costs one load per page
// (and the CRC that follows finds that cache line loaded).
func zeroPage(page []byte) bool {
	if binary.NativeEndian.Uint64(page) != 0 {
		return false
	}
	return bytes.Equal(page, zeros[:])
}

var zeros [image.PageSize]byte

// read fills buf for pieces: runs of readable pieces with one
// process_vm_readv each (a single local iovec, up to iovMax remote ones),
// the rest through /proc/PID/mem, which reads any page the process could be
// made to read (PROT_NONE included).
func (rd *copier) read(buf []byte, ps []piece) error {
	for i := 0; i < len(ps); {
		if ps[i].mem {
			if err := rd.readMem(ps[i].addr, buf[ps[i].off:ps[i].off+ps[i].n]); err != nil {
				return err
			}
			i++
			continue
		}
		j := i
		rd.remote = rd.remote[:0]
		for j < len(ps) && !ps[j].mem {
			rd.remote = append(rd.remote, unix.RemoteIovec{Base: uintptr(ps[j].addr), Len: ps[j].n})
			j++
		}
		lo, hi := ps[i].off, ps[j-1].off+ps[j-1].n
		local := []unix.Iovec{{Base: &buf[lo], Len: uint64(hi - lo)}}
		n, err := processVMReadv(rd.pid, local, rd.remote, 0)
		if err == unix.ESRCH {
			return fmt.Errorf("pid %d: process is gone while its pages were read", rd.pid)
		}
		if n == hi-lo {
			i = j
			continue
		}
		// A short read stops inside one piece: read the rest of that piece
		// through /proc/PID/mem, then go on after it.
		if n < 0 {
			n = 0
		}
		k := i
		for n >= ps[k].n {
			n -= ps[k].n
			k++
		}
		p := ps[k]
		if err := rd.readMem(p.addr+uint64(n), buf[p.off+n:p.off+p.n]); err != nil {
			return err
		}
		i = k + 1
	}
	return nil
}

func (rd *copier) readMem(addr uint64, dst []byte) error {
	if rd.mem == nil {
		f, err := sys.Open(fmt.Sprintf("/proc/%d/mem", rd.pid), unix.O_RDONLY)
		if err != nil {
			return fmt.Errorf("pid %d: %w", rd.pid, err)
		}
		rd.mem = f
	}
	for len(dst) > 0 {
		n, err := rd.mem.ReadAt(dst, int64(addr))
		if n == 0 && err != nil {
			return fmt.Errorf("pid %d: reading memory at %#x: %w", rd.pid, addr, err)
		}
		dst = dst[n:]
		addr += uint64(n)
	}
	return nil
}

// stream writes each process's Mm record and page frames. Preparing the
// processes and assigning their runs to batches (a goroutine), copying and
// checksumming batches (copiers, one per core) and writing (this
// goroutine) overlap, also from one process to the next.
func stream(w *image.Writer, procs []*pb.Process, gh *ghosts, ls *lenders, fast func() *proc.FastVmFlags, done func(*pb.Process, Stats)) (err error) {
	copiers, nbuf := copierCount()
	free := make(chan *batch, nbuf)
	work := make(chan *batch, nbuf)
	order := make(chan item, 2*nbuf)
	stop := make(chan struct{})
	bufs, release, err := buffers(nbuf)
	if err != nil {
		return err
	}
	defer release()
	for _, buf := range bufs {
		free <- &batch{buf: buf, pieces: make([]piece, 0, iovMax)}
	}
	var wg sync.WaitGroup
	for range copiers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &copier{remote: make([]unix.RemoteIovec, 0, iovMax)}
			defer c.closeMem()
			for {
				select {
				case b, ok := <-work:
					if !ok {
						return
					}
					if c.pid != b.pid {
						c.closeMem()
						c.pid = b.pid
					}
					b.err = c.readSummed(b)
					close(b.ready)
				case <-stop:
					return
				}
			}
		}()
	}
	send := func(it item) bool {
		select {
		case order <- it:
			return true
		case <-stop:
			return false
		}
	}
	rd := &reader{free: free, work: work, order: order, done: stop, ls: ls}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(order)
		defer close(work)
		inDump := map[uint32]bool{}
		for _, p := range procs {
			inDump[p.Pid] = true
		}
		parents, objects := newParentVmas(procs, inDump), sharedObjects{}
		var fastFlags *proc.FastVmFlags // nil: smaps
		if fast != nil {
			fastFlags = fast()
		}
		for _, p := range procs {
			parent := 0
			if inDump[p.Ppid] {
				parent = int(p.Ppid)
			}
			lending := ls.wants(int(p.Pid))
			pr, err := prepare(p, parent, lending, parents, objects, fastFlags)
			if err == nil {
				rd.lend, rd.keepOut, err = ls.begin(pr.pid)
				if err != nil || lending && !rd.lend {
					pr.close()
				}
				if err == nil && lending && !rd.lend {
					// It refused the lender: its pages are copied, and
					// which are shared must be known after all.
					pr, err = prepare(p, parent, false, parents, objects, nil)
				}
			}
			if err == nil {
				if !send(item{start: pr}) {
					pr.close()
					return
				}
				rd.pid, rd.vmas, rd.lentOut = pr.pid, pr.vmas, false
				err = pr.source(rd.add)
				if err == nil {
					err = rd.flush()
				}
				pr.close()
			}
			if err == errStopped {
				return
			}
			if err != nil {
				send(item{err: err})
				return
			}
			if !send(item{end: pr}) {
				return
			}
		}
	}()
	defer func() {
		// On failure stop the others and wait for them before the buffers go.
		if err != nil {
			close(stop)
		}
		wg.Wait()
	}()
	var cur *prepared
	var prog *stage.Progress
	var written uint64
	defer func() { prog.Done() }()
	for it := range order {
		// Run in cr-dump's process, nothing else stops this loop when
		// cr-dump stops its stages (a process would die of SIGTERM).
		if sig := stage.InterruptSent(); sig != nil {
			return stage.Interrupted(sig, "")
		}
		switch {
		case it.err != nil:
			return it.err
		case it.start != nil:
			cur, written = it.start, 0
			if err := gh.write(w, cur); err != nil { // the deleted files it maps (ghost.go)
				return err
			}
			if err := w.WriteFrame(image.TypeMm, 0, cur.mm); err != nil {
				return fmt.Errorf("output: %w", err)
			}
			prog = stage.NewProgress(fmt.Sprintf("pid %d", cur.pid), int64(cur.stats.Pages)*image.PageSize)
		case it.end != nil:
			prog.Done()
			prog = nil
			if written+cur.stats.Zero != cur.stats.Pages {
				return fmt.Errorf("pid %d: %d pages counted, %d written and %d of zeros left out: its memory changed while frozen", cur.pid, cur.stats.Pages, written, cur.stats.Zero)
			}
			cur.stats.Elapsed = time.Since(cur.t0)
			if done != nil {
				done(cur.p, cur.stats)
			}
		case it.lent != nil:
			zeros, err := ls.write(w, it.lent, func(n uint64) {
				written += n / image.PageSize
				cur.stats.Frames++
				prog.Add(int64(n))
			})
			if err != nil {
				return err
			}
			cur.stats.Zero += zeros
			prog.Add(int64(zeros) * image.PageSize)
		case it.b != nil:
			b := it.b
			<-b.ready
			if b.err != nil {
				return b.err
			}
			cur.stats.Zero += uint64(b.zeros)
			prog.Add(int64(b.zeros) * image.PageSize)
			donated := false
			for _, p := range b.pieces {
				// The buffers are our own mapping: the writer may give their
				// pages to the output pipe instead of copying them.
				given, err := w.WritePagesSummed(image.PagesHeader{Pid: uint32(b.pid), Addr: p.addr}, b.buf[p.off:p.off+p.n], p.sum, true)
				if err != nil {
					return fmt.Errorf("output: %w", err)
				}
				donated = donated || given
				written += uint64(p.n / image.PageSize)
				cur.stats.Frames++
				prog.Add(int64(p.n))
			}
			if donated {
				// The output pipe refers to the buffer's pages: drop them
				// (whole huge pages, which keeps them whole) and fault fresh
				// ones in here, so that the next copy into the buffer does
				// not stop to (zeroing runs on this core, beside the copies).
				used := b.buf[:min(len(b.buf), (b.used+sys.HugePage-1)&^(sys.HugePage-1))]
				if err := unix.Madvise(used, unix.MADV_DONTNEED); err != nil {
					return fmt.Errorf("dropping pages given to the output: %w", err)
				}
				unix.Madvise(used, unix.MADV_POPULATE_WRITE)
			}
			free <- b
		}
	}
	return nil
}

func (c *copier) closeMem() {
	if c.mem != nil {
		c.mem.Close()
		c.mem = nil
	}
}

// copierCount is how many copiers a stream runs (one per core), and
// how many buffers they take turns with.
func copierCount() (copiers, buffers int) {
	copiers = min(runtime.GOMAXPROCS(0), maxCopiers)
	return copiers, copiers + 1
}

// WarmBuffers maps the read buffers ahead and faults in the huge page
// the first batch is read into (sys.WarmHuge), for a stage to run while
// the stages of its pipeline start, before the tree is frozen: the first
// batch of a dump met a cold huge page in 4 of 12 dumps of the tiny
// counter (its 1.2 MiB read in 5-7.5 ms instead of 0.5-1.1;
// doc/performance.md 85). Concurrent use is safe: a stream waits for it,
// and populating writes nothing.
func WarmBuffers() {
	bufCache.Lock()
	defer bufCache.Unlock()
	if bufCache.bufs != nil || bufCache.inUse {
		return
	}
	_, n := copierCount()
	bufs, release, err := allocBuffers(n, bufSize)
	if err != nil {
		return // the stream says why
	}
	bufCache.bufs, bufCache.release = bufs, release
	sys.WarmHuge(bufs[0][:sys.HugePage])
}

// bufCache keeps the read buffers from one process to the next: a tree of
// many small processes would otherwise fault in (and zero) a fresh set of
// buffers for each, as much memory again as it dumps.
var bufCache struct {
	sync.Mutex
	bufs    [][]byte
	release func()
	inUse   bool
}

// buffers returns n read buffers, reused when a previous dump left them.
func buffers(n int) ([][]byte, func(), error) {
	bufCache.Lock()
	defer bufCache.Unlock()
	if bufCache.inUse || len(bufCache.bufs) != n {
		if bufCache.inUse {
			return allocBuffers(n, bufSize) // concurrent dumps (tests)
		}
		bufs, release, err := allocBuffers(n, bufSize)
		if err != nil {
			return nil, nil, err
		}
		if bufCache.release != nil {
			bufCache.release()
		}
		bufCache.bufs, bufCache.release = bufs, release
	}
	bufCache.inUse = true
	return bufCache.bufs, func() {
		bufCache.Lock()
		bufCache.inUse = false
		bufCache.Unlock()
	}, nil
}

// allocBuffers maps the read buffers outside the Go heap: they are reused
// for the whole dump, never scanned by the GC, and released at once. They
// are aligned to and asking for transparent huge pages: when the writer
// gives their pages to the output pipe (image.Writer.WritePagesSummed),
// refilling a buffer faults in fresh pages, and a fresh 2 MiB page costs a
// fifth of what 512 fresh 4 KiB pages do (doc/performance.md).
func allocBuffers(n, size int) ([][]byte, func(), error) {
	all, unmap, err := sys.MapHugeAligned(n * size)
	if err != nil {
		return nil, nil, fmt.Errorf("read buffers: %w", err)
	}
	unix.Madvise(all, unix.MADV_HUGEPAGE) // best effort
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = all[i*size : (i+1)*size : (i+1)*size]
	}
	return bufs, unmap, nil
}
