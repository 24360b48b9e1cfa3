package cli

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

// seen is what an Action read from its Context.
type seen struct {
	cmd     string
	pid     int
	out     string
	verbose bool
	timeout time.Duration
	pidSet  bool
	args    []string
}

func testApp(got *seen, verbose *bool) *App {
	pid := &IntFlag{Name: "pid", Aliases: []string{"p", "t"}, Usage: "process to act on"}
	record := func(name string) func(*Context) error {
		return func(c *Context) error {
			*got = seen{cmd: name, pid: c.Int("pid"), out: c.String("output"), verbose: c.Bool("verbose"),
				timeout: c.Duration("timeout"), pidSet: c.IsSet("pid"), args: c.Args()}
			if c.NArg() != len(got.args) || c.Args().First() != first(got.args) {
				panic("NArg or First disagree with Args")
			}
			return nil
		}
	}
	return &App{
		Name: "cr-test",
		Flags: []Flag{pid,
			&StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write to `FILE`"},
			&BoolFlag{Name: "verbose", Aliases: []string{"v"}, Destination: verbose},
			&DurationFlag{Name: "timeout", Value: 10 * time.Second, Usage: "how long to wait"},
		},
		Action: record("app"),
		Commands: []*Command{
			{Name: "thaw", Usage: "unfreeze", ArgsUsage: "[FILE]", Flags: []Flag{pid}, Action: record("thaw")},
			{Name: "guard", Usage: "watch", Hidden: true, Flags: []Flag{&StringFlag{Name: "remove", Required: true}}, Action: record("guard")},
		},
	}
}

func first(a []string) string {
	if len(a) == 0 {
		return ""
	}
	return a[0]
}

func TestRunParses(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want seen
	}{
		{nil, seen{cmd: "app", timeout: 10 * time.Second, args: []string{}}},
		{[]string{"--pid", "42", "-o", "x.img"}, seen{cmd: "app", pid: 42, out: "x.img", timeout: 10 * time.Second, pidSet: true, args: []string{}}},
		{[]string{"-t=0x10", "--output=y", "-v", "--timeout", "1m30s"}, seen{cmd: "app", pid: 16, out: "y", verbose: true, timeout: 90 * time.Second, pidSet: true, args: []string{}}},
		{[]string{"-pid", "7", "a", "--pid", "8"}, seen{cmd: "app", pid: 7, timeout: 10 * time.Second, pidSet: true, args: []string{"a", "--pid", "8"}}},
		{[]string{"--verbose=false", "--", "-p"}, seen{cmd: "app", timeout: 10 * time.Second, args: []string{"-p"}}},
		// A subcommand: its own flags first, then the app's (verbose).
		{[]string{"-v", "thaw", "--pid", "5", "f.img"}, seen{cmd: "thaw", pid: 5, verbose: true, timeout: 10 * time.Second, pidSet: true, args: []string{"f.img"}}},
		// --pid before the subcommand is the app's; thaw has its own, unset.
		{[]string{"-p", "9", "thaw"}, seen{cmd: "thaw", timeout: 10 * time.Second, args: []string{}}},
	} {
		var got seen
		var verbose bool
		if err := testApp(&got, &verbose).Run(append([]string{"cr-test"}, tc.args...)); err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if got.cmd != tc.want.cmd || got.pid != tc.want.pid || got.out != tc.want.out || got.verbose != tc.want.verbose ||
			got.timeout != tc.want.timeout || got.pidSet != tc.want.pidSet || strings.Join(got.args, "|") != strings.Join(tc.want.args, "|") {
			t.Errorf("%q: got %+v, want %+v", tc.args, got, tc.want)
		}
		if verbose != tc.want.verbose {
			t.Errorf("%q: Destination %v, want %v", tc.args, verbose, tc.want.verbose)
		}
	}
}

func TestRunRefusesMisuse(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"--pid", "x"}, `invalid value "x" for flag -pid: not an integer`},
		{[]string{"--pid"}, "flag needs an argument: -pid"},
		{[]string{"--timeout", "10"}, "not a duration"},
		{[]string{"-v=maybe"}, "invalid boolean value"},
		{[]string{"thaw", "-v"}, "flag provided but not defined: -v"},
		{[]string{"guard"}, "--remove is required"},
	} {
		var got seen
		err := testApp(&got, nil).Run(append([]string{"cr-test"}, tc.args...))
		var u *UsageError
		if !errors.As(err, &u) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want a UsageError with %q", tc.args, err, tc.want)
		}
		if got.cmd != "" {
			t.Errorf("%q: the action ran (%+v)", tc.args, got)
		}
	}
}

func TestHelp(t *testing.T) {
	var got seen
	app := testApp(&got, nil)
	var b bytes.Buffer
	if err := app.printHelp(&b); err != nil {
		t.Fatal(err)
	}
	help := b.String()
	for _, want := range []string{"NAME:\n   cr-test\n", "cr-test [options] [command [options]]", "   thaw  unfreeze\n",
		"--pid value, -p value, -t value", "--output FILE, -o FILE ", " write to FILE\n", "--verbose, -v", "how long to wait (default: 10s)", "--help, -h"} {
		if !strings.Contains(help, want) {
			t.Errorf("help lacks %q:\n%s", want, help)
		}
	}
	if strings.Contains(help, "guard") {
		t.Errorf("help shows the hidden command:\n%s", help)
	}
	b.Reset()
	if err := app.Commands[0].printHelp(&b, app.Name); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "cr-test thaw [options] [FILE]") {
		t.Errorf("thaw's help:\n%s", b.String())
	}
	// --help prints the help and runs no action.
	for _, args := range [][]string{{"--help"}, {"-h"}, {"thaw", "-h"}} {
		got = seen{}
		b.Reset()
		app.Writer = &b
		if err := app.Run(append([]string{"cr-test"}, args...)); err != nil || got.cmd != "" || !strings.HasPrefix(b.String(), "NAME:") {
			t.Errorf("%q: %v, action %q ran, printed %q", args, err, got.cmd, b.String())
		}
	}
}

func TestFlagDefinedTwice(t *testing.T) {
	app := &App{Name: "x", Flags: []Flag{&BoolFlag{Name: "a"}, &StringFlag{Name: "b", Aliases: []string{"a"}}}, Action: func(*Context) error { return nil }}
	if err := app.Run([]string{"x"}); err == nil || !strings.Contains(err.Error(), `flag "a" defined twice`) {
		t.Errorf("got %v", err)
	}
}
