// Package cli reads the command lines of crpipe's commands: an app's
// flags, one level of subcommands with flags of their own, and help. It
// keeps the shape of urfave/cli v2's API (App, Command, Context, the flag
// types, a `WORD` in a flag's usage naming its value), the subset crpipe
// used, and parses with the standard library's flag package: linking
// urfave/cli cost each command ~3-4 ms of its start on the PVM guest, 7
// of the tiny counter's dump and restore (doc/performance.md 91).
//
// Flags come before positional arguments ("-name value", "--name value",
// "--name=value"; a bool flag takes no value, or "--name=false"), the
// first positional argument names a subcommand if one has that name, and
// "--help" or "-h" prints the help on stdout. Every mistake on the
// command line is a *UsageError.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// App is a command.
type App struct {
	Name        string
	Usage       string // one line: what the command does
	UsageText   string // the synopsis, instead of the one made from Name
	ArgsUsage   string // the positional arguments in the synopsis
	Description string
	Flags       []Flag
	Commands    []*Command
	Action      func(*Context) error
	Metadata    map[string]any // for the caller: its Action reads c.App.Metadata
	Writer      io.Writer      // where help goes (nil: stdout)
}

// Command is a subcommand of an App.
type Command struct {
	Name        string
	Usage       string
	UsageText   string
	ArgsUsage   string
	Description string
	Flags       []Flag
	Action      func(*Context) error
	Hidden      bool // left out of the app's help
}

// UsageError is misuse of a command: its exit status is 2.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Flag is a flag's definition; the values parsed are the Context's.
type Flag interface {
	names() []string
	newValue() flag.Value
	describe() (value, usage, dflt string)
	isRequired() bool
}

// BoolFlag is a flag without a value: given means true.
type BoolFlag struct {
	Name        string
	Aliases     []string
	Usage       string
	Value       bool
	Destination *bool // set as the flag is parsed
}

// StringFlag is a flag with a string value.
type StringFlag struct {
	Name     string
	Aliases  []string
	Usage    string
	Value    string
	Required bool
}

// IntFlag is a flag with an integer value (decimal, or 0x... hex).
type IntFlag struct {
	Name     string
	Aliases  []string
	Usage    string
	Value    int
	Required bool
}

// DurationFlag is a flag with a time.ParseDuration value ("10s").
type DurationFlag struct {
	Name     string
	Aliases  []string
	Usage    string
	Value    time.Duration
	Required bool
}

func (f *BoolFlag) names() []string     { return append([]string{f.Name}, f.Aliases...) }
func (f *StringFlag) names() []string   { return append([]string{f.Name}, f.Aliases...) }
func (f *IntFlag) names() []string      { return append([]string{f.Name}, f.Aliases...) }
func (f *DurationFlag) names() []string { return append([]string{f.Name}, f.Aliases...) }

func (f *BoolFlag) isRequired() bool     { return false }
func (f *StringFlag) isRequired() bool   { return f.Required }
func (f *IntFlag) isRequired() bool      { return f.Required }
func (f *DurationFlag) isRequired() bool { return f.Required }

func (f *BoolFlag) newValue() flag.Value {
	v := &boolValue{v: f.Value, dest: f.Destination}
	if v.dest != nil {
		*v.dest = f.Value
	}
	return v
}
func (f *StringFlag) newValue() flag.Value   { v := stringValue(f.Value); return &v }
func (f *IntFlag) newValue() flag.Value      { v := intValue(f.Value); return &v }
func (f *DurationFlag) newValue() flag.Value { v := durationValue(f.Value); return &v }

func (f *BoolFlag) describe() (string, string, string) { return "", f.Usage, "" }
func (f *StringFlag) describe() (string, string, string) {
	return describe(f.Usage, "value", f.Value, f.Value != "")
}
func (f *IntFlag) describe() (string, string, string) {
	return describe(f.Usage, "value", strconv.Itoa(f.Value), f.Value != 0)
}
func (f *DurationFlag) describe() (string, string, string) {
	return describe(f.Usage, "value", f.Value.String(), f.Value != 0)
}

// describe splits a usage into the name of the value (the `WORD` in it,
// else word) and the text without the backquotes, with the default.
func describe(usage, word, dflt string, show bool) (string, string, string) {
	if i := strings.IndexByte(usage, '`'); i >= 0 {
		if j := strings.IndexByte(usage[i+1:], '`'); j >= 0 {
			word = usage[i+1 : i+1+j]
			usage = usage[:i] + word + usage[i+2+j:]
		}
	}
	if !show {
		dflt = ""
	}
	return word, usage, dflt
}

