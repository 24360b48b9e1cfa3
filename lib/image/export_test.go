package image

// SetPrefetchAlways makes every new Reader prefetch, as readers of files do.
func SetPrefetchAlways(on bool) (was bool) {
	was, prefetchAlways = prefetchAlways, on
	return was
}

// GivenPiecesFree is how many given piece buffers are free.
func GivenPiecesFree() int {
	givenPieces.Lock()
	defer givenPieces.Unlock()
	return len(givenPieces.free)
}

// ForgetGivenPieces drops the buffers given by GivePieceBuffers.
func ForgetGivenPieces() {
	givenPieces.Lock()
	defer givenPieces.Unlock()
	givenPieces.free, givenPieces.base, givenPieces.end = nil, 0, 0
}
