package sys

import (
	"errors"
	"os"
	"reflect"
	"testing"
	"unsafe"
)

// TestQueryVma looks up this process's own code and data.
func TestQueryVma(t *testing.T) {
	if s := unsafe.Sizeof(procmapQuery{}); s != 104 {
		t.Fatalf("struct procmap_query is %d bytes, want 104", s)
	}
	code := uint64(reflect.ValueOf(TestQueryVma).Pointer())
	v, err := QueryVma(os.Getpid(), code, VmaReadable|VmaExecutable)
	if errors.Is(err, ErrNoProcmapQuery) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if code < v.Start || code >= v.End || v.Flags&VmaExecutable == 0 || v.Flags&VmaWritable != 0 {
		t.Fatalf("code at %#x: VMA %#x-%#x flags %#x", code, v.Start, v.End, v.Flags)
	}
	data := new([4096]byte)
	at := uint64(uintptr(unsafe.Pointer(data)))
	if _, err := QueryVma(os.Getpid(), at, VmaExecutable); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("heap at %#x asked executable: %v, want ErrNotExist", at, err)
	}
	w, err := QueryVma(os.Getpid(), at, VmaReadable|VmaWritable)
	if err != nil || at < w.Start || at >= w.End {
		t.Fatalf("heap at %#x: VMA %#x-%#x, %v", at, w.Start, w.End, err)
	}
}
