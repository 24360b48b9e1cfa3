// Command cr-pages appends memory mappings and page contents of every frozen
// task in the stream it reads on stdin, and writes the stream to stdout.
package main

import (
	"crpipe/lib/pages"
	"crpipe/lib/stage"
)

func main() { stage.Main(pages.Command()) }
