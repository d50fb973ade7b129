package main

import (
	"testing"

	"github.com/skylane/skylane/bench"
)

// TestMain lets the processes row re-execute this test binary as its child.
func TestMain(m *testing.M) {
	bench.RunChild()
	m.Run()
}

func TestDemo(t *testing.T) {
	if err := runDemo([]string{"-packets", "20000", "-idle", "200ms"}); err != nil {
		t.Fatal(err)
	}
}

func TestUnknownCommands(t *testing.T) {
	for _, args := range [][]string{{}, {"nope"}, {"bench", "nope"}, {"bench"}} {
		if err := run(args); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}
