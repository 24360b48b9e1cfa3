package files

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"crpipe/lib/image"
	"crpipe/lib/internal/par"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
	"crpipe/lib/sys"
)

// entry is one fd of one process.
type entry struct {
	pid  int
	fd   int
	link string // /proc/PID/fd/N
	fi   fdinfo
	info []byte // the whole fdinfo text, for kind-specific lines
	st   fileStat
	pfd  *pb.Fd
	fifo bool     // an FD_PIPE opened by path
	sock sockType // sockets: family, type, protocol
	desc *desc
	// flight: a file in flight in a queued unix message (scm.go), which
	// cr-files' peek installed as fd; names it in messages.
	flight string
}

// fileStat is what cr-files keeps of an fd's stat(2): 48 bytes, not
// Stat_t's 144, for each fd of a dump (tens of thousands in a large tree).
type fileStat struct {
	Dev, Ino, Rdev, Nlink uint64
	Size                  int64
	Mode                  uint32
}

func (e *entry) setKind(k pb.FdKind) { e.pfd.Kind = uint32(k) }
func (e *entry) kind() pb.FdKind     { return pb.FdKind(e.pfd.Kind) }

// kindName names the kind in messages.
func (e *entry) kindName() string {
	if e.fifo {
		return "fifo"
	}
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(e.kind().String(), "FD_")), "_", " ")
}

// desc is one open file description and the fds, in any process of the
// dump, that share it.
type desc struct {
	id   uint64
	fds  []*entry // in dump order; fds[0] is where it is inspected
	rec  *pb.FileDesc
	data []*pb.FileData
	// contents, when set, is read into FileData records after the others
	// as the output is written (a memfd: up to 1 GiB, never held in memory).
	contents     *os.File
	contentsSize int64
}

func (ds *desc) first() *entry { return ds.fds[0] }

// dumper dumps the files of every process of a stream at once, so that
// descriptions and objects shared between processes are found.
type dumper struct {
	opts    Options
	up      *stage.Upstream // ghost files and objects of the stages before
	procs   []*pb.Process
	inTree  map[int]bool
	files   []*pb.Files
	entries []*entry
	descs   []*desc
	pidfds  map[int]int
	objects map[string]uint64 // kernel object key ("pipe:INODE") -> object number
	unix    *unixDump         // sock_diag view, read once when the dump has unix sockets
	ghosts  []ghost           // written after the Files records (ghost.go)
	kept    []*os.File        // fd copies read as the output is written
	mu      sync.Mutex        // pidfds and roots, which the tables read at once share

	roots   map[int]string           // proc.PathRoot of each process, read once
	mcast   map[int][]sys.McastGroup // groups joined in a process's network namespace (inet.go)
	queues  map[uint64][]*peekedMsg  // unix receive queues by socket inode (scm.go)
	flight  []int                    // cr-files' copies of files in flight
	peekBuf []byte                   // for the messages of a unix queue (scm.go)
	// pipeReaders: the first description that can read each pipe, by
	// device and inode (pipe.go), once d.descs is complete.
	pipeReaders map[[2]uint64]*entry
}

func newDumper(procs []*pb.Process) *dumper {
	d := &dumper{opts: defaultOptions, up: &stage.Upstream{}, procs: procs, inTree: map[int]bool{}, pidfds: map[int]int{}, objects: map[string]uint64{}}
	for _, p := range procs {
		d.inTree[int(p.Pid)] = true
	}
	return d
}

func (d *dumper) close() {
	d.closeFlight()
	for _, fd := range d.pidfds {
		unix.Close(fd)
	}
	for _, f := range d.kept {
		f.Close()
	}
}

// pathRoot is proc.PathRoot(pid), read once per process (two readlinks,
// and a process may have thousands of files).
func (d *dumper) pathRoot(pid int) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.roots[pid]
	if !ok {
		if d.roots == nil {
			d.roots = map[int]string{}
		}
		r = proc.PathRoot(pid)
		d.roots[pid] = r
	}
	return r
}

// keep holds f, a copy of an fd, until the output is written.
func (d *dumper) keep(f *os.File) *os.File {
	d.kept = append(d.kept, f)
	return f
}

