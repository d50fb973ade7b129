package bench

import (
	"math"
	"testing"
	"time"
)

// TestFswTxScenario runs the validate row briefly and checks it was measured
// and that the ratio is value/baseline.
func TestFswTxScenario(t *testing.T) {
	const name = "validate/size=64"
	rep, err := runFswTx(Config{Duration: 100 * time.Millisecond, Rounds: 1, Filter: name})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Scenario != "fsw-tx" || len(rep.Results) != 1 {
		t.Fatalf("report %+v", rep)
	}
	r := rep.Results[0]
	if r.Name != name || r.Unit != "Mpps" || r.Value <= 0 || r.BaselineValue <= 0 || r.BaselineName == "" {
		t.Fatalf("row %+v not measured", r)
	}
	if math.Abs(r.Ratio-r.Value/r.BaselineValue) > 1e-9 {
		t.Fatalf("ratio %v != %v/%v", r.Ratio, r.Value, r.BaselineValue)
	}
	if r.Extra["drops"] != 0 {
		t.Fatalf("extras %v", r.Extra)
	}
}
