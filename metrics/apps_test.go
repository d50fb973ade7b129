package metrics_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/metrics"
)

// testApps names the rig's two ports' apps.
func testApps() map[string]metrics.App {
	return map[string]metrics.App{"app0": {Name: "web", UID: 1001}, "app1": {Name: "db", UID: 1002}}
}

// port_info names each port's app and uid; past MaxPorts the quietest
// ports are folded into port="other", their counters summed.
func TestPortAppsAndFolding(t *testing.T) {
	r := newRig(t, channel.Options{}, false)
	r.traffic(t)
	snap := r.sw.Snapshot()
	gather := func(o metrics.Options) map[string]int {
		t.Helper()
		reg := prometheus.NewRegistry()
		reg.MustRegister(metrics.New(metrics.SwitchSnapshot(r.sw), o))
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]int{}
		for _, mf := range mfs {
			for _, m := range mf.Metric {
				key := mf.GetName()
				for _, lp := range m.GetLabel() {
					key += " " + lp.GetName() + "=" + lp.GetValue()
				}
				if c := m.GetCounter(); c != nil {
					got[key] = int(c.GetValue())
				} else {
					got[key] = int(m.GetGauge().GetValue())
				}
			}
		}
		return got
	}
	all := gather(metrics.Options{Apps: testApps})
	for _, p := range snap.Ports {
		a := testApps()[p.Channel]
		key := "skylane_port_info app=" + a.Name + " channel=" + p.Channel + " port=" + strconv.FormatUint(uint64(p.Port), 10) + " uid=" + strconv.FormatUint(uint64(a.UID), 10)
		if all[key] != 1 {
			t.Errorf("no %s in %v", key, all)
		}
	}
	folded := gather(metrics.Options{Apps: testApps, MaxPorts: 1})
	var sum uint64
	for _, p := range snap.Ports {
		sum += p.Delivered
	}
	if got := folded["skylane_port_rx_delivered_packets_total channel=other port=other"]; got != int(sum) || sum == 0 {
		t.Errorf("folded delivered %d, want %d (the ports' sum)", got, sum)
	}
	for k := range folded {
		if len(k) > len("skylane_port_info") && k[:len("skylane_port_info")] == "skylane_port_info" {
			t.Errorf("a folded port has its info: %s", k)
		}
	}
}

// The Grafana dashboard in deploy/ is JSON and queries only metrics the
// collector exports (histograms by their _bucket, _sum and _count series).
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("../deploy/grafana-skylane.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	r := newRig(t, channel.Options{}, true)
	r.traffic(t)
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.New(metrics.SwitchSnapshot(r.sw), metrics.Options{Apps: testApps}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		have[mf.GetName()] = true
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				have[mf.GetName()+s] = true
			}
		}
	}
	name := regexp.MustCompile(`skylane_[a-z_]+`)
	n := 0
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, m := range name.FindAllString(tg.Expr, -1) {
				n++
				if !have[m] {
					t.Errorf("panel %q queries %s, which the collector does not export", p.Title, m)
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("the dashboard queries no skylane metric")
	}
}