// dump reads every live process's fd table, groups the fds into open file
// descriptions and dumps the state of each.
func (d *dumper) dump() error {
	live := d.live()
	tables := make([]*pb.Files, len(live))
	entries := make([][]*entry, len(live))
	if err := par.For(len(live), par.Workers(len(live)), func(i int) (err error) {
		tables[i], entries[i], err = d.dumpTable(int(live[i].Pid))
		return err
	}); err != nil {
		return err
	}
	for i, fs := range tables {
		d.files = append(d.files, fs)
		d.entries = append(d.entries, entries[i]...)
		stage.Logf("pid %d: %d fds, cwd %s", fs.Pid, len(fs.Fds), fs.Cwd)
	}
	if err := d.peekQueues(); err != nil {
		return err
	}
	if err := d.group(); err != nil {
		return err
	}
	for _, ds := range d.descs {
		if err := d.dumpDesc(ds); err != nil {
			return ds.first().located(err)
		}
	}
	if err := d.dumpLocks(); err != nil {
		return err
	}
	d.closeFlight()
	return d.checkHolders()
}

// group finds which fds share an open file description: fds of one inode
// sorted by kcmp(KCMP_FILE), whose order is the kernel's order of the file
// structs. Descriptions are numbered from 1 in the order of their first fd.
func (d *dumper) group() error {
	type key struct{ dev, ino uint64 }
	byInode := map[key][]*entry{}
	for _, e := range d.entries {
		k := key{e.st.Dev, e.st.Ino}
		byInode[k] = append(byInode[k], e)
	}
	for _, es := range byInode {
		if len(es) == 1 {
			es[0].desc = &desc{fds: es}
			continue
		}
		var cmpErr error
		sorted := append([]*entry(nil), es...)
		sort.SliceStable(sorted, func(i, j int) bool {
			c, err := sys.KcmpFiles(sorted[i].pid, sorted[i].fd, sorted[j].pid, sorted[j].fd)
			if err != nil && cmpErr == nil {
				cmpErr = fmt.Errorf("pid %d fd %d and pid %d fd %d: %w", sorted[i].pid, sorted[i].fd, sorted[j].pid, sorted[j].fd, err)
			}
			return c < 0
		})
		if cmpErr != nil {
			return stage.Hint(cmpErr, "kcmp needs Linux 3.5 with CONFIG_KCMP (or CONFIG_CHECKPOINT_RESTORE), and cr-files must run as root")
		}
		var cur *desc
		for i, e := range sorted {
			if i > 0 {
				c, err := sys.KcmpFiles(sorted[i-1].pid, sorted[i-1].fd, e.pid, e.fd)
				if err != nil {
					return fmt.Errorf("pid %d fd %d: %w", e.pid, e.fd, err)
				}
				if c != 0 {
					cur = nil
				}
			}
			if cur == nil {
				cur = &desc{}
			}
			e.desc = cur
		}
	}
	// Number in dump order, and keep each description's fds in dump order.
	for _, e := range d.entries {
		ds := e.desc
		if ds.id == 0 {
			ds.id = uint64(len(d.descs) + 1)
			ds.fds = nil
			d.descs = append(d.descs, ds)
		}
		ds.fds = append(ds.fds, e)
		e.pfd.DescId = ds.id
	}
	return nil
}

// object numbers a kernel object by its key, reporting whether it is new.
// Numbers go on from the highest a stage before used (cr-pages numbers the
// ghost files it writes).
func (d *dumper) object(key string) (uint64, bool) {
	if n, ok := d.objects[key]; ok {
		return n, false
	}
	n := d.up.Objects + uint64(len(d.objects)+1)
	d.objects[key] = n
	return n, true
}

// getfd duplicates e's fd into cr-files (pidfd_getfd): the copy shares the
// open file description, so reading its state needs no code in the task.
// The caller closes it.
func (d *dumper) getfd(e *entry) (*os.File, error) {
	pfd, err := d.pidfd(e.pid)
	if err != nil {
		return nil, err
	}
	f, err := sys.PidfdGetfd(pfd, e.fd)
	if err != nil {
		return nil, stage.Hint(fmt.Errorf("pid %d fd %d: %w", e.pid, e.fd, err), "pidfd_getfd needs Linux 5.6 and ptrace access to the process (root)")
	}
	return f, nil
}

