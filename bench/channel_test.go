package bench

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// oneCPUEnv marks the child of TestProcessesOnOneCPU, which runs on one CPU.
const oneCPUEnv = "SKYLANE_BENCH_ONE_CPU"

// TestProcessesOnOneCPU runs the channel's two ends in two processes that
// share one CPU, as a busy host often makes them, and checks that they
// move packets at least a quarter as fast as the same loops in goroutines
// of one process on that CPU (which the Go scheduler hands the CPU between
// without the kernel). A loop that polls without ever giving up the CPU
// keeps it for its whole time slice while the only one who can feed it
// waits: the pair then moves one ring's worth per slice, a few hundredths
// of the goroutines' rate (the processes row's collapse to 0.04 Mpps).
//
// The parent pins its thread to one CPU and re-runs this test in a child,
// which inherits the pin, and so does the app process the child starts.
func TestProcessesOnOneCPU(t *testing.T) {
	if os.Getenv(oneCPUEnv) == "" {
		runOnOneCPU(t)
		return
	}
	if n := runtime.NumCPU(); n != 1 {
		t.Fatalf("the child sees %d CPUs, want 1", n)
	}
	const rounds = 3
	var gs, ps []float64
	for range rounds {
		g, err := pumpChannel(32, 64, 200*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		p, err := pumpProcess(32, 64, 200*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		gs, ps = append(gs, g.PerSecond()), append(ps, p.PerSecond())
	}
	g, p := median(gs)/1e6, median(ps)/1e6
	t.Logf("one CPU: goroutines %.2f Mpps, processes %.2f Mpps (%.3f×)", g, p, p/g)
	if p < g/4 {
		t.Fatalf("two processes on one CPU move %.3f Mpps, %.3f× the %.2f Mpps of two goroutines: want at least 0.25×", p, p/g, g)
	}
}

// runOnOneCPU re-runs TestProcessesOnOneCPU in a child pinned to the CPU
// this goroutine's thread is allowed first. The thread stays locked and
// pinned: it ends with the test's goroutine.
func runOnOneCPU(t *testing.T) {
	runtime.LockOSThread() // never unlocked: the pinned thread exits with this goroutine
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	cpu := -1
	for i := range 1024 {
		if set.IsSet(i) {
			cpu = i
			break
		}
	}
	if cpu < 0 {
		t.Fatal("no CPU in this thread's affinity mask")
	}
	set.Zero()
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestProcessesOnOneCPU$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), oneCPUEnv+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("child on CPU %d:\n%s", cpu, out)
	if err != nil {
		t.Fatal(fmt.Errorf("child on one CPU: %w", err))
	}
}
