package bench

import (
	"math"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/nettest"
)

// TestUDPScenario runs both udp rows briefly, as root, and checks they were
// measured: values, baselines, sender rates, and the ratio they imply.
func TestUDPScenario(t *testing.T) {
	nettest.RequirePriv(t)
	rep, err := runUDP(Config{Duration: 300 * time.Millisecond, Rounds: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Scenario != "udp" || len(rep.Results) != len(udpRows) {
		t.Fatalf("report %+v", rep)
	}
	for i, r := range rep.Results {
		if r.Name != udpRows[i].name || r.Unit != "Mpps" || r.Value <= 0 || r.BaselineValue <= 0 || r.BaselineName == "" {
			t.Fatalf("row %+v not measured", r)
		}
		if math.Abs(r.Ratio-r.Value/r.BaselineValue) > 1e-9 {
			t.Fatalf("row %s: ratio %v != %v/%v", r.Name, r.Ratio, r.Value, r.BaselineValue)
		}
		if r.Extra["sender_mpps_ours"].(float64) <= 0 || r.Extra["sender_mpps_base"].(float64) <= 0 {
			t.Fatalf("row %s: sender rate missing: %v", r.Name, r.Extra)
		}
		t.Logf("%s: %.2f Mpps vs %.2f Mpps (ratio %.2f), extras %v", r.Name, r.Value, r.BaselineValue, r.Ratio, r.Extra)
	}
}