type boolValue struct {
	v    bool
	dest *bool
}

func (b *boolValue) String() string   { return strconv.FormatBool(b.v) }
func (b *boolValue) IsBoolFlag() bool { return true }
func (b *boolValue) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New("not a bool")
	}
	b.v = v
	if b.dest != nil {
		*b.dest = v
	}
	return nil
}

type stringValue string

func (s *stringValue) String() string     { return string(*s) }
func (s *stringValue) Set(v string) error { *s = stringValue(v); return nil }

type intValue int

func (i *intValue) String() string { return strconv.Itoa(int(*i)) }
func (i *intValue) Set(s string) error {
	v, err := strconv.ParseInt(s, 0, strconv.IntSize)
	if err != nil {
		return errors.New("not an integer")
	}
	*i = intValue(v)
	return nil
}

type durationValue time.Duration

func (d *durationValue) String() string { return time.Duration(*d).String() }
func (d *durationValue) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("not a duration (10s, 1m30s)")
	}
	*d = durationValue(v)
	return nil
}

// Context is a parsed command line: its flags' values and its arguments,
// and, in a subcommand, the app's (parent).
type Context struct {
	App     *App
	Command *Command // nil in the app's own Action
	parent  *Context
	values  map[string]flag.Value // by every name of each flag
	set     map[string]bool       // the flags given, by every name
	args    []string
}

// Args are the positional arguments.
type Args []string

// First is the first argument, or "".
func (a Args) First() string {
	if len(a) == 0 {
		return ""
	}
	return a[0]
}

// Args returns the positional arguments.
func (c *Context) Args() Args { return c.args }

// NArg is the number of positional arguments.
func (c *Context) NArg() int { return len(c.args) }

// lookup finds name in the nearest context that defines it.
func (c *Context) lookup(name string) (flag.Value, *Context) {
	for ; c != nil; c = c.parent {
		if v, ok := c.values[name]; ok {
			return v, c
		}
	}
	return nil, nil
}

// IsSet says whether the flag name was given on the command line.
func (c *Context) IsSet(name string) bool {
	_, in := c.lookup(name)
	return in != nil && in.set[name]
}

// Bool is the value of the bool flag name (false if there is none).
func (c *Context) Bool(name string) bool {
	v, _ := c.lookup(name)
	b, ok := v.(*boolValue)
	return ok && b.v
}

// String is the value of the string flag name.
func (c *Context) String(name string) string {
	if v, ok := c.value(name).(*stringValue); ok {
		return string(*v)
	}
	return ""
}

// Int is the value of the int flag name.
func (c *Context) Int(name string) int {
	if v, ok := c.value(name).(*intValue); ok {
		return int(*v)
	}
	return 0
}

// Duration is the value of the duration flag name.
func (c *Context) Duration(name string) time.Duration {
	if v, ok := c.value(name).(*durationValue); ok {
		return time.Duration(*v)
	}
	return 0
}

func (c *Context) value(name string) flag.Value {
	v, _ := c.lookup(name)
	return v
}

// Run parses args (the program's name first, as os.Args) and runs the
// app's Action, or that of the subcommand the first argument names.
func (a *App) Run(args []string) error {
	if len(args) == 0 {
		args = []string{a.Name}
	}
	c, help, err := parse(a.Name, a.Flags, args[1:])
	if err != nil {
		return err
	}
	c.App = a
	if help {
		return a.printHelp(a.out())
	}
	if len(c.args) > 0 {
		for _, cmd := range a.Commands {
			if cmd.Name == c.args[0] {
				return a.runCommand(cmd, c)
			}
		}
	}
	if a.Action == nil {
		return a.printHelp(a.out())
	}
	return a.Action(c)
}

func (a *App) runCommand(cmd *Command, parent *Context) error {
	c, help, err := parse(a.Name+" "+cmd.Name, cmd.Flags, parent.args[1:])
	if err != nil {
		return err
	}
	c.App, c.Command, c.parent = a, cmd, parent
	if help || cmd.Action == nil {
		return cmd.printHelp(a.out(), a.Name)
	}
	return cmd.Action(c)
}

// helpFlag is --help, -h on every app and subcommand.
var helpFlag = &BoolFlag{Name: "help", Aliases: []string{"h"}, Usage: "show help"}

