package freeze

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"crpipe/lib/cli"
	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// Command is cr-freeze.
func Command() *cli.App {
	pidFlag := &cli.IntFlag{Name: "pid", Aliases: []string{"p"}, Usage: "process to act on"}
	return &cli.App{
		Name:      "cr-freeze",
		Usage:     "freeze a process and start an image stream on stdout",
		UsageText: "cr-freeze --pid PID [--cgroup DIR] [--timeout D] [--compress] > stream\n   cr-freeze thaw|kill [--pid PID | FILE] < stream",
		Flags: []cli.Flag{
			pidFlag,
			CgroupFlag,
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, Usage: "how long to wait for the cgroup to freeze"},
			stage.CompressFlag,
		},
		Action: runFreeze,
		Commands: []*cli.Command{
			{
				Name:      "thaw",
				Usage:     "unfreeze the processes of a stream (or --pid), put them back in their cgroups",
				ArgsUsage: "[FILE]",
				Flags:     []cli.Flag{pidFlag},
				Action:    func(c *cli.Context) error { return dispose(c, false) },
			},
			{
				Name:      "kill",
				Usage:     "kill the frozen processes of a stream (or --pid) and remove their cgroup",
				ArgsUsage: "[FILE]",
				Flags:     []cli.Flag{pidFlag},
				Action:    func(c *cli.Context) error { return dispose(c, true) },
			},
			{
				Name:   "guard",
				Usage:  "(started by cr-dump) thaw --pid if stdin ends without cr-dump saying it is done",
				Hidden: true,
				Flags:  []cli.Flag{pidFlag, &cli.StringFlag{Name: "remove", Usage: "the unfinished image file to remove then"}},
				Action: func(c *cli.Context) error {
					if !c.IsSet("pid") {
						return stage.Usagef("--pid is required")
					}
					return Guard(c.Int("pid"), os.Stdin, c.String("remove"))
				},
			},
		},
	}
}

// CgroupFlag is cr-freeze's and cr-dump's --cgroup.
var CgroupFlag = &cli.StringFlag{Name: "cgroup", Usage: "freeze the cgroup v2 directory `DIR` where it is, a cgroup that holds the tree of --pid and nothing else (a container's, a service's), instead of moving the tree into a cgroup of its own: no process is moved, which is faster"}

func runFreeze(c *cli.Context) error {
	if c.NArg() > 0 {
		return stage.Usagef("unexpected argument %q (subcommands are thaw and kill)", c.Args().First())
	}
	if !c.IsSet("pid") {
		return stage.Usagef("--pid is required")
	}
	// Refuse a terminal before touching the target.
	out, err := stage.Output(c)
	if err != nil {
		return err
	}
	// A closed pipe must become an error we can undo the freeze on, not a
	// silent death by SIGPIPE.
	signal.Ignore(syscall.SIGPIPE)
	pid := c.Int("pid")
	// The tree is frozen once every stage after this one is ready for it
	// (lib/stage/ready.go), not while they start; what does not depend on
	// it is done meanwhile.
	mount, err := Prepare()
	if err != nil {
		return err
	}
	w, err := image.NewWriter(out, image.WriterOptions{Compress: c.Bool("compress")})
	if err != nil {
		return err
	}
	if err := stage.AnnounceOutput(w, out, c.Bool("compress")); err != nil {
		return stage.NeighbourStatus(fmt.Errorf("output: %w (pid %d not frozen)", err, pid))
	}
	f, err := Freeze(pid, Options{Timeout: c.Duration("timeout"), Cgroup: c.String("cgroup"), Mount: mount})
	if err != nil {
		return err
	}
	stage.Logf("pid %d frozen in %s", pid, f.Cgroup)
	err = writeRecords(w, f)
	if err == nil {
		err = stage.EndOutput(c)
	}
	if err != nil {
		if terr := f.Undo(); terr != nil {
			return fmt.Errorf("output: %w (and thawing failed: %v)", err, terr)
		}
		return stage.NeighbourStatus(fmt.Errorf("output: %w (pid %d thawed)", err, pid))
	}
	return nil
}

func writeRecords(w *image.Writer, f *Frozen) error {
	inv, fr, procs := f.Records()
	if err := w.WriteMessage(image.TypeInventory, inv); err != nil {
		return err
	}
	if err := w.WriteMessage(image.TypeFreeze, fr); err != nil {
		return err
	}
	for _, p := range procs {
		if err := w.WriteMessage(image.TypeProcess, p); err != nil {
			return err
		}
	}
	return w.Close()
}

func dispose(c *cli.Context, kill bool) error {
	name := "thaw"
	if kill {
		name = "kill"
	}
	if c.IsSet("pid") {
		if c.NArg() > 0 {
			return stage.Usagef("give --pid or a stream, not both")
		}
		pid := c.Int("pid")
		if kill {
			return KillPid(pid)
		}
		did, err := ThawPid(pid)
		if err == nil && !did {
			fmt.Fprintf(os.Stderr, "%s: pid %d is not frozen by cr-freeze (no %s%d cgroup, and its own is not frozen in place); nothing to thaw\n", filepath.Base(os.Args[0]), pid, Prefix, pid)
		}
		return err
	}
	if c.NArg() > 1 {
		return stage.Usagef("%s takes at most one FILE", name)
	}
	in, err := stage.Input(c.Args().First())
	if err != nil {
		return err
	}
	defer in.Close()
	fr, procs, rerr := ReadRecords(in)
	if fr == nil {
		if rerr == nil {
			rerr = errors.New("no freeze record")
		}
		return stage.Hint(fmt.Errorf("input: %w", rerr), "give the stream cr-freeze started, or use --pid PID")
	}
	if kill {
		// Killing on the word of a damaged stream is not all-or-nothing.
		if rerr != nil {
			return stage.Hint(fmt.Errorf("input: %w; not killing", rerr), "the image is incomplete: thaw instead, or kill with --pid if you are sure")
		}
		return Kill(fr, procs)
	}
	if rerr != nil {
		stage.Logf("input: %v (thawing from the records read before it)", rerr)
	}
	return Thaw(fr, procs)
}

// ReadRecords reads a stream up to its end and returns its Freeze and
// Process records. A damaged stream still yields the records read before
// the damage, with the error.
func ReadRecords(in io.Reader) (*pb.Freeze, []*pb.Process, error) {
	r, err := image.NewReader(in)
	if err != nil {
		return nil, nil, err
	}
	var fr *pb.Freeze
	var procs []*pb.Process
	for {
		f, err := r.Next()
		if err == io.EOF {
			return fr, procs, nil
		}
		if err != nil {
			return fr, procs, err
		}
		switch f.Type {
		case image.TypeFreeze:
			m := &pb.Freeze{}
			if err := image.Unmarshal(f, m); err != nil {
				return fr, procs, err
			}
			fr = m
		case image.TypeProcess:
			m := &pb.Process{}
			if err := image.Unmarshal(f, m); err != nil {
				return fr, procs, err
			}
			procs = append(procs, m)
		}
	}
}
