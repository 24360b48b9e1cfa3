package pb_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The plugins the generated files are made with: pinned alike in
// scripts/deps.sh.
const (
	protocGenGoVersion        = "v1.36.12"
	protocGenGoVtprotoVersion = "v0.6.0"
)

// TestGeneratedCodeIsCurrent regenerates lib/pb's Go from the .proto files
// into a temporary directory with scripts/pbgen.sh, as `make generate`
// does, and fails when a committed file differs: someone edited a .proto
// without `make generate`, or edited the generated code.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	findProtoc(t)
	goPlugin := findPlugin(t, "protoc-gen-go", "google.golang.org/protobuf/cmd/protoc-gen-go", protocGenGoVersion)
	vtPlugin := findPlugin(t, "protoc-gen-go-vtproto", "github.com/planetscale/vtprotobuf/cmd/protoc-gen-go-vtproto", protocGenGoVtprotoVersion)
	out := t.TempDir()
	cmd := exec.Command("../../scripts/pbgen.sh", out)
	cmd.Env = append(os.Environ(), "PROTOC_GEN_GO="+goPlugin, "PROTOC_GEN_GO_VTPROTO="+vtPlugin)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, b)
	}
	protos, err := filepath.Glob("*.proto")
	if err != nil || len(protos) == 0 {
		t.Fatalf("no .proto files: %v", err)
	}
	gens := []string{"records_gen.go"}
	for _, proto := range protos {
		base := strings.TrimSuffix(proto, ".proto")
		gens = append(gens, base+".pb.go", base+"_vtproto.pb.go", filepath.Join("protomsg", base+".pb.go"))
	}
	for _, gen := range gens {
		fresh, err := os.ReadFile(filepath.Join(out, gen))
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(gen)
		if err != nil {
			t.Fatal(err)
		}
		// The protoc version is only named in a comment; another protoc release
		// producing the same code is not a difference.
		if !bytes.Equal(normalize(fresh), normalize(committed)) {
			t.Fatalf("lib/pb/%s is not what scripts/pbgen.sh generates; run `make generate` and commit the result\n%s",
				gen, firstDiff(normalize(committed), normalize(fresh)))
		}
	}
}

var protocVersionLine = regexp.MustCompile(`(?m)^//\s+protoc\s+v\S+$`)

func normalize(b []byte) []byte {
	return protocVersionLine.ReplaceAll(b, []byte("// protoc (version)"))
}

func firstDiff(a, b []byte) string {
	al, bl := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return "first difference at line " + strconv.Itoa(i+1) + ":\n  committed:   " + x + "\n  regenerated: " + y
		}
	}
	return ""
}

// findProtoc returns protoc, installing protobuf-compiler with apt-get when
// it is missing and we may; it skips only when protoc cannot be had.
func findProtoc(t *testing.T) string {
	if p, err := exec.LookPath("protoc"); err == nil {
		return p
	}
	if os.Geteuid() != 0 {
		t.Skip("protoc is not installed and installing it needs root (apt-get install protobuf-compiler)")
	}
	t.Log("protoc missing: apt-get install protobuf-compiler")
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "--no-install-recommends", "protobuf-compiler"}} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Skipf("protoc is not installed and apt-get %s failed: %v\n%s", args[0], err, b)
		}
	}
	p, err := exec.LookPath("protoc")
	if err != nil {
		t.Skip("protoc is still missing after apt-get install protobuf-compiler")
	}
	return p
}

// findPlugin returns protoc plugin name built from its module at version
// (the binary's build information says so), installing pkg@version into a
// temporary GOBIN when the one on PATH is missing or another version.
func findPlugin(t *testing.T, name, pkg, version string) string {
	if p, err := exec.LookPath(name); err == nil && moduleVersion(p) == version {
		return p
	}
	gobin := t.TempDir()
	cmd := exec.Command("go", "install", pkg+"@"+version)
	cmd.Env = append(os.Environ(), "GOBIN="+gobin)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, b)
	}
	return filepath.Join(gobin, name)
}

// moduleVersion is the version of the main module binary p was built from,
// or "" when it does not say.
func moduleVersion(p string) string {
	b, err := exec.Command("go", "version", "-m", p).Output()
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "mod" {
			return f[2]
		}
	}
	return ""
}
