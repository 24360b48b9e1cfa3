package restore

import (
	"bytes"
	"testing"
)

// A holder keeps its first holdPlain bytes as they came and compresses
// what comes after where that halves it; every held record gives back its
// bytes.
func TestHolderPlainThenCompressed(t *testing.T) {
	var h holder
	xsave := append(bytes.Repeat([]byte{0}, 2500), 1, 2, 3) // mostly zeros, as an xsave area
	var helds []held
	for range holdPlain/len(xsave) + 8 {
		helds = append(helds, h.hold(xsave))
	}
	if helds[0].size != 0 {
		t.Fatalf("the first record was held as an lz4 block of %d bytes: want it as it came", len(helds[0].data))
	}
	last := helds[len(helds)-1]
	if last.size != len(xsave) || len(last.data) > len(xsave)/2 {
		t.Fatalf("a record held past the first %d bytes: %d bytes for %d (size %d): want it compressed", holdPlain, len(last.data), len(xsave), last.size)
	}
	for i, hd := range helds {
		b, err := hd.bytes()
		if err != nil || !bytes.Equal(b, xsave) {
			t.Fatalf("held record %d gave %d bytes (%v), not the %d held", i, len(b), err, len(xsave))
		}
	}
}
