package files

import (
	"os"
	"path/filepath"
	"testing"

	"crpipe/lib/pb"
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
// with the mapping's address, for a restore to take it on the description
// it maps the file with. cr-files finds the mapping itself: the stream has
// no Mm record (cr-files may come before cr-pages).
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
			fs, err := runFilter(t, pid)
			if err != nil {
				t.Fatal(err)
			}
			want := c.want
			want.VmaStart = uint64(fds[c.extra])
			if len(fs.Locks) != 1 || !pb.Equal(fs.Locks[0], want) {
				t.Fatalf("locks of pid %d: %v; want %v", pid, fs.Locks, want)
			}
		})
	}
}