// pidfd is a pidfd of pid, opened once.
func (d *dumper) pidfd(pid int) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if pfd, ok := d.pidfds[pid]; ok {
		return pfd, nil
	}
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, procErr(pid, fmt.Errorf("pidfd_open: %w", err))
	}
	d.pidfds[pid] = pfd
	return pfd, nil
}

// live is the processes of the dump but the zombies, which have no files.
func (d *dumper) live() []*pb.Process {
	var live []*pb.Process
	for _, p := range d.procs {
		if p.State != "Z" {
			live = append(live, p)
		}
	}
	return live
}

// dumpDesc records the state of one description of a kind that needs more
// than a path.
func (d *dumper) dumpDesc(ds *desc) error {
	e := ds.first()
	for _, o := range ds.fds[1:] {
		if o.kind() != e.kind() || o.fifo != e.fifo {
			return fmt.Errorf("pid %d fd %d and pid %d fd %d share a description but are of different kinds", e.pid, e.fd, o.pid, o.fd)
		}
	}
	if !restorable[e.kind()] {
		return refuse(e.pid, e.fd, e.kindName(), e.link)
	}
	rec := &pb.FileDesc{Id: ds.id, Kind: e.pfd.Kind, Flags: e.pfd.Flags, Pos: e.fi.pos, Inode: e.st.Ino,
		SocketFilter: e.sock.filter, SocketFilterLocked: e.sock.filterLocked}
	if e.pfd.Flags&unix.O_ASYNC != 0 {
		if err := d.dumpOwner(ds, rec); err != nil { // owner.go
			return stage.Hint(err, "clear O_ASYNC (fcntl F_SETFL) before checkpointing")
		}
	}
	if e.flight != "" { // only in flight: no fd of a process has it, even one reopened by path
		rec.InFlight = e.pfd
		ds.rec = rec
	}
	var err error
	switch e.kind() {
	case pb.FdKind_FD_REGULAR, pb.FdKind_FD_DIRECTORY, pb.FdKind_FD_CHARDEV:
		return nil // reopened by path
	case pb.FdKind_FD_GHOST:
		return d.dumpGhost(ds) // the fd needs no more than its ghost file
	case pb.FdKind_FD_PIPE:
		err = d.dumpPipe(ds, rec)
	case pb.FdKind_FD_EVENTFD:
		err = dumpEventfd(e, rec)
	case pb.FdKind_FD_SIGNALFD:
		err = dumpSignalfd(e, rec)
	case pb.FdKind_FD_TIMERFD:
		err = dumpTimerfd(e, rec)
	case pb.FdKind_FD_PIDFD:
		err = d.dumpPidfd(e, rec)
	case pb.FdKind_FD_INOTIFY:
		err = d.dumpInotify(ds, rec)
	case pb.FdKind_FD_MEMFD:
		err = d.dumpMemfd(ds, rec)
	case pb.FdKind_FD_EPOLL:
		err = d.dumpEpoll(ds, rec)
	case pb.FdKind_FD_UNIX:
		err = d.dumpUnix(ds, rec)
	case pb.FdKind_FD_UDP, pb.FdKind_FD_INET_RAW:
		err = d.dumpInet(ds, rec)
	case pb.FdKind_FD_NETLINK:
		err = d.dumpNetlink(ds, rec)
	case pb.FdKind_FD_TTY:
		err = d.dumpTty(ds, rec)
	case pb.FdKind_FD_DEVTTY:
		err = d.dumpDevTty(ds, rec)
	case pb.FdKind_FD_TCP:
		return nil // cr-tcp's records, by Fd.inode
	default:
		return refuse(e.pid, e.fd, e.kindName(), e.link)
	}
	if err != nil {
		return err
	}
	ds.rec = rec
	return nil
}

// restorable are the kinds cr-restore can restore.
var restorable = map[pb.FdKind]bool{
	pb.FdKind_FD_REGULAR: true, pb.FdKind_FD_DIRECTORY: true, pb.FdKind_FD_CHARDEV: true,
	pb.FdKind_FD_PIPE: true, pb.FdKind_FD_EVENTFD: true, pb.FdKind_FD_SIGNALFD: true, pb.FdKind_FD_TIMERFD: true,
	pb.FdKind_FD_MEMFD: true, pb.FdKind_FD_INOTIFY: true, pb.FdKind_FD_EPOLL: true, pb.FdKind_FD_UNIX: true,
	pb.FdKind_FD_UDP: true, pb.FdKind_FD_INET_RAW: true, pb.FdKind_FD_NETLINK: true,
	pb.FdKind_FD_TCP: true, // cr-tcp records the socket by Fd.inode; cr-restore rebuilds it (lib/restore/tcp_*.go)
	pb.FdKind_FD_TTY: true, pb.FdKind_FD_DEVTTY: true, pb.FdKind_FD_GHOST: true, pb.FdKind_FD_PIDFD: true,
}

