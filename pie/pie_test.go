package pie

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestCommittedBlobIsCurrent rebuilds the restorer with gcc and compares it
// with the committed restorer.elf: the blob must be reproducible from source.
func TestCommittedBlobIsCurrent(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed: cannot rebuild the restorer blob (make test installs it)")
	}
	out := filepath.Join(t.TempDir(), "restorer.elf")
	cmd := exec.Command("make", "-s", "-B", "OUT="+out)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("make: %v", err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, Restorer()) {
		t.Fatal("pie/restorer.elf differs from a rebuild of pie/src/restorer.c: run `make pie` and commit the result")
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
