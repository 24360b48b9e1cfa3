// Package tcp is the cr-tcp stage: it appends the state of every TCP
// socket of the frozen tree to the stream, and holds the network lock.
//
// The sockets are taken with pidfd_getfd (the copy shares the socket, and
// the task does not have to run). Listening and closed sockets are
// described by their address and options. A connection is first locked
// (lib/netlock drops its packets both ways, so the peer retransmits into
// silence and never meets a reset), then put in repair mode (TCP_REPAIR),
// where its sequence numbers, queues (unacknowledged data included),
// window and negotiated options can be read without the peer noticing.
// The sockets stay in repair mode: when the dump kills the tree they
// close without a FIN or a reset; when the dump fails or leaves the tree
// running, cr-freeze thaw takes them out of repair and lifts the lock.
//
// doc/tcp.md describes the records and the restore.
package tcp

import (
	"crpipe/lib/cli"
	"crpipe/lib/image"
	"crpipe/lib/pb"
	"crpipe/lib/stage"
)

// Command is cr-tcp.
func Command() *cli.App {
	app := stage.FilterCommand("cr-tcp", "append the TCP sockets of every frozen process in the stream, holding their connections still",
		nil, func(*cli.Context) (stage.Filter, error) { return Filter(), nil })
	app.Commands = lockCommands()
	return app
}

// Filter returns the cr-tcp filter: it remembers the tree's processes and
// dumps their TCP sockets once the input is complete.
func Filter() stage.Filter {
	var root uint32
	var procs []*pb.Process
	return stage.Filter{
		Observe: func(f *image.Frame) error {
			switch f.Type {
			case image.TypeInventory:
				var inv pb.Inventory
				if err := image.Unmarshal(f, &inv); err != nil {
					return err
				}
				root = inv.RootPid
			case image.TypeProcess:
				p := new(pb.Process)
				if err := image.Unmarshal(f, p); err != nil {
					return err
				}
				if p.State != "Z" {
					procs = append(procs, p)
				}
			}
			return nil
		},
		Finish: func(w *image.Writer) error {
			if root == 0 && len(procs) > 0 {
				root = procs[0].Pid
			}
			var pids []int
			for _, p := range procs {
				pids = append(pids, int(p.Pid))
			}
			return Dump(int(root), pids, w)
		},
	}
}
