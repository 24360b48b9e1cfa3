package inject

import (
	"maps"
	"testing"
)

// TestMasksRecord: the record of signal masks reads back as written, and
// a truncated or hostile one is an error, not a panic or a huge
// allocation.
func TestMasksRecord(t *testing.T) {
	in := map[uint64][]int{0: {100, 101, 103}, 1 << 9: {102}, allBlocked: {4194303}}
	b := encodeMasks(777, in)
	start, got, err := decodeMasks(b)
	if err != nil || start != 777 {
		t.Fatalf("decode: start %d, %v", start, err)
	}
	want := map[int]uint64{100: 0, 101: 0, 103: 0, 102: 1 << 9, 4194303: allBlocked}
	if !maps.Equal(got, want) {
		t.Fatalf("decoded %v, want %v", got, want)
	}
	// Groups in mask order: 0 with 3 threads, 1<<9 and allBlocked with 1.
	whole := map[int]bool{8: true, 8 + 24: true, 8 + 24 + 16: true}
	for n := range len(b) {
		if _, _, err := decodeMasks(b[:n]); (err == nil) != whole[n] {
			// Only cuts between whole groups decode (fewer threads).
			t.Errorf("cut to %d of %d bytes: %v", n, len(b), err)
		}
	}
	hostile := append(encodeMasks(1, nil), 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff)
	if _, _, err := decodeMasks(hostile); err == nil {
		t.Error("a group of 2^32-1 threads in 20 bytes decoded")
	}
}
