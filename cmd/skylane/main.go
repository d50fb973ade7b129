// Command skylane runs the Skylane nexus, its demo and its benchmarks.
package main

import (
	"fmt"
	"os"

	"github.com/skylane/skylane/bench"
)

func main() {
	bench.RunChild()
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "skylane:", err)
		os.Exit(1)
	}
}
