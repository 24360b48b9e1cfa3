package restore

import (
	"errors"
	"strings"
	"testing"

	"crpipe/lib/stage"
)

// A process with more VMAs than vm.max_map_count is refused with the
// sysctl that would let it restore; one at the limit passes.
func TestCheckMapCount(t *testing.T) {
	if err := checkMapCount(7, 65530, 65530); err != nil {
		t.Errorf("at the limit: %v", err)
	}
	err := checkMapCount(7, 70000, 65530)
	var h *stage.HintError
	if err == nil || !errors.As(err, &h) || !strings.Contains(h.Hint, "vm.max_map_count=70000") || !strings.Contains(err.Error(), "pid 7: 70000 VMAs") {
		t.Errorf("above the limit: %v", err)
	}
	if n, err := maxMapCount(); err != nil || n <= 0 {
		t.Errorf("vm.max_map_count: %d, %v", n, err)
	}
}
