//go:build !amd64

package crc32c

var canFold = false

func updateFold(crc uint32, p []byte) uint32 { panic("crc32c: no folding on this architecture") }

func updateShort(crc uint32, p []byte) uint32 { panic("crc32c: no folding on this architecture") }
