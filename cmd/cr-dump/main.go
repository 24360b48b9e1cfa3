// Command cr-dump checkpoints a process by running the stage pipeline
// (cr-freeze | cr-seize | cr-parasite | cr-files | cr-tcp | cr-pages) and
// kills it once the image is complete, or thaws it on any failure.
package main

import (
	"crpipe/lib/dump"
	"crpipe/lib/stage"
)

func main() { stage.Main(dump.Command()) }
