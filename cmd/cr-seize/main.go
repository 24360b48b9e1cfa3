// Command cr-seize reads an image stream on stdin, appends the CPU state of
// every frozen thread (registers, xsave, signal mask, rseq) and writes the
// stream to stdout.
package main

import (
	"crpipe/lib/seize"
	"crpipe/lib/stage"
)

func main() { stage.Main(seize.Command()) }
