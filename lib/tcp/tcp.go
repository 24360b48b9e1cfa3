// Package tcp is the cr-tcp stage. TCP repair (established and listening
// sockets, network lock) comes in its own issue; until then the stage is a
// working filter that passes the stream through unchanged, so the
// canonical pipeline already has its place.
package tcp

import (
	"github.com/urfave/cli/v2"

	"crpipe/lib/stage"
)

// Command is cr-tcp.
func Command() *cli.App {
	return stage.FilterCommand("cr-tcp", "append TCP socket state (for now: pass the stream through)", nil,
		func(*cli.Context) (stage.Filter, error) { return stage.Filter{}, nil })
}
