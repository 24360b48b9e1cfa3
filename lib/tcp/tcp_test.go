package tcp

import (
	"bytes"
	"testing"

	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// TestPassThrough: frames of others pass unchanged, unknown types
// included.
func TestPassThrough(t *testing.T) {
	var in bytes.Buffer
	w, err := image.NewWriter(&in, image.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.WriteMessage(image.TypeProcess, &pb.Process{Pid: 42, Comm: "x"})
	w.WriteFrame(image.Type(12345), 7, []byte("opaque"))
	w.WritePages(image.PagesHeader{Pid: 42, Addr: 0x1000}, make([]byte, 4096))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := stage.RunFilter(bytes.NewReader(in.Bytes()), &out, false, stage.Filter{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(in.Bytes(), out.Bytes()) {
		t.Fatal("stream changed")
	}
	if Command().Name != "cr-tcp" {
		t.Fatal("command name")
	}
}
