package bench

import (
	"math"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/nettest"
)

// TestHTTPScenario runs both http --dev rows briefly, as root, and checks
// they were measured: requests/s of both sides, the ratio, the p50 and p99.
func TestHTTPScenario(t *testing.T) {
	nettest.RequirePriv(t)
	nettest.RequireCommand(t, "wrk")
	nettest.RequireCommand(t, "ethtool")
	rep, err := runHTTP(Config{Duration: time.Second, Rounds: 1, Dev: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Scenario != "http" || len(rep.Results) != len(httpRows) {
		t.Fatalf("report %+v", rep)
	}
	for i, r := range rep.Results {
		x := r.Extra
		if r.Name != httpRows[i].name || r.Unit != "requests/s" || r.Value <= 0 || r.BaselineValue <= 0 ||
			math.Abs(r.Ratio-r.Value/r.BaselineValue) > 1e-9 {
			t.Fatalf("row %+v not measured", r)
		}
		if x["p99_us"].(float64) < x["p50_us"].(float64) || x["baseline_p99_us"].(float64) < x["baseline_p50_us"].(float64) {
			t.Errorf("%s: percentiles %v", r.Name, x)
		}
		t.Logf("%s: %.0f requests/s vs %.0f (ratio %.2f), %v", r.Name, r.Value, r.BaselineValue, r.Ratio, x)
	}
	if _, err := runHTTP(Config{Duration: time.Second}); err == nil {
		t.Error("http without --dev ran")
	}
}

// TestParseWrk reads a report of wrk 4.1 and refuses one without figures.
func TestParseWrk(t *testing.T) {
	out := `Running 1s test @ http://198.18.0.1:8080/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.07us  301.11us   8.47ms   93.41%
    Req/Sec    20.11k     1.52k   22.71k    70.00%
  Latency Distribution
     50%  350.00us
     75%  451.00us
     90%  600.00us
     99%    1.50ms
  40011 requests in 1.00s, 9.31MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:  40011.50
Transfer/sec:      9.31MB
`
	w, err := parseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	if w.rps != 40011.5 || w.p50 != 350 || w.p99 != 1500 || w.errors != 6 {
		t.Errorf("parsed %+v", w)
	}
	if _, err := parseWrk("unable to connect to 198.18.0.1:8080 Connection refused\n"); err == nil {
		t.Error("a report without figures parsed")
	}
}
