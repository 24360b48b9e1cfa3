package tcp

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"crpipe/lib/cli"
	"crpipe/lib/image"
	"crpipe/lib/netlock"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// lockCommands are cr-tcp's tools for whoever moves connections between
// hosts: the destination can hold the connections of an image before the
// service address arrives there (cr-restore would lock it only once it
// reads the image's TCP records), and a source can be unlocked once the
// address has left it.
func lockCommands() []*cli.Command {
	return []*cli.Command{
		{
			Name:      "lock",
			Usage:     "hold the connections of an image in this network namespace (cr-restore lifts the lock)",
			UsageText: "cr-tcp lock [-i FILE]   (the stream on stdin by default)",
			Flags:     []cli.Flag{&cli.StringFlag{Name: "input", Aliases: []string{"i"}, Usage: "read the image from `FILE`"}},
			Action: func(c *cli.Context) error {
				if c.NArg() > 0 {
					return stage.Usagef("unexpected argument %q", c.Args().First())
				}
				in, err := stage.Input(c.String("input"))
				if err != nil {
					return err
				}
				defer in.Close()
				return LockFromStream(in)
			},
		},
		{
			Name:      "unlock",
			Usage:     "remove the lock of the tree whose root was PID from this network namespace",
			UsageText: "cr-tcp unlock PID|crpipe-PID",
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return stage.Usagef("give the dumped root pid (or the table name crpipe-PID)")
				}
				arg := strings.TrimPrefix(c.Args().First(), "crpipe-")
				pid, err := strconv.Atoi(arg)
				if err != nil || pid <= 0 {
					return stage.Usagef("invalid pid %q", c.Args().First())
				}
				return netlock.Unlock("", netlock.TableName(pid))
			},
		},
	}
}

// LockFromStream installs every TcpLock record of a stream in the caller's
// network namespace.
func LockFromStream(in io.Reader) error {
	r, err := image.NewReader(in)
	if err != nil {
		return fmt.Errorf("input: %w", err)
	}
	locked := 0
	for {
		f, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("input: %w", err)
		}
		if f.Type != image.TypeTcpLock {
			continue
		}
		var l pb.TcpLock
		if err := image.Unmarshal(f, &l); err != nil {
			return err
		}
		var flows []netlock.Flow
		for _, fl := range l.Flows {
			la, ok1 := netip.AddrFromSlice(fl.LocalAddr)
			pa, ok2 := netip.AddrFromSlice(fl.PeerAddr)
			if !ok1 || !ok2 || fl.LocalPort > 0xffff || fl.PeerPort > 0xffff {
				return fmt.Errorf("frame %d at offset %d: tcp-lock flow with a bad address: %w", f.Index, f.Offset, image.ErrCorrupt)
			}
			flows = append(flows, netlock.Flow{Local: netip.AddrPortFrom(la, uint16(fl.LocalPort)), Peer: netip.AddrPortFrom(pa, uint16(fl.PeerPort))})
		}
		if err := netlock.Lock("", l.Table, flows); err != nil {
			return err
		}
		stage.Logf("%s: %d connections held", l.Table, len(flows))
		locked++
	}
	if locked == 0 {
		stage.Logf("the stream holds no TCP connections: nothing to lock")
	}
	return nil
}
