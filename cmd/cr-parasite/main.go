// Command cr-parasite reads an image stream on stdin, appends state read
// from inside every frozen task by injected system calls (signal actions,
// clear_child_tid) and writes the stream to stdout.
package main

import (
	"crpipe/lib/parasite"
	"crpipe/lib/stage"
)

func main() { stage.Main(parasite.Command()) }
