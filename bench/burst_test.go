package bench

import (
	"math"
	"testing"
	"time"
)

// TestBurstScenario runs the burst scenario briefly: every row is
// measured, the ratios follow BENCH.md (baseline/value for the latency
// row, value/baseline for the others), and the regulated run shows the
// AQM at work.
func TestBurstScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("real-time scenario: a few seconds")
	}
	rep, err := runBurst(Config{Duration: 800 * time.Millisecond, Rounds: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Scenario != "burst" || len(rep.Results) != 3 {
		t.Fatalf("report %+v", rep)
	}
	rows := map[string]Result{}
	for _, r := range rep.Results {
		rows[r.Name] = r
		t.Logf("%s: %.3f %s, baseline %.3f, ratio %.2f, %v", r.Name, r.Value, r.Unit, r.BaselineValue, r.Ratio, r.Extra)
		if r.Value <= 0 || r.BaselineValue <= 0 || r.BaselineName == "" {
			t.Errorf("row %s not measured: %+v", r.Name, r)
		}
	}
	rpc := rows[burstRowRPC]
	if !rpc.LowerIsBetter || math.Abs(rpc.Ratio-rpc.BaselineValue/rpc.Value) > 0.01*rpc.Ratio {
		t.Errorf("rpc row ratio %v, want baseline/value = %v", rpc.Ratio, rpc.BaselineValue/rpc.Value)
	}
	for _, name := range []string{burstRowUtil, burstRowFair} {
		r := rows[name]
		if r.LowerIsBetter || math.Abs(r.Ratio-r.Value/r.BaselineValue) > 1e-9 {
			t.Errorf("%s ratio %v, want value/baseline", name, r.Ratio)
		}
		if r.Value > 1.05 || r.BaselineValue > 1.05 { // a window's edges: the wire's burst
			t.Errorf("%s above 1: %+v", name, r)
		}
	}
	if x := rpc.Extra; x["advisory_suspends"].(uint64) == 0 || x["fifo_tail_drops"].(uint64) == 0 {
		t.Errorf("the bulk flows were never held back, or the FIFO never overflowed: %v", x)
	}
	// The unresponsive app loses its excess to the AQM (early or CoDel
	// drops), the advisory flows lose nothing at the queue.
	x := rpc.Extra
	if x["unresp_aqm_early_drops"].(uint64)+x["unresp_aqm_codel_drops"].(uint64) == 0 {
		t.Errorf("the unresponsive app was never dropped by the AQM: %v", x)
	}
	if x["unresp_bulk_aqm_drops"].(uint64) != 0 || x["bulk_aqm_drops"].(uint64) != 0 {
		t.Errorf("advisory flows lost packets at the queue: %v", x)
	}
	if s, d := x["unresp_sent"].(uint64), x["unresp_delivered"].(uint64); d == 0 || d >= s || x["unresp_dropped"].(uint64) == 0 {
		t.Errorf("unresponsive app: sent %d, delivered %d: %v", s, d, x)
	}
	// Filtering runs nothing for other names.
	if rep, err := runBurst(Config{Duration: time.Millisecond, Rounds: 1, Filter: "no-such-row"}); err != nil || len(rep.Results) != 0 {
		t.Errorf("filtered run: %+v, %v", rep, err)
	}
}