// parse reads flags from args, up to the first positional argument or
// "--".
func parse(name string, flags []Flag, args []string) (*Context, bool, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	c := &Context{values: map[string]flag.Value{}, set: map[string]bool{}}
	for _, f := range append(flags, helpFlag) {
		v := f.newValue()
		for _, n := range f.names() {
			if fs.Lookup(n) != nil {
				return nil, false, fmt.Errorf("%s: flag %q defined twice", name, n)
			}
			fs.Var(v, n, "")
			c.values[n] = v
		}
	}
	if err := fs.Parse(args); err != nil {
		return nil, false, &UsageError{Err: err}
	}
	c.args = fs.Args()
	byValue := map[flag.Value]Flag{}
	for _, f := range flags {
		byValue[c.values[f.names()[0]]] = f
	}
	fs.Visit(func(g *flag.Flag) {
		if f := byValue[g.Value]; f != nil {
			for _, n := range f.names() {
				c.set[n] = true
			}
		}
	})
	if c.Bool("help") {
		return c, true, nil
	}
	var missing []string
	for _, f := range flags {
		if f.isRequired() && !c.set[f.names()[0]] {
			missing = append(missing, "--"+f.names()[0])
		}
	}
	if len(missing) > 0 {
		return nil, false, &UsageError{Err: fmt.Errorf("%s is required", strings.Join(missing, ", "))}
	}
	return c, false, nil
}

func (a *App) out() io.Writer {
	if a.Writer == nil {
		return os.Stdout
	}
	return a.Writer
}

func (a *App) printHelp(w io.Writer) error {
	synopsis := a.UsageText
	if synopsis == "" {
		synopsis = a.Name + " [options]"
		if len(a.Commands) > 0 {
			synopsis += " [command [options]]"
		}
		if a.ArgsUsage != "" {
			synopsis += " " + a.ArgsUsage
		}
	}
	var cmds []string
	for _, c := range a.Commands {
		if !c.Hidden {
			cmds = append(cmds, c.Name, c.Usage)
		}
	}
	return printHelp(w, a.Name, a.Usage, synopsis, a.Description, cmds, a.Flags)
}

func (c *Command) printHelp(w io.Writer, app string) error {
	synopsis := c.UsageText
	if synopsis == "" {
		synopsis = app + " " + c.Name + " [options]"
		if c.ArgsUsage != "" {
			synopsis += " " + c.ArgsUsage
		}
	}
	return printHelp(w, app+" "+c.Name, c.Usage, synopsis, c.Description, nil, c.Flags)
}

// printHelp writes NAME, USAGE, DESCRIPTION, COMMANDS (name, usage pairs)
// and OPTIONS, urfave/cli's layout.
func printHelp(w io.Writer, name, usage, synopsis, description string, cmds []string, flags []Flag) error {
	var b strings.Builder
	fmt.Fprintf(&b, "NAME:\n   %s", name)
	if usage != "" {
		fmt.Fprintf(&b, " - %s", usage)
	}
	fmt.Fprintf(&b, "\n\nUSAGE:\n   %s\n", synopsis)
	if description != "" {
		fmt.Fprintf(&b, "\nDESCRIPTION:\n   %s\n", description)
	}
	if len(cmds) > 0 {
		b.WriteString("\nCOMMANDS:\n")
		writeColumns(&b, cmds)
	}
	var rows []string
	for _, f := range append(flags, helpFlag) {
		value, text, dflt := f.describe()
		var names []string
		for _, n := range f.names() {
			dash := "--"
			if len(n) == 1 {
				dash = "-"
			}
			if value != "" {
				n += " " + value
			}
			names = append(names, dash+n)
		}
		if dflt != "" {
			text += " (default: " + dflt + ")"
		}
		rows = append(rows, strings.Join(names, ", "), text)
	}
	b.WriteString("\nOPTIONS:\n")
	writeColumns(&b, rows)
	_, err := io.WriteString(w, b.String())
	return err
}

// writeColumns writes pairs of left and right cells, the right ones
// aligned.
func writeColumns(b *strings.Builder, cells []string) {
	width := 0
	for i := 0; i < len(cells); i += 2 {
		width = max(width, len(cells[i]))
	}
	for i := 0; i < len(cells); i += 2 {
		fmt.Fprintf(b, "   %-*s  %s\n", width, cells[i], cells[i+1])
	}
}
