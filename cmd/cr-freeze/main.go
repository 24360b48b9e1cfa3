// Command cr-freeze freezes a process in a transient cgroup and starts an
// image stream with its identity; `cr-freeze thaw` and `cr-freeze kill`
// apply the disposition afterwards.
package main

import (
	"crpipe/lib/freeze"
	"crpipe/lib/stage"
)

func main() { stage.Main(freeze.Command()) }
