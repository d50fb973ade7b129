package bench

import (
	"math"
	"testing"
	"time"
)

// TestFswRxScenario runs the flows=1 and flows=1024 rows briefly and checks
// they were measured and that the ratio is value/baseline.
func TestFswRxScenario(t *testing.T) {
	for _, name := range []string{"flows=1/size=64", "flows=1024/size=64"} {
		rep, err := runFswRx(Config{Duration: 100 * time.Millisecond, Rounds: 1, Filter: name})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Scenario != "fsw-rx" || len(rep.Results) != 1 {
			t.Fatalf("%s: report %+v", name, rep)
		}
		r := rep.Results[0]
		if r.Name != name || r.Unit != "Mpps" || r.Value <= 0 || r.BaselineValue <= 0 || r.BaselineName == "" {
			t.Fatalf("row %+v not measured", r)
		}
		if math.Abs(r.Ratio-r.Value/r.BaselineValue) > 1e-9 {
			t.Fatalf("row %s: ratio %v != %v/%v", r.Name, r.Ratio, r.Value, r.BaselineValue)
		}
		if r.Extra["deliveries_per_batch"].(float64) <= 0 || r.Extra["flow_batches_per_batch"].(float64) <= 0 {
			t.Fatalf("row %s: extras %v", r.Name, r.Extra)
		}
	}
}
