package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/nettest"
)

// TestBurstScenario runs the burst scenario briefly: every row is
// measured, the ratios follow docs/benchmarks.md (baseline/value for the latency
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
	checkBurstReport(t, rep, "")
	// Filtering runs nothing for other names.
	if rep, err := runBurst(Config{Duration: time.Millisecond, Rounds: 1, Filter: "no-such-row"}); err != nil || len(rep.Results) != 0 {
		t.Errorf("filtered run: %+v, %v", rep, err)
	}
	if _, err := runBurst(Config{Duration: time.Millisecond, Rounds: 1, Driver: "afxdp"}); err == nil {
		t.Error("a driver without Dev was accepted")
	}
}

// TestBurstDevScenario runs the burst rows on a veth pair briefly, as
// root, with the kernel's stack at the far end: the same checks as on
// memif, and the targets' direction where it cannot flake on a loaded
// two-core machine:
//
//   - the regulated RPC p99 well below the FIFO's: a full FIFO alone
//     holds a request 2048 × 1514 B at 100 Mbit/s = 248 ms, which load
//     only lengthens, while the regulated p99 is a few ms (the row's
//     goal: idle p99 + 20 ms, logged);
//   - Jain's index of the regulated bulk flows at least 0.9 (target 0.95,
//     logged; DRR gives the eight backlogged flows equal bytes, 1.00 here)
//     and above the FIFO's, which serves the ports in order;
//   - the regulated utilisation at least 0.3, not the target's 0.9
//     (logged): when other work takes the CPU, the pacer loses link time
//     beyond its 2 ms of credit, and suspended apps wake late to refill
//     the drained queue (0.59 to 0.87 measured under a load average of 4
//     to 6, with and without -race; 0.99 otherwise), while a pacer at a
//     fraction of its rate or a flow never resumed falls far below.
//
// The window is 2 s: the FIFO's RPC completes about twice a second (each
// request waits out the 248 ms queue, and one dropped at the full tail
// waits for its 200 ms retry); with none, its p99 is a lower bound.
func TestBurstDevScenario(t *testing.T) {
	nettest.RequirePriv(t)
	if testing.Short() {
		t.Skip("real-time scenario: about 12 s")
	}
	rep, err := runBurst(Config{Duration: 2 * time.Second, Rounds: 1, Dev: true})
	if err != nil {
		t.Fatal(err)
	}
	rows := checkBurstReport(t, rep, "veth/")
	rpc, util, fair := rows["veth/"+burstRowRPC], rows["veth/"+burstRowUtil], rows["veth/"+burstRowFair]
	if rpc.Value >= rpc.BaselineValue/2 {
		t.Errorf("regulated RPC p99 %.2f ms not well below the FIFO's %.2f ms", rpc.Value, rpc.BaselineValue)
	}
	if fair.Value < 0.9 || fair.Value <= fair.BaselineValue {
		t.Errorf("Jain's index %.3f (FIFO %.3f): the regulated flows do not share the link", fair.Value, fair.BaselineValue)
	}
	if util.Value < 0.3 {
		t.Errorf("regulated utilisation %.2f", util.Value)
	}
	if rpc.Extra["driver"] != "afpacket" {
		t.Errorf("driver %v, want the default afpacket", rpc.Extra["driver"])
	}
	t.Logf("goals: p99 %.2f ms ≤ goal %.2f ms, ratio %.1f ≥ 10; utilisation %.2f ≥ 0.9; Jain %.3f ≥ 0.95",
		rpc.Value, rpc.Extra["goal_ms"], rpc.Ratio, util.Value, fair.Value)

	if rep, err := runBurst(Config{Duration: time.Millisecond, Rounds: 1, Dev: true, Filter: "no-such-row"}); err != nil || len(rep.Results) != 0 {
		t.Errorf("filtered run: %+v, %v", rep, err)
	}
	if _, err := runBurst(Config{Duration: time.Millisecond, Rounds: 1, Dev: true, Driver: "tun"}); err == nil {
		t.Error("burst --dev accepted the tun driver")
	}
}

