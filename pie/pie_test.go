package pie

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestCommittedBlobIsCurrent rebuilds the blobs with gcc and compares them
// with the committed restorer.elf and lend.bin: they must be reproducible
// from source.
func TestCommittedBlobIsCurrent(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed: cannot rebuild the blobs (make test installs it)")
	}
	dir := t.TempDir()
	out, lend := filepath.Join(dir, "restorer.elf"), filepath.Join(dir, "lend.bin")
	cmd := exec.Command("make", "-s", "-B", "OUT="+out, "LEND="+lend)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("make: %v", err)
	}
	for _, b := range []struct {
		path, name string
		committed  []byte
	}{{out, "restorer.elf", Restorer()}, {lend, "lend.bin", Lend()}} {
		got, err := os.ReadFile(b.path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, b.committed) {
			t.Errorf("pie/%s differs from a rebuild of its source in pie/src: run `make pie` and commit the result", b.name)
		}
	}
}

func TestLayout(t *testing.T) {
	l, err := RestorerLayout()
	if err != nil {
		t.Fatal(err)
	}
	if l.ImageSize == 0 || l.ImageSize > 1<<20 || l.SyscallInsn == 0 || l.SyscallInsn >= l.ImageSize {
		t.Fatalf("implausible layout %+v", l)
	}
	if b := Restorer()[l.SyscallInsn : l.SyscallInsn+2]; b[0] != 0x0f || b[1] != 0x05 {
		t.Fatalf("crp_syscall_insn points at %x, not a syscall instruction", b)
	}
}

// TestLayoutAgreesWithDebugElf: the blob's symbols read by hand are those
// debug/elf reads.
func TestLayoutAgreesWithDebugElf(t *testing.T) {
	f, err := elf.NewFile(bytes.NewReader(Restorer()))
	if err != nil {
		t.Fatal(err)
	}
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	want := Layout{}
	for _, s := range syms {
		switch s.Name {
		case "_end":
			want.ImageSize = s.Value
		case "crp_syscall_insn":
			want.SyscallInsn = s.Value
		}
	}
	got, err := readLayout(Restorer())
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("read by hand %+v, debug/elf %+v", got, want)
	}
}

// TestLayoutRefusesDamage: a truncated or damaged blob gives an error,
// never a panic.
func TestLayoutRefusesDamage(t *testing.T) {
	blob := Restorer()
	for n := 0; n < len(blob); n += 7 {
		if _, err := readLayout(blob[:n]); err == nil {
			t.Fatalf("a blob cut at %d bytes of %d was read", n, len(blob))
		}
	}
	for i := range len(blob) {
		b := bytes.Clone(blob)
		b[i] ^= 0xff
		readLayout(b) // must not panic
	}
	for _, field := range []int{0x28, 0x3c} { // e_shoff, e_shnum
		b := bytes.Clone(blob)
		for j := range 2 {
			b[field+j] = 0xff
		}
		if _, err := readLayout(b); err == nil {
			t.Errorf("a blob with its byte %#x damaged was read", field)
		}
	}
}
