package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/skylane/skylane/internal/syscalls"
)

// CPU accounting of the stream rows: CPU seconds per GB moved, ours and
// the baseline's, measured the same way in the same run. Both sides run in
// this process (our stacks and nexuses, or the kernel sockets' readers and
// writers), so a side's CPU is this process's, all threads (getrusage),
// plus the machine's softirq time (/proc/stat): the kernel's receive work
// that runs on no thread of ours (RPS on the other core, ksoftirqd).
//
// Caveat, said next to every figure: with tick accounting (a kernel
// without CONFIG_IRQ_TIME_ACCOUNTING, as the 2-core VM's) a tick that
// lands in a softirq on one of our threads counts in both, so the
// softirq-heavy side (the kernel's) is overstated by up to its softirq
// share; and the softirq time of the whole machine includes other
// processes'. The process-only figure is reported beside it as the lower
// bound.

// cpuSample is a snapshot of the CPU time the measured paths can use.
type cpuSample struct {
	proc    time.Duration // this process, all threads, user + system
	softirq time.Duration // the machine's softirq time, all CPUs
}

// cpuUse is the CPU time spent between two samples.
type cpuUse cpuSample

// userHz is the unit of /proc/stat: USER_HZ, 100 on every Linux
// architecture Go runs on.
const userHz = 100

func sampleCPU() (cpuSample, error) {
	proc, err := syscalls.ProcessCPU()
	if err != nil {
		return cpuSample{}, fmt.Errorf("cpu accounting: %w", err)
	}
	s := cpuSample{proc: proc}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuSample{}, fmt.Errorf("cpu accounting: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	// cpu user nice system idle iowait irq softirq ...
	if len(f) < 8 || f[0] != "cpu" {
		return cpuSample{}, fmt.Errorf("cpu accounting: /proc/stat starts %q", line)
	}
	ticks, err := strconv.ParseUint(f[7], 10, 64)
	if err != nil {
		return cpuSample{}, fmt.Errorf("cpu accounting: /proc/stat softirq: %w", err)
	}
	s.softirq = time.Duration(ticks) * time.Second / userHz
	return s, nil
}

func (s cpuSample) since(a cpuSample) cpuUse {
	return cpuUse{proc: s.proc - a.proc, softirq: s.softirq - a.softirq}
}

// cpuPerGB is a side's CPU seconds per GB, rounds' medians.
type cpuPerGB struct{ total, proc []float64 }

// add records a round that moved bits in u.
func (c *cpuPerGB) add(u cpuUse, bits float64) {
	gb := bits / 8 / 1e9
	if gb <= 0 {
		return
	}
	c.total = append(c.total, (u.proc+u.softirq).Seconds()/gb)
	c.proc = append(c.proc, u.proc.Seconds()/gb)
}

// cpuExtras adds the figures of ours and base to x, under the names the
// bench contract gives.
func cpuExtras(x map[string]any, ours, base cpuPerGB) {
	if len(ours.total) == 0 || len(base.total) == 0 {
		return
	}
	o, b := median(ours.total), median(base.total)
	x["cpu_s_per_gb"] = round2(o)
	x["baseline_cpu_s_per_gb"] = round2(b)
	x["cpu_process_s_per_gb"] = round2(median(ours.proc))
	x["baseline_cpu_process_s_per_gb"] = round2(median(base.proc))
	x["cpu_vs_baseline"] = round2(o / b) // below 1: we spend less per byte
}

// withCPU wraps a stream measurement so that it records each round's CPU
// per GB in c.
func withCPU(stream func(time.Duration) (Rate, error), c *cpuPerGB) func(time.Duration) (Rate, error) {
	return func(d time.Duration) (Rate, error) {
		r, err := stream(d)
		if err == nil {
			c.add(r.cpu, r.Count)
		}
		return r, err
	}
}
