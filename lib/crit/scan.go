package crit

import (
	"fmt"
	"io"
	"strings"

	"crpipe/lib/image"
	"crpipe/lib/pb"
)

// pageRun is a range of dumped pages of one process.
type pageRun struct {
	addr  uint64
	pages uint64
}

// proc is what a stream says about one process.
type proc struct {
	pid     uint32
	process *pb.Process
	mms     []*pb.Mm
	files   []*pb.Files
	threads []*pb.ThreadCore
	states  []*pb.TaskState
	runs    []pageRun
}

// stream is what a whole stream says, for show and check.
type stream struct {
	hdr        image.Header
	lz4        bool
	inventory  []*pb.Inventory
	freeze     []*pb.Freeze
	procs      []*proc
	byPid      map[uint32]*proc
	types      []image.Type // in order of first appearance
	perType    map[image.Type]uint64
	frames     uint64
	pageFrames uint64
	pageBytes  uint64
	end        *pb.End
	tcp        tcpRecords
	files      fileRecords
}

func (s *stream) proc(pid uint32) *proc {
	p := s.byPid[pid]
	if p == nil {
		p = &proc{pid: pid}
		s.byPid[pid] = p
		s.procs = append(s.procs, p)
	}
	return p
}

// scan reads a whole stream, decoding every metadata frame. With keep it
// also keeps the records for show (page contents are never kept). On
// damage it returns what it read before, with the error.
func scan(in io.Reader, keep bool) (*stream, error) {
	s := &stream{byPid: map[uint32]*proc{}, perType: map[image.Type]uint64{}}
	r, err := image.NewReader(in)
	if err != nil {
		return s, err
	}
	s.hdr = image.Header{Major: r.Major, Minor: r.Minor, Flags: r.HdrFlags}
	s.lz4 = r.Compressed
	for {
		f, err := r.Next()
		if err == io.EOF {
			s.end = r.End()
			return s, nil
		}
		if err != nil {
			return s, err
		}
		if f.Type == image.TypeEnd {
			continue
		}
		s.frames++
		if s.perType[f.Type] == 0 {
			s.types = append(s.types, f.Type)
		}
		s.perType[f.Type]++
		if f.Type == image.TypePages {
			h, data, err := f.Pages()
			if err != nil {
				return s, err
			}
			s.pageFrames++
			s.pageBytes += uint64(len(data))
			if keep {
				p := s.proc(h.Pid)
				n := uint64(len(data) / image.PageSize)
				if k := len(p.runs) - 1; k >= 0 && p.runs[k].addr+p.runs[k].pages*image.PageSize == h.Addr {
					p.runs[k].pages += n
				} else if n > 0 {
					p.runs = append(p.runs, pageRun{h.Addr, n})
				}
			}
			continue
		}
		m := newMessage(f.Type)
		if m == nil {
			continue // unknown type: nothing to decode
		}
		if err := image.Unmarshal(f, m); err != nil {
			return s, err
		}
		if keep {
			s.add(m)
		}
	}
}

func (s *stream) add(m pb.Message) {
	switch m := m.(type) {
	case *pb.Inventory:
		s.inventory = append(s.inventory, m)
	case *pb.Freeze:
		s.freeze = append(s.freeze, m)
	case *pb.Process:
		p := s.proc(m.Pid)
		p.process = m
	case *pb.ThreadCore:
		p := s.proc(m.Pid)
		p.threads = append(p.threads, m)
	case *pb.TaskState:
		p := s.proc(m.Pid)
		p.states = append(p.states, m)
	case *pb.Mm:
		p := s.proc(m.Pid)
		p.mms = append(p.mms, m)
	case *pb.Files:
		p := s.proc(m.Pid)
		p.files = append(p.files, m)
	default:
		s.tcp.add(m)
		s.files.add(m)
	}
}

// typeCounts is "1 inventory, 3 pages, ..." in order of first appearance.
func (s *stream) typeCounts() string {
	var b []string
	for _, t := range s.types {
		b = append(b, fmt.Sprintf("%d %s", s.perType[t], t))
	}
	return strings.Join(b, ", ")
}

func (s *stream) version() string {
	v := fmt.Sprintf("stream %d.%d", s.hdr.Major, s.hdr.Minor)
	if s.hdr.Flags != 0 {
		v += fmt.Sprintf(" (header flags %#x)", s.hdr.Flags)
	}
	if s.lz4 {
		v += ", lz4-compressed"
	} else {
		v += ", not compressed"
	}
	return v
}

// Check reads the whole stream: structure, checksums, End counts, and that
// every metadata frame decodes. It returns a one-line summary.
func Check(in io.Reader) (string, error) {
	s, err := scan(in, false)
	if err != nil {
		return "", err
	}
	sum := fmt.Sprintf("ok: %s, %d frames", s.version(), s.frames)
	if s.frames > 0 {
		sum += " (" + s.typeCounts() + ")"
	}
	sum += fmt.Sprintf(", %s of pages; end counts match", size(s.pageBytes))
	return sum, nil
}
