package bench

import (
	"testing"
	"time"
)

// TestAttachScenario runs the attach row briefly and checks it was
// measured, lower-is-better with the ratio BENCH.md defines.
func TestAttachScenario(t *testing.T) {
	rep, err := runAttach(Config{Duration: 300 * time.Millisecond, Rounds: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Scenario != "attach" || len(rep.Results) != 1 {
		t.Fatalf("report %+v", rep)
	}
	r := rep.Results[0]
	if r.Name != attachRow || !r.LowerIsBetter || r.Value <= 0 || r.BaselineValue <= 0 || r.Ratio <= 0 {
		t.Fatalf("row not measured: %+v", r)
	}
	if r.Extra["attaches"].(int) < 1 || r.Extra["baseline_listens"].(int) < 1 {
		t.Errorf("no attach or no listen timed: %v", r.Extra)
	}
	t.Logf("%s: %.0f %s vs %.1f (%s): ratio %.4f %v", r.Name, r.Value, r.Unit, r.BaselineValue, r.BaselineName, r.Ratio, r.Extra)
}
