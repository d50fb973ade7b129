package bench

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/skylane/skylane/channel"
	"golang.org/x/sys/unix"
)

// TestBlockedAppSleeps: an app that can do nothing (its nexus stopped
// taking packets and handing buffers) sleeps rather than polls: over
// 300 ms its process uses under 2% of a CPU. The old loops polled with
// runtime.Gosched alone, which never gives the CPU to another process:
// they used all the CPU the host gave them, and on a CPU shared with the
// nexus that was the nexus's time, the processes row's collapse.
func TestBlockedAppSleeps(t *testing.T) {
	c, err := channel.New(channel.Options{Name: "blocked"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd, err := startApp(ctx, c, 32, 64)
	if cmd != nil {
		defer func() {
			c.Close() // the child ends when told its channel is defunct
			if err := cmd.Wait(); err != nil {
				t.Errorf("child: %v", err)
			}
		}()
	}
	if err != nil {
		t.Fatal(err)
	}
	// Hand out the working set once, take what the app sends with it,
	// and then nothing more: the app has no buffer left.
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	bufs := make([]channel.Buf, 64)
	taken := 0
	for deadline := time.Now().Add(10 * time.Second); taken < 8; {
		n, err := c.TakeTX(bufs)
		if err != nil {
			t.Fatal(err)
		}
		taken += n
		if n == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("the app sent %d packets in 10s, want 8", taken)
			}
			c.Wait(10 * time.Millisecond)
		}
	}
	pid := cmd.Process.Pid
	cpu0, t0 := childCPU(pid), time.Now()
	if cpu0 == 0 {
		t.Fatalf("cannot read the child's CPU time in /proc/%d/task", pid)
	}
	time.Sleep(300 * time.Millisecond) // the span measured, not a wait for an event
	used, span := childCPU(pid)-cpu0, time.Since(t0)
	t.Logf("blocked app: %v of CPU in %v (%.2f%%)", used, span, 100*used.Seconds()/span.Seconds())
	if used > span/50 {
		t.Fatalf("the blocked app used %v of CPU in %v: it polls instead of sleeping", used, span)
	}
}

// oneCPUEnv marks the child of TestProcessesOnOneCPU, which runs on one CPU.
const oneCPUEnv = "SKYLANE_BENCH_ONE_CPU"

// TestProcessesOnOneCPU runs the channel's two ends in two processes that
// share one CPU, as a busy host often makes them, and checks the CPU time
// they spend per packet against the same loops in goroutines of one
// process on that CPU (which the Go scheduler hands the CPU between
// without the kernel). An end that waits for its peer must hand it the
// CPU at once (sched_yield, then sleep): one that polls on keeps it for
// the rest of its time slice, and the pair moves one ring's worth per
// slice. The loops that polled with runtime.Gosched alone spent 145-531×
// the goroutines' CPU per packet here (0.04 Mpps); these spend 1.6-1.8×,
// up to 7× when other processes crowd the CPU, whose runqueue then makes
// each hand-over wait and carry fewer packets. The bound is 20×. (Under
// -race the old loops gave 8-41×: TestBlockedAppSleeps catches them there.)
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
	var gs, ps []pumpStats
	for range rounds {
		g, err := pumpChannel(32, 64, 200*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		p, err := pumpProcess(32, 64, 200*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		gs, ps = append(gs, g), append(ps, p)
	}
	g, p := medianCPU(gs), medianCPU(ps)
	t.Logf("one CPU: goroutines %.2f Mpps, %v CPU per packet; processes %.2f Mpps, %v CPU per packet (%.1f×)",
		g.PerSecond()/1e6, g.cpuPerPacket(), p.PerSecond()/1e6, p.cpuPerPacket(), float64(p.cpuPerPacket())/float64(g.cpuPerPacket()))
	if p.cpuPerPacket() > 20*g.cpuPerPacket() {
		t.Fatalf("two processes on one CPU spend %v of CPU per packet, %.1f× the %v of two goroutines: want at most 20×",
			p.cpuPerPacket(), float64(p.cpuPerPacket())/float64(g.cpuPerPacket()), g.cpuPerPacket())
	}
}

// medianCPU returns the run of median CPU time per packet.
func medianCPU(v []pumpStats) pumpStats {
	s := slices.Clone(v)
	slices.SortFunc(s, func(a, b pumpStats) int { return cmp.Compare(a.cpuPerPacket(), b.cpuPerPacket()) })
	return s[len(s)/2]
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
