// Command crit inspects, converts and checks crpipe image streams:
// crit show|decode|encode|check [FILE].
package main

import (
	"crpipe/lib/crit"
	"crpipe/lib/stage"
)

func main() { stage.Main(crit.Command()) }
