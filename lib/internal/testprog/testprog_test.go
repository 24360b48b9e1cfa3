package testprog

import (
	"testing"
	"time"
)

func TestTargetRuns(t *testing.T) {
	p := Start(t, "tick")
	if p.Handler == 0 || p.TidAddr == 0 || p.Restorer == 0 {
		t.Fatalf("info missing: %+v", p)
	}
	if !p.Ticks(2 * time.Second) {
		t.Fatal("no tick")
	}
	c := Start(t, "child")
	if c.Child == 0 {
		t.Fatal("no child pid")
	}
}
