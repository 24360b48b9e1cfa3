// Command cr-restore recreates the processes of an image stream read from
// stdin (or -i FILE), each with its dumped PID, memory, files and registers,
// and lets them run on from where they were frozen.
package main

import (
	"crpipe/lib/restore"
	"crpipe/lib/stage"
)

func main() { stage.Main(restore.Command()) }
