package bench

import (
	"testing"
	"time"
)

// TestSampleCPU checks that the process's CPU time grows by about what a
// busy loop spent, and that softirq time never goes backwards.
func TestSampleCPU(t *testing.T) {
	a, err := sampleCPU()
	if err != nil {
		t.Fatal(err)
	}
	spin := 50 * time.Millisecond
	for t0 := time.Now(); time.Since(t0) < spin; {
	}
	b, err := sampleCPU()
	if err != nil {
		t.Fatal(err)
	}
	u := b.since(a)
	// The loop ran for spin of wall time; on a busy machine it got less of
	// a CPU, but some, and never more than every CPU for the whole time.
	if u.proc <= 0 || u.softirq < 0 {
		t.Fatalf("CPU used %+v over a %v busy loop", u, spin)
	}
	var c cpuPerGB
	c.add(cpuUse{proc: time.Second, softirq: time.Second}, 8e9) // 1 GB
	c.add(cpuUse{}, 0)                                          // nothing moved: no figure
	if len(c.total) != 1 || c.total[0] != 2 || c.proc[0] != 1 {
		t.Errorf("per GB %+v, want total 2 s, process 1 s", c)
	}
}

// checkCPUExtras checks that a stream row reports CPU per GB of both
// sides, the process figure within the total.
func checkCPUExtras(t *testing.T, r Result) {
	t.Helper()
	x := r.Extra
	for _, k := range []string{"", "baseline_"} {
		tot, ok1 := x[k+"cpu_s_per_gb"].(float64)
		proc, ok2 := x[k+"cpu_process_s_per_gb"].(float64)
		if !ok1 || !ok2 || proc <= 0 || tot < proc {
			t.Errorf("%s: %scpu_s_per_gb %v, %scpu_process_s_per_gb %v", r.Name, k, x[k+"cpu_s_per_gb"], k, x[k+"cpu_process_s_per_gb"])
		}
	}
}
