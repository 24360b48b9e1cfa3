// Command cr-files appends the fd table, cwd, root and umask of every frozen
// task in the stream it reads on stdin, and writes the stream to stdout.
package main

import (
	"crpipe/lib/files"
	"crpipe/lib/stage"
)

func main() { stage.Main(files.Command()) }
