package image

// SetPrefetchAlways makes every new Reader prefetch, as readers of files do.
func SetPrefetchAlways(on bool) (was bool) {
	was, prefetchAlways = prefetchAlways, on
	return was
}
