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
		if rep.Scenario != "fsw-rx" || len(rep.Results) == 0 {
			t.Fatalf("%s: report %+v", name, rep)
		}
		r := rep.Results[0] // the filter matches the /capture row too, after it
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

// TestFswRxCaptureRow: the capture row is measured against the switch
// without a capture, and counts what its capture matched.
func TestFswRxCaptureRow(t *testing.T) {
	rep, err := runFswRx(Config{Duration: 100 * time.Millisecond, Rounds: 1, Filter: "flows=1024/size=64/capture"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 1 {
		t.Fatalf("report %+v", rep)
	}
	r := rep.Results[0]
	if r.Value <= 0 || r.BaselineValue <= 0 || r.BaselineName != fswCaptureBase || math.Abs(r.Ratio-r.Value/r.BaselineValue) > 1e-9 {
		t.Fatalf("row %+v not measured", r)
	}
	if m, _ := r.Extra["capture_matched"].(uint64); m == 0 {
		t.Fatalf("row %s: the capture matched nothing: %v", r.Name, r.Extra)
	}
}
