// Command testsum reads `go test -json` on stdin and prints what a person
// running `make test` wants to see: one line per package (like go test),
// the output of every failed test and failed build, every skipped test with
// its reason, and a final summary line. It exits 1 when anything failed.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

type event struct {
	Action      string
	Package     string
	Test        string
	Elapsed     float64
	Output      string
	ImportPath  string
	FailedBuild string
}

type key struct{ pkg, test string }

type summary struct {
	out       map[key]*strings.Builder
	build     map[string]*strings.Builder
	result    map[key]string
	skips     []string
	pkgFailed []string
	pkgOK     int
	pkgNone   int
}

func main() {
	s := &summary{
		out:    map[key]*strings.Builder{},
		build:  map[string]*strings.Builder{},
		result: map[key]string{},
	}
	os.Exit(s.run(os.Stdin, os.Stdout))
}

func (s *summary) buf(k key) *strings.Builder {
	b := s.out[k]
	if b == nil {
		b = &strings.Builder{}
		s.out[k] = b
	}
	return b
}

func (s *summary) run(in io.Reader, w io.Writer) int {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			fmt.Fprintln(w, string(line)) // not JSON: go's own messages
			continue
		}
		s.event(w, e)
	}
	return s.finish(w)
}

func (s *summary) event(w io.Writer, e event) {
	k := key{e.Package, e.Test}
	switch e.Action {
	case "build-output":
		b := s.build[e.ImportPath]
		if b == nil {
			b = &strings.Builder{}
			s.build[e.ImportPath] = b
		}
		b.WriteString(e.Output)
	case "build-fail":
		fmt.Fprintf(w, "FAIL\t%s [build failed]\n%s", e.ImportPath, indent(s.build[e.ImportPath]))
	case "output":
		s.buf(k).WriteString(e.Output)
	case "pass", "fail", "skip":
		if e.Test != "" {
			s.result[k] = e.Action
			switch e.Action {
			case "fail":
				fmt.Fprintf(w, "--- FAIL: %s (%s, %.2fs)\n%s", e.Test, e.Package, e.Elapsed, indent(s.out[k]))
			case "skip":
				s.skips = append(s.skips, fmt.Sprintf("%s %s: %s", e.Package, e.Test, skipReason(s.out[k])))
			}
			delete(s.out, k)
			return
		}
		switch {
		case e.Action == "fail":
			s.pkgFailed = append(s.pkgFailed, e.Package)
			fmt.Fprintf(w, "FAIL\t%s\t%.2fs\n", e.Package, e.Elapsed)
			// A package that fails with no failed test (a panic, TestMain,
			// a timeout) says why only in its own output.
			if !s.anyTestFailed(e.Package) {
				fmt.Fprint(w, indent(s.out[k]))
			}
		case e.Action == "skip" || strings.Contains(s.buf(k).String(), "[no test files]"):
			s.pkgNone++
			fmt.Fprintf(w, "?\t%s\t[no test files]\n", e.Package)
		default:
			s.pkgOK++
			fmt.Fprintf(w, "ok\t%s\t%.2fs\n", e.Package, e.Elapsed)
		}
	}
}

func (s *summary) anyTestFailed(pkg string) bool {
	for k, r := range s.result {
		if k.pkg == pkg && r == "fail" {
			return true
		}
	}
	return false
}

// finish prints the skips and the summary line. Tests are counted at the
// leaves: a parent whose subtests ran is not counted again.
func (s *summary) finish(w io.Writer) int {
	var pass, fail, skip int
	for k, r := range s.result {
		if s.hasSubtests(k) {
			continue
		}
		switch r {
		case "pass":
			pass++
		case "fail":
			fail++
		case "skip":
			skip++
		}
	}
	if len(s.skips) > 0 {
		sort.Strings(s.skips)
		fmt.Fprintf(w, "\nSkipped (%d):\n", len(s.skips))
		for _, l := range s.skips {
			fmt.Fprintf(w, "  SKIP %s\n", l)
		}
	}
	status := "PASS"
	if fail > 0 || len(s.pkgFailed) > 0 {
		status = "FAIL"
	}
	fmt.Fprintf(w, "\nmake test: %s: %d passed, %d failed, %d skipped; %d packages ok, %d failed, %d without tests\n",
		status, pass, fail, skip, s.pkgOK, len(s.pkgFailed), s.pkgNone)
	if status == "FAIL" {
		if len(s.pkgFailed) > 0 {
			fmt.Fprintf(w, "failed packages: %s\n", strings.Join(s.pkgFailed, " "))
		}
		return 1
	}
	return 0
}

func (s *summary) hasSubtests(k key) bool {
	for o := range s.result {
		if o.pkg == k.pkg && strings.HasPrefix(o.test, k.test+"/") {
			return true
		}
	}
	return false
}

// skipReason keeps the lines a test logged, without go test's own framing.
func skipReason(b *strings.Builder) string {
	if b == nil {
		return "(no reason given)"
	}
	var r []string
	for _, l := range strings.Split(b.String(), "\n") {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		r = append(r, t)
	}
	if len(r) == 0 {
		return "(no reason given)"
	}
	return strings.Join(r, " / ")
}

func indent(b *strings.Builder) string {
	if b == nil || b.Len() == 0 {
		return ""
	}
	var sb strings.Builder
	for _, l := range strings.SplitAfter(strings.TrimRight(b.String(), "\n"), "\n") {
		sb.WriteString("    " + l)
	}
	return sb.String() + "\n"
}