// write appends the Files record of every process, the ghost files, then
// each description's record followed by its object's contents.
func (d *dumper) write(w *image.Writer) error {
	for _, fs := range d.files {
		if err := w.WriteMessage(image.TypeFiles, fs); err != nil {
			return fmt.Errorf("output: %w", err)
		}
	}
	if err := d.writeGhosts(w); err != nil {
		return err
	}
	for _, ds := range d.descs {
		if ds.rec == nil {
			continue
		}
		if err := w.WriteMessage(image.TypeFileDesc, ds.rec); err != nil {
			return fmt.Errorf("output: %w", err)
		}
		for _, fd := range ds.data {
			if err := w.WriteMessage(image.TypeFileData, fd); err != nil {
				return fmt.Errorf("output: %w", err)
			}
		}
		if ds.contents != nil {
			kept, err := stage.WriteContents(w, ds.rec.Object, ds.contents, ds.contentsSize)
			if err != nil {
				return cannot(ds.first(), "%v", err)
			}
			stage.Logf("pid %d fd %d: %d bytes, %d kept", ds.first().pid, ds.first().fd, ds.contentsSize, kept)
		}
	}
	return nil
}

// holderCheck is an object whose every holder must be in the dump: a pipe
// (or FIFO) another process also holds would be split in two by a restore,
// and so would a ghost file (the restore's is a copy).
type holderCheck struct {
	link string // the /proc/PID/fd link that names it
	dev  uint64 // a FIFO or ghost file: its inode, for links that are paths
	ino  uint64
	e    *entry
}

// checkHolders looks through every other process's fds for the objects that
// must not be shared with a process outside the dump.
func (d *dumper) checkHolders() error {
	var checks []holderCheck
	for _, ds := range d.descs {
		e := ds.first()
		if e.kind() == pb.FdKind_FD_PIPE || e.kind() == pb.FdKind_FD_GHOST {
			checks = append(checks, holderCheck{link: e.link, dev: e.st.Dev, ino: e.st.Ino, e: e})
		}
	}
	if len(checks) == 0 {
		return nil
	}
	byLink := map[string]int{}
	for i := range checks {
		byLink[checks[i].link] = i
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	// Report the first object in dump order, whatever the order of /proc.
	found, foundPid, foundFd := len(checks), 0, ""
	// cr-files itself is not skipped (its copies of pipes are closed by
	// now), except for the copies it keeps to read as it writes.
	kept := map[string]bool{}
	for _, f := range d.kept {
		kept[procPath(os.Getpid(), "fd", strconv.Itoa(int(f.Fd())))] = true
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || d.inTree[pid] {
			continue
		}
		fds, err := os.ReadDir(procPath(pid, "fd"))
		if err != nil {
			continue // gone, or a kernel thread
		}
		for _, fd := range fds {
			if kept[procPath(pid, "fd", fd.Name())] {
				continue
			}
			link, err := os.Readlink(procPath(pid, "fd", fd.Name()))
			if err != nil {
				continue
			}
			i, ok := byLink[link]
			if !ok || i >= found {
				continue
			}
			c := &checks[i]
			if c.e.fifo || c.e.kind() == pb.FdKind_FD_GHOST {
				var st unix.Stat_t
				if unix.Stat(procPath(pid, "fd", fd.Name()), &st) != nil || st.Dev != c.dev || st.Ino != c.ino {
					continue
				}
			}
			found, foundPid, foundFd = i, pid, fd.Name()
		}
	}
	if found < len(checks) {
		comm, _ := os.ReadFile(procPath(foundPid, "comm"))
		return stage.Hint(cannot(checks[found].e, "also open as fd %s of pid %d (%s), which is not in the dump", foundFd, foundPid, strings.TrimSpace(string(comm))),
			"dump the process tree that holds it everywhere (e.g. from their common parent), or let the program close it first")
	}
	return nil
}
