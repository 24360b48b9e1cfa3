package proc

import (
	"os"
	"slices"
	"testing"
)

func TestPtyIndex(t *testing.T) {
	enc := func(major, minor int) int { return minor&0xff | major<<8 | (minor&^0xff)<<12 }
	for _, c := range []struct{ nr, want int }{
		{0, -1}, {enc(136, 0), 0}, {enc(136, 5), 5}, {enc(136, 300), 300}, {enc(4, 1), -1}, {enc(5, 0), -1},
	} {
		if got := PtyIndex(c.nr); got != c.want {
			t.Errorf("PtyIndex(%#x) = %d, want %d", c.nr, got, c.want)
		}
	}
}

func TestPtyMasters(t *testing.T) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no /dev/ptmx: %v", err)
	}
	defer m.Close()
	got, err := PtyMasters(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 {
		t.Fatalf("PtyMasters found no master, want the one just opened")
	}
	if !slices.ContainsFunc(got, func(i int) bool { return i >= 0 }) {
		t.Fatalf("PtyMasters = %v", got)
	}
}
