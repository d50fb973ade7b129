package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"testing"
	"time"
)

// TestChannelScenarioJSON runs two rows briefly and checks the report's
// shape: the fields of docs/benchmarks.md, measured values and the ratio they imply.
func TestChannelScenarioJSON(t *testing.T) {
	rep, err := runChannel(Config{Duration: 100 * time.Millisecond, Rounds: 1, Filter: "batch=32/size=64"})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := rep.Print(&out, true); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Scenario string `json:"scenario"`
		Machine  string `json:"machine"`
		Results  []struct {
			Name          string         `json:"name"`
			Value         float64        `json:"value"`
			Unit          string         `json:"unit"`
			BaselineName  string         `json:"baseline_name"`
			BaselineValue float64        `json:"baseline_value"`
			Ratio         float64        `json:"ratio"`
			Extra         map[string]any `json:"extra"`
		} `json:"results"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got.Scenario != "channel" || got.Machine == "" || len(got.Results) != 2 {
		t.Fatalf("report %s", out.String())
	}
	names := map[string]bool{}
	for _, r := range got.Results {
		names[r.Name] = true
		if r.Value <= 0 || r.BaselineValue <= 0 || r.Unit != "Mpps" || r.BaselineName == "" {
			t.Fatalf("row %+v not measured", r)
		}
		if math.Abs(r.Ratio-r.Value/r.BaselineValue) > 1e-9 {
			t.Fatalf("row %s: ratio %v != %v/%v", r.Name, r.Ratio, r.Value, r.BaselineValue)
		}
	}
	if !names["goroutines/batch=32/size=64"] || !names["processes/batch=32/size=64"] {
		t.Fatalf("rows %v", names)
	}
	// The processes row carries its ratio to the goroutines row of the
	// same report, the bar and whether it cleared it.
	g, p := got.Results[0], got.Results[1]
	vs, ok := p.Extra["vs_goroutines_batch32"].(float64)
	if !ok || math.Abs(vs-math.Round(p.Value/g.Value*1000)/1000) > 1e-9 {
		t.Fatalf("vs_goroutines_batch32 = %v, want %v/%v", p.Extra["vs_goroutines_batch32"], p.Value, g.Value)
	}
	if p.Extra["vs_goroutines_min"] != minVsGoroutines || p.Extra["vs_goroutines_ok"] != (p.Value/g.Value >= minVsGoroutines) {
		t.Fatalf("check fields %v", p.Extra)
	}
	for _, r := range got.Results {
		if cpu, _ := r.Extra["cpu_per_s"].(float64); cpu <= 0 {
			t.Fatalf("row %s: cpu_per_s %v", r.Name, r.Extra["cpu_per_s"])
		}
	}
}

// --rows processes measures the goroutines row too: it is the reference.
func TestProcessesRowBringsItsReference(t *testing.T) {
	rep, err := runChannel(Config{Duration: 60 * time.Millisecond, Rounds: 1, Filter: "processes"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 2 || rep.Results[0].Name != refRow || rep.Results[1].Name != procRow {
		t.Fatalf("rows %+v", rep.Results)
	}
	if rep.Results[0].BaselineValue != rep.Results[1].BaselineValue {
		t.Fatal("the two rows measured with one baseline report different ones")
	}
}

// TestMain lets the processes row re-execute this test binary as its child.
func TestMain(m *testing.M) {
	RunChild()
	m.Run()
}

// A closed Config.Stop ends a run before its next round, with
// ErrInterrupted, so the scenario's cleanup runs.
func TestMeasureStops(t *testing.T) {
	stop := make(chan struct{})
	close(stop)
	calls := 0
	run := func(time.Duration) (Rate, error) { calls++; return Rate{}, nil }
	_, _, err := Measure(Config{Duration: time.Millisecond, Rounds: 3, Stop: stop}, "row", run, run)
	if !errors.Is(err, ErrInterrupted) || calls != 0 {
		t.Fatalf("Measure = %v after %d runs; want ErrInterrupted before any", err, calls)
	}
	if _, _, err := Measure(Config{Duration: time.Millisecond, Rounds: 2}, "row", run, run); err != nil || calls != 4 {
		t.Fatalf("Measure without Stop = %v after %d runs; want 4 runs", err, calls)
	}
}
