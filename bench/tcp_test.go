package bench

import (
	"math"
	"testing"
	"time"
)

// TestTCPScenario runs every row briefly and checks each was measured, with
// its baseline, the ratio docs/benchmarks.md defines (value/baseline for throughput,
// baseline/value for latency) and the batching figures.
func TestTCPScenario(t *testing.T) {
	rep, err := runTCP(Config{Duration: 200 * time.Millisecond, Rounds: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Scenario != "tcp" || len(rep.Results) != 4 {
		t.Fatalf("report %+v", rep)
	}
	for i, name := range []string{tcpRowFsw, tcpRowFswKernel, tcpRowFswCut, tcpRowRPC} {
		r := rep.Results[i]
		if r.Name != name || r.Value <= 0 || r.BaselineValue <= 0 || r.BaselineName == "" {
			t.Fatalf("row %+v not measured", r)
		}
		want := r.Value / r.BaselineValue
		if r.LowerIsBetter {
			want = r.BaselineValue / r.Value
		}
		if math.Abs(r.Ratio-want) > 1e-9 {
			t.Errorf("row %s: ratio %v, want %v", r.Name, r.Ratio, want)
		}
		if !r.LowerIsBetter {
			checkCPUExtras(t, r)
		} else {
			checkRPCExtras(t, r)
		}
		t.Logf("%s: %.2f %s vs %.2f (%s): ratio %.2f %v", r.Name, r.Value, r.Unit, r.BaselineValue, r.BaselineName, r.Ratio, r.Extra)
	}
	if name := rep.Results[3].Name; name != tcpRowRPC || !rep.Results[3].LowerIsBetter {
		t.Errorf("row %s is not lower-is-better", name)
	}
	x := rep.Results[0].Extra
	if x["rx_super_packets"].(uint64) == 0 || x["tx_gso_packets"].(uint64) == 0 {
		t.Errorf("the stream formed no super packet or sent no GSO packet: %v", x)
	}
	if x["tx_drops"].(uint64) != 0 {
		t.Errorf("the flowswitch dropped packets of honest stacks: %v", x)
	}
	if x["tx_super_whole"].(uint64) == 0 || x["tx_super_cut"].(uint64) != 0 {
		t.Errorf("the super packets did not cross the wire whole: %v", x)
	}
	if c := rep.Results[2].Extra; c["tx_super_cut"].(uint64) == 0 || c["tx_segments_cut"].(uint64) <= c["tx_super_cut"].(uint64) || c["tx_drops"].(uint64) != 0 {
		t.Errorf("%s: the nexus cut no super packet: %v", tcpRowFswCut, c)
	}
	if _, ok := x["rss_per_idle_conn_kib"]; !ok {
		t.Errorf("no idle-connection RSS: %v", x)
	}
}

// checkRPCExtras checks that an rpc row reports the p99s, the CPU per
// round trip of both sides and the busy-poll variant's figures.
func checkRPCExtras(t *testing.T, r Result) {
	t.Helper()
	x := r.Extra
	for _, k := range []string{"p99_us", "baseline_p99_us", "cpu_us_per_rpc", "baseline_cpu_us_per_rpc", "busy_poll_p50_us", "busy_poll_p99_us", "busy_poll_cpu_us_per_rpc"} {
		if v, ok := x[k].(float64); !ok || v <= 0 {
			t.Errorf("%s: %s = %v", r.Name, k, x[k])
		}
	}
	if x["p99_us"].(float64) < r.Value || x["busy_poll_p99_us"].(float64) < x["busy_poll_p50_us"].(float64) {
		t.Errorf("%s: percentiles out of order: %v", r.Name, x)
	}
}
