// Package crit inspects, converts and checks crpipe image streams
// (doc/stream-v1.md): a human summary (Show), JSON lines out and back in
// (Decode, Encode, a byte-identical round trip), and a full check (Check).
// It knows no kernel, so it runs anywhere.
package crit

import (
	"errors"
	"fmt"
	"io"
	"os"

	"crpipe/lib/cli"
	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// Command is the crit command line.
func Command() *cli.App {
	return &cli.App{
		Name:  "crit",
		Usage: "inspect, convert and check crpipe image streams",
		Description: "FILE or stdin; lz4-compressed input is detected.\n" +
			"   crit decode < a.img | jq ... | crit encode > b.img",
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return stage.Usagef("unknown command %q (want show, decode, encode or check)", c.Args().First())
			}
			return stage.Usagef("a command is needed: show, decode, encode or check")
		},
		Commands: []*cli.Command{
			{
				Name:      "show",
				Usage:     "print a human summary: processes, memory, threads, signal handlers, files",
				ArgsUsage: "[FILE]",
				Action: func(c *cli.Context) error {
					return withInput(c, func(in io.Reader) error { return Show(os.Stdout, in) })
				},
			},
			{
				Name:      "decode",
				Usage:     "write the stream as JSON lines: a header line, then one line per frame",
				ArgsUsage: "[FILE]",
				Description: `Lines (crit encode reads them back into the same bytes):
   {"header":{"major":1,"minor":0,"flags":0}}          ("lz4":true when the input was lz4)
   {"type":"process","flags":0,"msg":{...}}            metadata as protojson, proto field names
   {"type":"pages","flags":0,"pid":1,"addr":"0x1000","data":"<base64>"}
   {"type":"type-99","flags":0,"raw":"<base64>"}       types this crit does not know
   {"type":"end","flags":0,"msg":{...}}                last line; encode recomputes the End frame
   A metadata line also has "raw" when msg alone would not give back the exact
   bytes (unknown fields, non-canonical encoding), and "error" when the payload
   is not a valid message. To edit such a line's msg, delete its raw.`,
				Action: func(c *cli.Context) error {
					return withInput(c, func(in io.Reader) error { return Decode(os.Stdout, in) })
				},
			},
			{
				Name:      "encode",
				Usage:     "read JSON lines (as decode writes them) and write the stream",
				ArgsUsage: "[FILE]",
				Description: "The End frame is recomputed (with a warning when the end line's counts differ),\n" +
					"   but the end line must be there: JSON cut short never becomes a stream that looks whole.\n" +
					"   Output is lz4 when the header line says \"lz4\":true, or with --compress.",
				Flags: []cli.Flag{stage.CompressFlag},
				Action: func(c *cli.Context) error {
					path, err := oneArg(c)
					if err != nil {
						return err
					}
					// JSON may be typed on a terminal; the binary output may not go to one.
					var in io.Reader = os.Stdin
					if path != "" && path != "-" {
						f, err := os.Open(path)
						if err != nil {
							return err
						}
						defer f.Close()
						in = f
					}
					out, err := stage.Output(c)
					if err != nil {
						return err
					}
					return Encode(out, in, EncodeOptions{Compress: c.Bool("compress"), Warn: warn})
				},
			},
			{
				Name:      "check",
				Usage:     "verify structure, checksums, End counts and every metadata record; exit 1 on damage",
				ArgsUsage: "[FILE]",
				Action: func(c *cli.Context) error {
					return withInput(c, func(in io.Reader) error {
						s, err := Check(in)
						if err != nil {
							return err
						}
						fmt.Println(s)
						return nil
					})
				},
			},
		},
	}
}

func warn(msg string) { fmt.Fprintf(os.Stderr, "crit: warning: %s\n", stage.OneLine(msg)) }

func oneArg(c *cli.Context) (string, error) {
	if c.NArg() > 1 {
		return "", stage.Usagef("%s takes at most one FILE, got %d arguments", c.Command.Name, c.NArg())
	}
	return c.Args().First(), nil
}

func withInput(c *cli.Context, run func(io.Reader) error) error {
	path, err := oneArg(c)
	if err != nil {
		return err
	}
	in, err := stage.Input(path)
	if err != nil {
		return err
	}
	defer in.Close()
	return withHint(run(in))
}

// withHint adds a remedy where the damage has one.
func withHint(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, image.ErrVersion):
		return stage.Hint(err, fmt.Sprintf("this crit reads stream version %d.x; use the crit that came with the tools that wrote the stream", image.Major))
	case errors.Is(err, image.ErrMagic):
		return stage.Hint(err, "the input is not an image stream (nor lz4 of one); was it written by a crpipe stage?")
	}
	return err
}

// newMessage returns an empty message for a metadata frame type, nil for
// pages and unknown types.
func newMessage(t image.Type) pb.Message {
	switch t {
	case image.TypeInventory:
		return &pb.Inventory{}
	case image.TypeFreeze:
		return &pb.Freeze{}
	case image.TypeProcess:
		return &pb.Process{}
	case image.TypeThreadCore:
		return &pb.ThreadCore{}
	case image.TypeTaskState:
		return &pb.TaskState{}
	case image.TypeThreadState:
		return &pb.ThreadState{}
	case image.TypeProcessState:
		return &pb.ProcessState{}
	case image.TypeThreadInside:
		return &pb.ThreadInside{}
	case image.TypeProcessInside:
		return &pb.ProcessInside{}
	case image.TypeMm:
		return &pb.Mm{}
	case image.TypeFiles:
		return &pb.Files{}
	case image.TypeEnd:
		return &pb.End{}
	}
	if m := newFilesMessage(t); m != nil {
		return m
	}
	return newTCPMessage(t)
}
