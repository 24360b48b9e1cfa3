package restore

import (
	"time"

	"crpipe/lib/cli"
	"crpipe/lib/stage"
)

// Command is cr-restore's command line.
func Command() *cli.App {
	return &cli.App{
		Name:      "cr-restore",
		Usage:     "recreate the processes of an image stream, running where they stopped",
		UsageText: "cr-restore [-i FILE] [-d] [--pidfile FILE] [--cgroup DIR | --dumped-cgroups]   (the stream on stdin by default, lz4 detected)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "input", Aliases: []string{"i"}, Usage: "read the image from `FILE` instead of stdin"},
			&cli.BoolFlag{Name: "detach", Aliases: []string{"d"}, Usage: "return once the process runs, instead of waiting for it"},
			&cli.StringFlag{Name: "pidfile", Usage: "write the restored root's PID to `FILE`"},
			&cli.BoolFlag{Name: "pidns", Usage: "restore into a new PID namespace, where the tree has its dumped PIDs even while they are in use here"},
			&cli.DurationFlag{Name: "pid-wait", Value: 10 * time.Second, Usage: "how long to wait for a dumped PID still in use to be freed"},
			&cli.BoolFlag{Name: "no-uffd", Usage: "write the pages with process_vm_writev only, not with userfaultfd's UFFDIO_COPY (slower: for comparison)"},
			&cli.StringFlag{Name: "cgroup", Usage: "start the restored tree in the cgroup v2 directory `DIR` (it must exist), e.g. a container's; otherwise it starts in cr-restore's"},
			&cli.BoolFlag{Name: "dumped-cgroups", Usage: "start each process in the cgroup v2 directory it was dumped from (each must exist), as a restart on the same machine wants"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return stage.Usagef("unexpected argument %q (use -i FILE)", c.Args().First())
			}
			if c.IsSet("cgroup") && c.Bool("dumped-cgroups") {
				return stage.Usagef("--cgroup and --dumped-cgroups exclude each other")
			}
			return Run(Options{
				Input:   c.String("input"),
				Detach:  c.Bool("detach"),
				PidFile: c.String("pidfile"),
				PidWait: c.Duration("pid-wait"),
				PidNS:   c.Bool("pidns"),
				Cgroup:  c.String("cgroup"),
				NoUffd:  c.Bool("no-uffd"),

				DumpedCgroups: c.Bool("dumped-cgroups"),
			})
		},
	}
}
