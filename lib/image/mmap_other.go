//go:build !linux

package image

import "io"

const mapMin = 0

type mappedFile struct{}

func newMappedFile(io.Reader) *mappedFile                { return nil }
func (*mappedFile) mapRange(int64, int) ([]byte, func()) { return nil, nil }
func (*mappedFile) skip(int64) error                     { return nil }
func crcMapped(crc uint32, p []byte) (uint32, error)     { return crcUpdate(crc, p), nil }
