package pie

import (
	"bytes"
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
