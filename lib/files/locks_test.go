package files

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/proc"
	"crpipe/lib/stage"
)

func TestParseLockLine(t *testing.T) {
	for _, c := range []struct {
		in   string
		want lockLine
	}{
		{"\t1: POSIX  ADVISORY  WRITE 14504 fe:00:9986145 10 29", lockLine{class: "POSIX", mode: "ADVISORY", write: true, pid: 14504, inode: "fe:00:9986145", start: 10, end: 29}},
		{"2: OFDLCK ADVISORY  READ -1 fe:00:9986145 50 EOF", lockLine{class: "OFDLCK", mode: "ADVISORY", pid: -1, inode: "fe:00:9986145", start: 50, end: -1}},
		{"5: FLOCK  ADVISORY  READ 14504 fe:00:9986099 0 EOF", lockLine{class: "FLOCK", mode: "ADVISORY", pid: 14504, inode: "fe:00:9986099", end: -1}},
		{"1: LEASE  ACTIVE    READ 7 fe:00:12 0 EOF", lockLine{class: "LEASE", mode: "ACTIVE", pid: 7, inode: "fe:00:12", end: -1}},
	} {
		got, err := parseLockLine(c.in)
		if err != nil || got != c.want {
			t.Errorf("parseLockLine(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "1: POSIX ADVISORY WRITE 1 fe:00:1 10", "1: POSIX ADVISORY BOTH 1 fe:00:1 0 EOF",
		"1: POSIX ADVISORY WRITE x fe:00:1 0 EOF", "1: POSIX ADVISORY WRITE 1 fe:00:1 10 9", "1: POSIX ADVISORY WRITE 1 fe:00:1 -1 EOF",
		"3: -> POSIX  ADVISORY  WRITE 14505 fe:00:9986145 0 EOF"} {
		if l, err := parseLockLine(bad); err == nil {
			t.Errorf("parseLockLine(%q) = %+v, want an error", bad, l)
		}
	}
	if err := refuseLease(1, 5, "/f", []byte("pos:\t0\nlock:\t1: LEASE  BREAKING  UNLCK 7 fe:00:12 0 EOF\n")); err == nil {
		t.Error("a lease is not refused")
	}
	if err := refuseLease(1, 5, "/f", []byte("pos:\t0\nlock:\t1: FLOCK  ADVISORY  WRITE 7 fe:00:12 0 EOF\n")); err != nil {
		t.Errorf("a flock is refused as a lease: %v", err)
	}
}

func FuzzParseLockLine(f *testing.F) {
	f.Add("\t1: POSIX  ADVISORY  WRITE 14504 fe:00:9986145 10 29")
	f.Add("3: -> OFDLCK ADVISORY  READ -1 fe:00:9986145 0 EOF")
	f.Fuzz(func(t *testing.T, s string) {
		if l, err := parseLockLine(s); err == nil && (l.start < 0 || l.end < -1 || l.end >= 0 && l.end < l.start) {
			t.Errorf("%q: accepted range %d-%d", s, l.start, l.end)
		}
	})
}

// TestMappedLock: a flock or OFD lock whose fd was closed, held only
// through a shared mapping of the file, is recorded in the Files record
// with the mapping's address when the stream has the mapping (cr-pages'
// Mm record), for a restore to take it on the description it maps the
// file with.
func TestMappedLock(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, c := range []struct {
		extra string
		want  *pb.FileLock
	}{
		{"maplock", &pb.FileLock{Kind: uint32(pb.FileLockKind_LOCK_FLOCK), Write: true}},
		{"mapofd", &pb.FileLock{Kind: uint32(pb.FileLockKind_LOCK_OFD), Write: true, Length: 100}},
	} {
		t.Run(c.extra, func(t *testing.T) {
			dir, err := filepath.EvalSymlinks(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			pid, fds := startFdtest(t, dir, c.extra)
			maps, err := proc.ReadMaps(pid)
			if err != nil {
				t.Fatal(err)
			}
			mm := &pb.Mm{Pid: uint32(pid)}
			for _, m := range maps {
				if m.Start == uint64(fds[c.extra]) {
					mm.Vmas = append(mm.Vmas, &pb.Vma{Start: m.Start, End: m.End, Path: m.Path, Kind: uint32(pb.VmaKind_VMA_FILE_SHARED),
						Dev: unix.Mkdev(m.Major, m.Minor), Inode: m.Inode})
				}
			}
			if len(mm.Vmas) != 1 {
				t.Fatalf("no mapping at %#x in pid %d's maps", fds[c.extra], pid)
			}
			var in, out bytes.Buffer
			w, _ := image.NewWriter(&in, image.WriterOptions{})
			w.WriteMessage(image.TypeProcess, &pb.Process{Pid: uint32(pid)})
			w.WriteMessage(image.TypeMm, mm)
			w.Close()
			if err := stage.RunFilter(&in, &out, false, Filter()); err != nil {
				t.Fatal(err)
			}
			want := c.want
			want.VmaStart = mm.Vmas[0].Start
			var got []*pb.FileLock
			rd, err := image.NewReader(&out)
			if err != nil {
				t.Fatal(err)
			}
			for {
				f, err := rd.Next()
				if err != nil {
					break
				}
				var fs pb.Files
				if f.Type == image.TypeFiles && image.Unmarshal(f, &fs) == nil && fs.Pid == uint32(pid) {
					got = fs.Locks
				}
			}
			if len(got) != 1 || !proto.Equal(got[0], want) {
				t.Fatalf("locks of pid %d: %v; want %v", pid, got, want)
			}
			// Without the Mm record, nothing shows the lock (the stream of
			// a pipeline without cr-pages).
			if fs, err := runFilter(t, pid); err != nil {
				t.Errorf("without the mapping: %v", err)
			} else if len(fs.Locks) != 0 {
				t.Errorf("without the mapping: locks %v", fs.Locks)
			}
		})
	}
}

// observe keeps the shared file mappings of an Mm record and nothing
// else, as a whole decode would, and refuses a damaged record.
func TestObserveSharedMappings(t *testing.T) {
	mm := &pb.Mm{Pid: 42, Vmas: []*pb.Vma{
		{Start: 0x1000, End: 0x2000},
		{Start: 0x2000, End: 0x3000, Kind: uint32(pb.VmaKind_VMA_FILE_SHARED), Path: "/f", Dev: 3, Inode: 7},
		{Start: 0x3000, End: 0x4000, Kind: uint32(pb.VmaKind_VMA_FILE_PRIVATE), Path: "/g", Dev: 3, Inode: 8},
		{Start: 0x5000, End: 0x6000, Kind: uint32(pb.VmaKind_VMA_FILE_SHARED), Path: "/h", Dev: 4, Inode: 9},
	}}
	b, err := proto.Marshal(mm)
	if err != nil {
		t.Fatal(err)
	}
	var sm sharedMappings
	if err := sm.observe(&image.Frame{Type: image.TypeMm, Payload: b}); err != nil {
		t.Fatal(err)
	}
	want := sharedMappings{{42, 0x2000, 0x3000, "/f", 3, 7}, {42, 0x5000, 0x6000, "/h", 4, 9}}
	if !reflect.DeepEqual(sm, want) {
		t.Errorf("got %+v, want %+v", sm, want)
	}
	for _, cut := range []int{1, len(b) - 3, len(b) - 1} { // inside a field
		var sm sharedMappings
		if err := sm.observe(&image.Frame{Type: image.TypeMm, Payload: b[:cut]}); !errors.Is(err, image.ErrCorrupt) {
			t.Errorf("record cut to %d of %d bytes: %v, want ErrCorrupt", cut, len(b), err)
		}
	}
}
