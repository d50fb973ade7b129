package bench

import (
	"math"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/nettest"
)

// TestTCPDevScenario runs the tcp --dev row briefly, as root, and checks it
// was measured: its value, its baseline (both variants), the ratio, and
// that the stream went through the flowswitch as designed (super packets
// formed, no transmit check refusing the honest stack).
func TestTCPDevScenario(t *testing.T) {
	nettest.RequirePriv(t)
	nettest.RequireCommand(t, "ethtool")
	rep, err := runTCPDev(Config{Duration: 400 * time.Millisecond, Rounds: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Scenario != "tcp" || len(rep.Results) != len(tcpDevRows) {
		t.Fatalf("report %+v", rep)
	}
	for i, r := range rep.Results {
		if r.Name != tcpDevRows[i].name || r.Value <= 0 || r.BaselineValue <= 0 || r.BaselineName == "" {
			t.Fatalf("row %+v not measured", r)
		}
		if tcpDevRows[i].rpc {
			// Latency: lower is better, the ratio is baseline/value and
			// the p99s of both sides are reported.
			x := r.Extra
			if r.Unit != "µs (p50)" || !r.LowerIsBetter || math.Abs(r.Ratio-r.BaselineValue/r.Value) > 1e-9 ||
				x["baseline_p99_us"].(float64) < r.BaselineValue {
				t.Errorf("%s: %+v", r.Name, r)
			}
			checkRPCExtras(t, r)
			t.Logf("%s: p50 %.1f µs vs %.1f (ratio %.2f), %v", r.Name, r.Value, r.BaselineValue, r.Ratio, x)
			continue
		}
		if r.Unit != "Gbit/s" || math.Abs(r.Ratio-r.Value/r.BaselineValue) > 1e-9 {
			t.Errorf("%s: ratio %v != %v/%v", r.Name, r.Ratio, r.Value, r.BaselineValue)
		}
		checkCPUExtras(t, r)
		x := r.Extra
		if !tcpDevRows[i].peerOffloads && x["baseline_no_offload_gbps"].(float64) <= 0 {
			t.Errorf("%s: no baseline without offloads: %v", r.Name, x)
		}
		// Super packets reach the switch whole from either driver: it
		// delivers those that fit the app's buffers (or merges segments
		// into them) and cuts the larger ones; a slow run (-race) may see
		// only the one or the other.
		if x["rx_super_packets"].(uint64)+x["rx_super_split"].(uint64) == 0 {
			t.Errorf("%s: no super packet delivered or cut: %v", r.Name, x)
		}
		if x["switch_tx_drops"].(uint64) != 0 {
			t.Errorf("%s: the transmit checks refused packets of an honest stack: %v", r.Name, x)
		}
		t.Logf("%s: %.2f Gbit/s vs %.2f (ratio %.2f), %v", r.Name, r.Value, r.BaselineValue, r.Ratio, x)
	}

	if rep, err := runTCPDev(Config{Duration: time.Millisecond, Filter: "nothing"}); err != nil || len(rep.Results) != 0 {
		t.Errorf("filtered out: %+v, %v", rep, err)
	}
}