// checkBurstReport checks the rows every burst run makes, named with
// prefix: measured, the ratios as docs/benchmarks.md has them, the AQM at work
// (advisories, the FIFO overflowing, the unresponsive app dropped, the
// advisory flows never), and returns them by name.
func checkBurstReport(t *testing.T, rep Report, prefix string) map[string]Result {
	t.Helper()
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
	rpc, ok := rows[prefix+burstRowRPC]
	if !ok {
		t.Fatalf("no row %s: %v", prefix+burstRowRPC, rows)
	}
	if !rpc.LowerIsBetter || math.Abs(rpc.Ratio-rpc.BaselineValue/rpc.Value) > 0.01*rpc.Ratio {
		t.Errorf("rpc row ratio %v, want baseline/value = %v", rpc.Ratio, rpc.BaselineValue/rpc.Value)
	}
	for _, name := range []string{prefix + burstRowUtil, prefix + burstRowFair} {
		r, ok := rows[name]
		if !ok {
			t.Fatalf("no row %s: %v", name, rows)
		}
		if r.LowerIsBetter || math.Abs(r.Ratio-r.Value/r.BaselineValue) > 1e-9 {
			t.Errorf("%s ratio %v, want value/baseline", name, r.Ratio)
		}
		if r.Value > 1.05 || r.BaselineValue > 1.05 { // a window's edges: the wire's burst
			t.Errorf("%s above 1: %+v", name, r)
		}
	}
	x := rpc.Extra
	if x["advisory_suspends"].(uint64) == 0 || x["fifo_tail_drops"].(uint64) == 0 {
		t.Errorf("the bulk flows were never held back, or the FIFO never overflowed: %v", x)
	}
	// The unresponsive app loses its excess to the AQM (early or CoDel
	// drops), the advisory flows lose nothing at the queue.
	if x["unresp_aqm_early_drops"].(uint64)+x["unresp_aqm_codel_drops"].(uint64) == 0 {
		t.Errorf("the unresponsive app was never dropped by the AQM: %v", x)
	}
	if x["unresp_bulk_aqm_drops"].(uint64) != 0 || x["bulk_aqm_drops"].(uint64) != 0 {
		t.Errorf("advisory flows lost packets at the queue: %v", x)
	}
	if s, d := x["unresp_sent"].(uint64), x["unresp_delivered"].(uint64); d == 0 || d >= s || x["unresp_dropped"].(uint64) == 0 {
		t.Errorf("unresponsive app: sent %d, delivered %d: %v", s, d, x)
	}
	return rows
}

// A trial kind whose RPC answered nothing in its window is a figure, not
// an error: its p99 is a lower bound (the window, or burstRPCWait when the
// p99 falls on a request given up as lost), and the row's ratio is the
// bound it implies, in the JSON and in the table.
func TestBurstP99Bounds(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var d []time.Duration
		for _, x := range v {
			d = append(d, time.Duration(x)*time.Millisecond)
		}
		return d
	}
	for _, c := range []struct {
		name  string
		ts    []burstTrial
		ms    float64
		bound string
	}{
		{"measured", []burstTrial{{rtts: ms(3, 1, 2), elapsed: time.Second}}, 3, ""},
		{"pooled", []burstTrial{{rtts: ms(1), elapsed: time.Second}, {rtts: ms(5), elapsed: time.Second}}, 5, ""},
		{"nothing answered", []burstTrial{{elapsed: 600 * time.Millisecond}, {elapsed: 700 * time.Millisecond}}, 600, BoundLower},
		{"p99 on a lost one", []burstTrial{{rtts: ms(300, 400), lost: 1, elapsed: time.Second}}, float64(burstRPCWait / time.Millisecond), BoundLower},
		{"nothing answered, one lost", []burstTrial{{lost: 1, elapsed: time.Second}}, float64(burstRPCWait / time.Millisecond), BoundLower},
	} {
		got := burstP99(c.ts)
		if got.ms != c.ms || got.bound != c.bound {
			t.Errorf("%s: p99 %v (bound %q), want %v (%q)", c.name, got.ms, got.bound, c.ms, c.bound)
		}
	}

	// A baseline that moved nothing gives no ratio (not 0, not +Inf).
	if r := Throughput("x", "Mpps", 1, "b", 0); r.RatioBound != BoundUnknown || r.Ratio != 0 {
		t.Errorf("Throughput over a zero baseline: ratio %v (bound %q)", r.Ratio, r.RatioBound)
	}
	// The FIFO unmeasured: the ratio is a lower bound; ours unmeasured: an
	// upper one; both: unknown, no ratio printed.
	for _, c := range []struct {
		bound, baseBound, ratioBound string
		ratio                        float64
		text                         string
	}{
		{"", "", "", 100, " 100.00"},
		{"", BoundLower, BoundLower, 100, " >100.00"},
		{BoundLower, "", BoundUpper, 100, " <100.00"},
		{BoundLower, BoundLower, BoundUnknown, 0, " unknown"},
	} {
		r := Latency("rpc", "ms (p99)", 6, c.bound, "fifo", 600, c.baseBound)
		if r.RatioBound != c.ratioBound || r.Ratio != c.ratio || !r.LowerIsBetter {
			t.Errorf("bounds %q/%q: ratio %v (bound %q), want %v (%q)", c.bound, c.baseBound, r.Ratio, r.RatioBound, c.ratio, c.ratioBound)
		}
		var js, txt bytes.Buffer
		rep := Report{Scenario: "burst", Results: []Result{r}}
		if err := rep.Print(&js, true); err != nil {
			t.Fatal(err)
		}
		if err := rep.Print(&txt, false); err != nil {
			t.Fatal(err)
		}
		var got struct {
			Results []map[string]any `json:"results"`
		}
		if err := json.Unmarshal(js.Bytes(), &got); err != nil {
			t.Fatal(err)
		}
		if b, _ := got.Results[0]["baseline_bound"].(string); b != c.baseBound {
			t.Errorf("JSON baseline_bound %q, want %q: %s", b, c.baseBound, js.String())
		}
		if b, _ := got.Results[0]["ratio_bound"].(string); b != c.ratioBound {
			t.Errorf("JSON ratio_bound %q, want %q: %s", b, c.ratioBound, js.String())
		}
		if !strings.Contains(txt.String(), c.text+"\n") {
			t.Errorf("table does not end its row with ratio %q:\n%s", c.text, txt.String())
		}
	}
}
