package proc

import (
	"errors"
	"os"
	"testing"
)

func TestParseMmStat(t *testing.T) {
	// comm with spaces and parentheses; fields 22, 26-28 and 45-51 marked.
	line := []byte("4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 777 1000 100 " +
		"18446744073709551615 4096 8192 140000 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 " +
		"12288 16384 20480 30000 30010 30020 30030 0\n")
	st, err := ParseMmStat(line)
	if err != nil {
		t.Fatal(err)
	}
	want := MmStat{StartTime: 777, StartCode: 4096, EndCode: 8192, StartStack: 140000, StartData: 12288, EndData: 16384,
		StartBrk: 20480, ArgStart: 30000, ArgEnd: 30010, EnvStart: 30020, EnvEnd: 30030}
	if st != want {
		t.Errorf("got %+v\nwant %+v", st, want)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2 3", "4242 (a) S" + string(line[14:40])} {
		if _, err := ParseMmStat([]byte(bad)); !errors.Is(err, ErrStatSyntax) {
			t.Errorf("%q: %v, want ErrStatSyntax", bad, err)
		}
	}
}

func TestReadMmStatSelf(t *testing.T) {
	st, err := ReadMmStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.StartCode == 0 || st.EndCode <= st.StartCode || st.ArgEnd <= st.ArgStart || st.StartTime == 0 {
		t.Errorf("%+v", st)
	}
	auxv, err := ReadAuxv(os.Getpid())
	if err != nil || len(auxv) == 0 || len(auxv)%16 != 0 {
		t.Errorf("auxv: %d bytes, %v", len(auxv), err)
	}
}

func FuzzParseMmStat(f *testing.F) {
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("1 (x) S"))
	f.Fuzz(func(t *testing.T, b []byte) { ParseMmStat(b) })
}

// TestAuxvValue: this process's auxv names its vDSO, and a missing entry
// reads 0.
func TestAuxvValue(t *testing.T) {
	auxv, err := ReadAuxv(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if AuxvValue(auxv, AtSysinfoEhdr) == 0 {
		t.Fatal("no AT_SYSINFO_EHDR in this process's auxv")
	}
	if v := AuxvValue(auxv, 1<<40); v != 0 {
		t.Fatalf("a missing entry reads %#x", v)
	}
}
