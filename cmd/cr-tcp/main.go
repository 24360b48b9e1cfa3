// Command cr-tcp reads an image stream on stdin and writes it to stdout;
// it will append TCP socket state once TCP repair is implemented.
package main

import (
	"crpipe/lib/stage"
	"crpipe/lib/tcp"
)

func main() { stage.Main(tcp.Command()) }
