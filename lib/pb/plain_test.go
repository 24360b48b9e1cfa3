package pb

import (
	"os/exec"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	"crpipe/lib/pb/protomsg"
)

// TestNoProtobufRuntime: neither lib/pb nor a command but crit links the
// protobuf runtime, whose start cost each command ~2 ms (doc/performance.md
// 92); crit and the tests reach it through lib/pb/protomsg.
func TestNoProtobufRuntime(t *testing.T) {
	out, err := exec.Command("go", "list", "crpipe/cmd/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := []string{"crpipe/lib/pb"}
	for p := range strings.FieldsSeq(string(out)) {
		if p != "crpipe/cmd/crit" {
			pkgs = append(pkgs, p)
		}
	}
	if len(pkgs) < 9 {
		t.Fatalf("only %d packages: %q", len(pkgs), pkgs)
	}
	for _, p := range pkgs {
		deps, err := exec.Command("go", "list", "-deps", p).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", p, err)
		}
		for d := range strings.FieldsSeq(string(deps)) {
			if strings.HasPrefix(d, "google.golang.org/protobuf") || d == "crpipe/lib/pb/protomsg" {
				t.Errorf("%s links %s", p, d)
			}
		}
	}
}

// TestEnumNames: an enum's String is the name protobuf gives it, and its
// number where it has none.
func TestEnumNames(t *testing.T) {
	check := func(plain func(int32) string, e protoreflect.Enum) {
		values := e.Descriptor().Values()
		for i := range values.Len() {
			v := values.Get(i)
			if got := plain(int32(v.Number())); got != string(v.Name()) {
				t.Errorf("%s %d: String %q, want %q", e.Descriptor().FullName(), v.Number(), got, v.Name())
			}
		}
		if got := plain(99); got != "99" {
			t.Errorf("%s 99: String %q", e.Descriptor().FullName(), got)
		}
	}
	check(func(n int32) string { return VmaKind(n).String() }, protomsg.VmaKind(0))
	check(func(n int32) string { return FdKind(n).String() }, protomsg.FdKind(0))
	check(func(n int32) string { return FileLockKind(n).String() }, protomsg.FileLockKind(0))
}
