package metrics_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/histogram"
	"github.com/skylane/skylane/metrics"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
)

// prometheus/testutil cannot be imported: it needs a module go.sum does not
// pin (kylelemons/godebug). compare and lint are its CollectAndCompare and
// GatherAndLint, on the same libraries (expfmt, promlint).

// compare gathers g and checks the families named in names against the
// expected text exposition (HELP, TYPE and samples), order aside.
func compare(t *testing.T, g prometheus.Gatherer, expected string, names ...string) {
	t.Helper()
	got, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got = slices.DeleteFunc(got, func(mf *dto.MetricFamily) bool { return !slices.Contains(names, mf.GetName()) })
	p := expfmt.NewTextParser(model.UTF8Validation)
	wantMap, err := p.TextToMetricFamilies(strings.NewReader(expected))
	if err != nil {
		t.Fatalf("expected text: %v", err)
	}
	var want []*dto.MetricFamily
	for _, mf := range wantMap {
		want = append(want, mf)
	}
	if g, w := exposition(t, got), exposition(t, want); g != w {
		t.Errorf("metrics differ\ngot:\n%s\nwant:\n%s", g, w)
	}
}

// exposition is mfs in the text format, families sorted by name and samples
// by labels.
func exposition(t *testing.T, mfs []*dto.MetricFamily) string {
	t.Helper()
	slices.SortFunc(mfs, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })
	var buf bytes.Buffer
	for _, mf := range mfs {
		slices.SortFunc(mf.Metric, func(a, b *dto.Metric) int { return strings.Compare(a.String(), b.String()) })
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			t.Fatal(err)
		}
	}
	return buf.String()
}

// lint gathers g and returns promlint's problems.
func lint(t *testing.T, g prometheus.Gatherer) []promlint.Problem {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	return problems
}

// countingSnap wraps the switch's Snapshot and counts the calls.
func countingSnap(sw *flowswitch.Switch, calls *atomic.Int64) metrics.SnapshotFunc {
	return func() (flowswitch.Snapshot, error) {
		calls.Add(1)
		return sw.Snapshot(), nil
	}
}

// A scrape after known traffic gives the known values, each family with
// its HELP and type; per-flow series are the MaxFlows busiest flows.
func TestCollectAndCompare(t *testing.T) {
	r := newRig(t, channel.Options{}, false)
	r.traffic(t)
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.New(metrics.SwitchSnapshot(r.sw), metrics.Options{MaxFlows: 2}))

	compare(t, reg, `
# HELP skylane_rx_packets_total Frames read from the link.
# TYPE skylane_rx_packets_total counter
skylane_rx_packets_total 7
# HELP skylane_rx_delivered_packets_total Packets put on a channel's RX ring.
# TYPE skylane_rx_delivered_packets_total counter
skylane_rx_delivered_packets_total 5
# HELP skylane_rx_batches_total Input batches holding at least one frame.
# TYPE skylane_rx_batches_total counter
skylane_rx_batches_total 1
# HELP skylane_tx_packets_total Packets that passed the transmit checks and were accepted by the link or the queue.
# TYPE skylane_tx_packets_total counter
skylane_tx_packets_total 3
# HELP skylane_tx_bytes_total L3 bytes of the packets counted by tx_packets_total.
# TYPE skylane_tx_bytes_total counter
skylane_tx_bytes_total 450
# HELP skylane_active_flows Flows in the flow table.
# TYPE skylane_active_flows gauge
skylane_active_flows 4
# HELP skylane_ports User ports.
# TYPE skylane_ports gauge
skylane_ports 2
`, "skylane_rx_packets_total", "skylane_rx_delivered_packets_total", "skylane_rx_batches_total",
		"skylane_tx_packets_total", "skylane_tx_bytes_total", "skylane_active_flows", "skylane_ports")

	p0, p1 := r.ports[0], r.ports[1]
	compare(t, reg, fmt.Sprintf(`
# HELP skylane_port_flows Flows the port owns.
# TYPE skylane_port_flows gauge
skylane_port_flows{channel="app0",port="%[1]d"} 3
skylane_port_flows{channel="app1",port="%[2]d"} 1
# HELP skylane_port_rx_delivered_packets_total Packets put on the port's RX ring.
# TYPE skylane_port_rx_delivered_packets_total counter
skylane_port_rx_delivered_packets_total{channel="app0",port="%[1]d"} 3
skylane_port_rx_delivered_packets_total{channel="app1",port="%[2]d"} 2
# HELP skylane_port_rx_ring_drops_total Packets tail-dropped because the port's RX ring was full.
# TYPE skylane_port_rx_ring_drops_total counter
skylane_port_rx_ring_drops_total{channel="app0",port="%[1]d"} 0
skylane_port_rx_ring_drops_total{channel="app1",port="%[2]d"} 0
# HELP skylane_port_tx_packets_total Packets of the port that passed the transmit checks.
# TYPE skylane_port_tx_packets_total counter
skylane_port_tx_packets_total{channel="app0",port="%[1]d"} 2
skylane_port_tx_packets_total{channel="app1",port="%[2]d"} 1
# HELP skylane_port_tx_bytes_total L3 bytes of the packets counted by port_tx_packets_total.
# TYPE skylane_port_tx_bytes_total counter
skylane_port_tx_bytes_total{channel="app0",port="%[1]d"} 300
skylane_port_tx_bytes_total{channel="app1",port="%[2]d"} 150
# HELP skylane_port_tx_drops_total Packets of the port the transmit checks refused.
# TYPE skylane_port_tx_drops_total counter
skylane_port_tx_drops_total{channel="app0",port="%[1]d"} 1
skylane_port_tx_drops_total{channel="app1",port="%[2]d"} 0
# HELP skylane_channel_rx_packets_total Packets put on the channel's RX ring.
# TYPE skylane_channel_rx_packets_total counter
skylane_channel_rx_packets_total{channel="app0",port="%[1]d"} 3
skylane_channel_rx_packets_total{channel="app1",port="%[2]d"} 2
# HELP skylane_channel_tx_packets_total Packets taken from the channel's TX ring.
# TYPE skylane_channel_tx_packets_total counter
skylane_channel_tx_packets_total{channel="app0",port="%[1]d"} 3
skylane_channel_tx_packets_total{channel="app1",port="%[2]d"} 1
`, p0, p1), "skylane_port_flows", "skylane_port_rx_delivered_packets_total", "skylane_port_rx_ring_drops_total",
		"skylane_port_tx_packets_total", "skylane_port_tx_bytes_total", "skylane_port_tx_drops_total",
		"skylane_channel_rx_packets_total", "skylane_channel_tx_packets_total")

	// The two busiest flows: udp0 (3 in, 2 out), udp1 (2 in, 1 out); tcp0
	// and the listener moved nothing and are left out.
	compare(t, reg, fmt.Sprintf(`
# HELP skylane_flow_rx_packets_total Packets received on the flow.
# TYPE skylane_flow_rx_packets_total counter
skylane_flow_rx_packets_total{flow=%[1]q,kind="connected",port="%[3]d"} 3
skylane_flow_rx_packets_total{flow=%[2]q,kind="connected",port="%[4]d"} 2
# HELP skylane_flow_tx_packets_total Packets sent on the flow.
# TYPE skylane_flow_tx_packets_total counter
skylane_flow_tx_packets_total{flow=%[1]q,kind="connected",port="%[3]d"} 2
skylane_flow_tx_packets_total{flow=%[2]q,kind="connected",port="%[4]d"} 1
# HELP skylane_flow_tx_bytes_total Bytes sent on the flow.
# TYPE skylane_flow_tx_bytes_total counter
skylane_flow_tx_bytes_total{flow=%[1]q,kind="connected",port="%[3]d"} 300
skylane_flow_tx_bytes_total{flow=%[2]q,kind="connected",port="%[4]d"} 150
`, r.udp0.Key().String(), r.udp1.Key().String(), p0, p1),
		"skylane_flow_rx_packets_total", "skylane_flow_tx_packets_total", "skylane_flow_tx_bytes_total")

	// The drops: one family, every reason of the snapshot, the three that
	// happened non-zero.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	drops := family(mfs, "skylane_drops_total")
	if drops == nil || drops.GetType() != dto.MetricType_COUNTER {
		t.Fatalf("drops family %v", drops)
	}
	snap := r.sw.Snapshot()
	if len(drops.Metric) != len(snap.Drops) {
		t.Errorf("%d drop series, snapshot has %d reasons", len(drops.Metric), len(snap.Drops))
	}
	want := map[string]float64{
		"rx/no_flow": 1, "rx/parse_" + packet.ReasonTruncatedIPv4.String(): 1, "tx/src_port": 1,
	}
	// Each drop names its place: parse and no_flow the switch, a transmit
	// check the port, the link's own losses the link.
	places := map[string]string{"rx/no_flow": "switch", "rx/parse_" + packet.ReasonTruncatedIPv4.String(): "switch",
		"tx/src_port": "port", "rx/rx_ring_full": "port", "rx/link_rx_lost": "link", "tx/device_full": "link"}
	for _, m := range drops.Metric {
		k := label(m, "dir") + "/" + label(m, "reason")
		if p, ok := places[k]; (ok && label(m, "place") != p) || label(m, "place") == "" {
			t.Errorf("drops %s in place %q, want %q", k, label(m, "place"), p)
		}
		delete(places, k)
		if v := m.GetCounter().GetValue(); v != want[k] {
			t.Errorf("drops %s = %v, want %v", k, v, want[k])
		}
		delete(want, k)
	}
	if len(places) != 0 {
		t.Errorf("drop reasons missing: %v", places)
	}
	if len(want) != 0 {
		t.Errorf("drop series missing: %v", want)
	}
}

func family(mfs []*dto.MetricFamily, name string) *dto.MetricFamily {
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	return nil
}

func label(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

// Every family passes promlint, counters end in _total and nothing else
// does, and, on a switch with every optional section (regulation, neighbour
// resolution, flows exported), every family the collector describes is one
// it collects. A plain switch has none of the optional families.
func TestLintAndTypes(t *testing.T) {
	r := newRig(t, channel.Options{}, true)
	r.traffic(t)
	c := metrics.New(metrics.SwitchSnapshot(r.sw), metrics.Options{MaxFlows: 10, Apps: testApps})
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	for _, p := range lint(t, reg) {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		counter := strings.HasSuffix(mf.GetName(), "_total")
		hist := mf.GetType() == dto.MetricType_HISTOGRAM &&
			(strings.HasSuffix(mf.GetName(), "_seconds") || strings.HasSuffix(mf.GetName(), "_bytes") || strings.HasSuffix(mf.GetName(), "_size"))
		if counter != (mf.GetType() == dto.MetricType_COUNTER) || (!counter && !hist && mf.GetType() != dto.MetricType_GAUGE) {
			t.Errorf("%s is a %v", mf.GetName(), mf.GetType())
		}
		if !strings.HasPrefix(mf.GetName(), "skylane_") || mf.GetHelp() == "" {
			t.Errorf("family %s, help %q", mf.GetName(), mf.GetHelp())
		}
	}
	descs := make(chan *prometheus.Desc, 200)
	c.Describe(descs)
	close(descs)
	n := 0
	for range descs {
		n++
	}
	if n != len(mfs) {
		t.Errorf("%d descriptors, %d families gathered", n, len(mfs))
	}
	for _, name := range []string{"skylane_aqm_enqueued_packets_total", "skylane_port_advisories",
		"skylane_flow_suspended", "skylane_l2_frames_total", "skylane_neigh_replies_sent_total"} {
		if family(mfs, name) == nil {
			t.Errorf("regulated switch: no %s", name)
		}
	}

	// A plain switch: fewer families, as lint-clean, none of the optional
	// ones; another namespace and const labels reach every family.
	plain := newRig(t, channel.Options{}, false)
	plain.traffic(t)
	reg2 := prometheus.NewRegistry()
	reg2.MustRegister(metrics.New(metrics.SwitchSnapshot(plain.sw),
		metrics.Options{Namespace: "fsw", MaxFlows: 10, ConstLabels: prometheus.Labels{"switch": "a"}}))
	for _, p := range lint(t, reg2) {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	mfs2, err := reg2.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs2 {
		if !strings.HasPrefix(mf.GetName(), "fsw_") || label(mf.Metric[0], "switch") != "a" {
			t.Errorf("family %s: %v", mf.GetName(), mf.Metric[0])
		}
		for _, opt := range []string{"aqm_", "advisor", "link_", "l2_", "neigh_", "flow_aqm", "flow_suspended",
			"port_tx_rounds", "rx_mitigation"} {
			if strings.Contains(mf.GetName(), opt) {
				t.Errorf("plain switch exports %s", mf.GetName())
			}
		}
	}
	if len(mfs2) >= len(mfs) {
		t.Errorf("plain switch: %d families, regulated %d", len(mfs2), len(mfs))
	}
}

// Per-flow series are off by default and capped at MaxFlows, the busiest
// flows first; every other family's cardinality does not depend on the
// number of flows.
func TestFlowCardinality(t *testing.T) {
	r := newRig(t, channel.Options{}, false)
	r.traffic(t)
	for i := range 200 {
		r.register(t, i%2, packet.ProtoUDP, uint16(10000+i), netip.AddrPortFrom(remoteIP, uint16(20000+i)), flow.Connected)
	}
	series := func(opts metrics.Options) (flows, other int, mfs []*dto.MetricFamily) {
		reg := prometheus.NewRegistry()
		reg.MustRegister(metrics.New(metrics.SwitchSnapshot(r.sw), opts))
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if strings.HasPrefix(mf.GetName(), "skylane_flow_") {
				flows += len(mf.Metric)
			} else {
				other += len(mf.Metric)
			}
		}
		return flows, other, mfs
	}
	f0, o0, mfs := series(metrics.Options{})
	if f0 != 0 {
		t.Errorf("%d flow series by default", f0)
	}
	if v := family(mfs, "skylane_active_flows").Metric[0].GetGauge().GetValue(); v != 204 {
		t.Errorf("active flows %v", v)
	}
	f3, o3, mfs := series(metrics.Options{MaxFlows: 3})
	if f3 != 3*4 || o3 != o0 {
		t.Errorf("MaxFlows 3: %d flow series (want 12), %d others (want %d)", f3, o3, o0)
	}
	// The busiest first: udp0 and udp1, then one of the idle flows.
	got := map[string]bool{}
	for _, m := range family(mfs, "skylane_flow_rx_packets_total").Metric {
		got[label(m, "flow")] = true
	}
	if !got[r.udp0.Key().String()] || !got[r.udp1.Key().String()] {
		t.Errorf("top flows %v", got)
	}
	fAll, oAll, _ := series(metrics.Options{MaxFlows: 1000})
	if fAll != 204*4 || oAll != o0 {
		t.Errorf("MaxFlows 1000: %d flow series (want %d), %d others", fAll, 204*4, oAll)
	}
	if fNeg, _, _ := series(metrics.Options{MaxFlows: -1}); fNeg != 0 {
		t.Errorf("MaxFlows -1: %d flow series", fNeg)
	}
}

// Collect calls the snapshot function once per scrape, whether gathered
// directly or over HTTP.
func TestOneSnapshotPerScrape(t *testing.T) {
	r := newRig(t, channel.Options{}, false)
	r.traffic(t)
	var calls atomic.Int64
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.New(countingSnap(r.sw, &calls), metrics.Options{MaxFlows: 10}))
	if calls.Load() != 0 {
		t.Fatalf("%d snapshots at registration", calls.Load())
	}
	for i := range 3 {
		if _, err := reg.Gather(); err != nil {
			t.Fatal(err)
		}
		if n := calls.Load(); n != int64(i+1) {
			t.Fatalf("%d snapshots after %d gathers", n, i+1)
		}
	}
	srv := httptest.NewServer(metrics.Handler(reg))
	defer srv.Close()
	scrape(t, srv.URL)
	if n := calls.Load(); n != 4 {
		t.Errorf("%d snapshots after 3 gathers and a scrape", n)
	}
}

// A snapshot error fails the scrape: Gather returns it, the handler
// answers 500.
func TestSnapshotError(t *testing.T) {
	boom := errors.New("nexus gone")
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.New(func() (flowswitch.Snapshot, error) { return flowswitch.Snapshot{}, boom },
		metrics.Options{}))
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), boom.Error()) {
		t.Errorf("Gather = %v", err)
	}
	srv := httptest.NewServer(metrics.Handler(reg))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(string(body), boom.Error()) {
		t.Errorf("status %d: %s", resp.StatusCode, body)
	}
}

// scrape GETs url (a loopback address) and parses the text exposition.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("scrape of %s, not loopback", url)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape: %s: %s", resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// value is the sample of family name with exactly the labels given (name,
// value pairs), and whether there is one.
func value(mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.Metric {
		if len(m.GetLabel()) != len(labels)/2 {
			continue
		}
		for i := 0; i < len(labels); i += 2 {
			if label(m, labels[i]) != labels[i+1] {
				continue next
			}
		}
		switch mf.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue(), true
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// checkSnapshot checks that mfs has every value of snap and no other
// series (with every flow exported).
func checkSnapshot(t *testing.T, mfs map[string]*dto.MetricFamily, snap *flowswitch.Snapshot) {
	t.Helper()
	n := 0
	check := func(name string, want uint64, labels ...string) {
		t.Helper()
		n++
		got, ok := value(mfs, name, labels...)
		if !ok || got != float64(want) {
			t.Errorf("%s%v = %v (present %v), snapshot %d", name, labels, got, ok, want)
		}
	}
	tt := &snap.Totals
	check("skylane_rx_packets_total", tt.Packets)
	check("skylane_rx_batches_total", tt.Batches)
	check("skylane_rx_flow_batches_total", tt.FlowBatches)
	check("skylane_rx_deliveries_total", tt.Deliveries)
	check("skylane_rx_delivered_packets_total", tt.Delivered)
	check("skylane_rx_super_packets_total", tt.SuperPackets)
	check("skylane_rx_merged_packets_total", tt.Merged)
	check("skylane_host_delivered_packets_total", tt.HostDelivered)
	check("skylane_host_tx_packets_total", tt.HostTx)
	check("skylane_kernel_passed_packets_total", tt.KernelPassed)
	l := &snap.Link
	check("skylane_netif_rx_packets_total", l.RxPackets)
	check("skylane_netif_rx_bytes_total", l.RxBytes)
	check("skylane_netif_rx_drops_total", l.RxDrops)
	check("skylane_netif_tx_packets_total", l.TxPackets)
	check("skylane_netif_tx_bytes_total", l.TxBytes)
	check("skylane_netif_tx_drops_total", l.TxDrops)
	check("skylane_netif_kernel_passed_packets_total", l.KernelPassed)
	check("skylane_tx_packets_total", tt.TxPackets)
	check("skylane_tx_bytes_total", tt.TxBytes)
	check("skylane_ports_removed_total", tt.PortsRemoved)
	check("skylane_active_flows", uint64(tt.ActiveFlows))
	check("skylane_rx_reassembled_datagrams_total", tt.Reassembled)
	check("skylane_fragments_held_bytes", uint64(tt.FragmentsHeld))
	check("skylane_rx_icmp_errors_total", tt.ICMPErrors)
	check("skylane_answers_as_host_total", tt.Answers)
	check("skylane_ports", uint64(len(snap.Ports)))
	for _, d := range snap.Drops {
		check("skylane_drops_total", d.Packets, "dir", d.Dir, "place", d.Place, "reason", d.Reason)
	}
	for _, p := range snap.Ports {
		l := []string{"port", strconv.Itoa(int(p.Port)), "channel", p.Channel}
		check("skylane_port_flows", uint64(p.Flows), l...)
		check("skylane_port_rx_delivered_packets_total", p.Delivered, l...)
		check("skylane_port_rx_ring_drops_total", p.RxRingDrops, l...)
		check("skylane_port_tx_packets_total", p.TxPackets, l...)
		check("skylane_port_tx_bytes_total", p.TxBytes, l...)
		check("skylane_port_tx_drops_total", p.TxDrops, l...)
		g := &p.Ring
		check("skylane_channel_rx_packets_total", g.RxPackets, l...)
		check("skylane_channel_rx_bytes_total", g.RxBytes, l...)
		check("skylane_channel_tx_packets_total", g.TxPackets, l...)
		check("skylane_channel_tx_bytes_total", g.TxBytes, l...)
		check("skylane_channel_alloc_failures_total", g.AllocFails, l...)
		check("skylane_channel_notifications_total", g.Notifications, l...)
		check("skylane_channel_wakeups_total", g.Wakeups, l...)
		check("skylane_channel_reclaimed_buffers_total", g.Reclaimed, l...)
		check("skylane_channel_alloc_handed_buffers_total", g.AllocHanded, l...)
		check("skylane_channel_segments_added_total", g.SegmentsAdded, l...)
		check("skylane_channel_segments_freed_total", g.SegmentsFreed, l...)
	}
	for _, f := range snap.Flows {
		l := []string{"port", strconv.Itoa(int(f.Port)), "flow", f.Key, "kind", f.Kind}
		check("skylane_flow_rx_packets_total", f.PacketsIn, l...)
		check("skylane_flow_rx_bytes_total", f.BytesIn, l...)
		check("skylane_flow_tx_packets_total", f.PacketsOut, l...)
		check("skylane_flow_tx_bytes_total", f.BytesOut, l...)
		if snap.Regulation != nil {
			check("skylane_flow_aqm_queued_packets", uint64(f.Queued), l...)
			check("skylane_flow_suspended", b2u(f.Suspended), l...)
			check("skylane_flow_aqm_drops_total", f.AQMDrops, l...)
			check("skylane_flow_ecn_marks_total", f.ECNMarks, l...)
		}
	}
	for _, p := range snap.Ports {
		g := p.Regulation
		if g == nil {
			continue
		}
		l := []string{"port", strconv.Itoa(int(p.Port)), "channel", p.Channel}
		check("skylane_port_advisories", b2u(g.Advisories), l...)
		check("skylane_port_tx_rate_limit_bytes_per_second", uint64(g.Rate/8), l...)
		check("skylane_port_tx_granted_packets_total", g.Granted, l...)
		check("skylane_port_tx_taken_packets_total", g.Taken, l...)
		check("skylane_port_tx_rounds_total", g.Rounds, l...)
		check("skylane_port_tx_full_rounds_total", g.FullRounds, l...)
		check("skylane_port_tx_rate_limited_total", g.Limited, l...)
		check("skylane_port_tx_backpressured_total", g.Backpress, l...)
		check("skylane_port_advisory_suspends_total", g.Suspends, l...)
		check("skylane_port_advisory_resumes_total", g.Resumes, l...)
	}
	if g := snap.Regulation; g != nil {
		check("skylane_aqm_queued_packets", uint64(g.Queued))
		check("skylane_aqm_queued_bytes", uint64(g.QueuedBytes))
		check("skylane_aqm_queued_flows", uint64(g.QueuedFlows))
		check("skylane_aqm_enqueued_packets_total", g.Enqueued)
		check("skylane_aqm_dequeued_packets_total", g.Dequeued)
		check("skylane_aqm_ecn_marks_total", g.ECNMarks)
		check("skylane_aqm_shared_packets_total", g.Shared)
		check("skylane_advisory_suspends_total", g.Suspends)
		check("skylane_advisory_resumes_total", g.Resumes)
		check("skylane_advisory_errors_total", g.AdvisoryErrors)
		check("skylane_link_tx_packets_total", g.LinkPackets)
		check("skylane_link_tx_bytes_total", g.LinkBytes)
		check("skylane_link_paced_total", g.Paced)
		check("skylane_host_queued_packets_total", g.HostQueued)
		check("skylane_tx_rounds_total", g.Rounds)
		check("skylane_tx_rate_limited_total", g.RateLimited)
		check("skylane_tx_backpressured_total", g.Backpressured)
		check("skylane_rx_held_batches_total", g.Held)
		check("skylane_rx_mitigation_level", uint64(g.Level))
		n++ // the rate is a float: compare it apart
		if got, ok := value(mfs, "skylane_rx_mitigation_packets_per_second"); !ok || got != g.RxRate {
			t.Errorf("rx_mitigation_packets_per_second = %v (present %v), snapshot %v", got, ok, g.RxRate)
		}
		check("skylane_stalled_ports_total", g.Stalled)
	}
	if g := snap.L2; g != nil {
		check("skylane_l2_frames_total", g.Switch.Frames)
		check("skylane_l2_replies_total", g.Switch.Replies)
		check("skylane_l2_suppressed_replies_total", g.Switch.Suppressed)
		check("skylane_l2_to_host_frames_total", g.Switch.ToHost)
		check("skylane_l2_held_packets_total", g.Switch.Held)
		check("skylane_l2_poll_frames_total", g.Switch.PollFrames)
		v := &g.Resolver
		check("skylane_neigh_replies_sent_total", v.RepliesSent)
		check("skylane_neigh_solicits_sent_total", v.SolicitsSent)
		check("skylane_neigh_resolved_total", v.Resolved)
		check("skylane_neigh_failed_total", v.Failed)
		check("skylane_neigh_pending_queued_total", v.PendingQueued)
		check("skylane_neigh_pending_sent_total", v.PendingSent)
		check("skylane_neigh_pending_overflow_total", v.PendingOverflow)
		check("skylane_neigh_pending_expired_total", v.PendingExpired)
		check("skylane_neigh_bad_frames_total", v.BadFrames)
		check("skylane_neigh_route_queries_total", v.RouteQueries)
		check("skylane_neigh_route_changes_total", v.RouteChanges)
		check("skylane_neigh_no_route_total", v.NoRoute)
		check("skylane_neigh_mac_changes_total", v.MACChanges)
		check("skylane_neigh_routes_evicted_total", v.RoutesEvicted)
		check("skylane_neigh_routes_expired_total", v.RoutesExpired)
		check("skylane_neigh_routes", uint64(g.RoutesTotal))
		check("skylane_neigh_pending_packets", v.Pending)
	}
	checkHist := func(name string, h histogram.Snapshot) {
		t.Helper()
		n++
		mf := mfs[name]
		if mf == nil || len(mf.Metric) != 1 || mf.Metric[0].Histogram == nil {
			t.Errorf("%s: no histogram", name)
			return
		}
		g := mf.Metric[0].Histogram
		if g.GetSampleCount() != h.Count || g.GetSampleSum() != h.Sum {
			t.Errorf("%s: count %d sum %v; snapshot %+v", name, g.GetSampleCount(), g.GetSampleSum(), h)
		}
		cum, finite := h.Cumulative(), 0
		for _, b := range g.Bucket { // the text format adds +Inf
			if ub := b.GetUpperBound(); !math.IsInf(ub, 1) {
				finite++
				if b.GetCumulativeCount() != cum[ub] {
					t.Errorf("%s: bucket le=%v holds %d, snapshot %d", name, ub, b.GetCumulativeCount(), cum[ub])
				}
			}
		}
		if finite != len(h.Bounds) {
			t.Errorf("%s: %d buckets, snapshot %d", name, finite, len(h.Bounds))
		}
	}
	checkHist("skylane_rx_batch_size", snap.Hists.RxBatch)
	checkHist("skylane_rx_super_packet_bytes", snap.Hists.SuperPacket)
	if snap.Regulation != nil {
		checkHist("skylane_aqm_sojourn_seconds", snap.Regulation.Sojourn)
	}
	if snap.Hists.RxBatch.Count != snap.Totals.Batches {
		t.Errorf("rx batch histogram counts %d batches, totals %d", snap.Hists.RxBatch.Count, snap.Totals.Batches)
	}
	total := 0
	for _, mf := range mfs {
		total += len(mf.Metric)
	}
	if total != n {
		t.Errorf("%d series scraped, %d in the snapshot", total, n)
	}
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// A scrape over HTTP (loopback) has every value of the switch's snapshot,
// and nothing else.
func TestHTTPMatchesSnapshot(t *testing.T) {
	r := newRig(t, channel.Options{}, false)
	r.traffic(t)
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.New(metrics.SwitchSnapshot(r.sw), metrics.Options{MaxFlows: 100}))
	srv := httptest.NewServer(metrics.Handler(reg))
	defer srv.Close()
	mfs := scrape(t, srv.URL+"/metrics")
	snap := r.sw.Snapshot()
	if snap.Totals.Packets != 7 || len(snap.Flows) != 4 {
		t.Fatalf("snapshot %+v", snap.Totals)
	}
	checkSnapshot(t, mfs, &snap)
}

// On a regulated switch with a neighbour resolver, the AQM's, the ports'
// regulation, the flows' queue state and the resolver's figures are
// exported too, and a scrape over HTTP has every value of the snapshot.
func TestHTTPRegulationAndL2(t *testing.T) {
	r := newRig(t, channel.Options{}, true)
	r.traffic(t)
	r.write(t, arpRequest(t))
	if n, err := r.sw.RxOnce(); err != nil || n != 1 {
		t.Fatalf("RxOnce = %d, %v", n, err)
	}
	if n := r.wire(t); n != 1 { // the switch's ARP reply
		t.Fatalf("wire got %d frames, want the ARP reply", n)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.New(metrics.SwitchSnapshot(r.sw), metrics.Options{MaxFlows: 100}))
	srv := httptest.NewServer(metrics.Handler(reg))
	defer srv.Close()
	mfs := scrape(t, srv.URL+"/metrics")
	snap := r.sw.Snapshot()
	if snap.Regulation == nil || snap.L2 == nil || snap.Ports[0].Regulation == nil {
		t.Fatalf("snapshot lacks regulation or L2: %+v", snap)
	}
	checkSnapshot(t, mfs, &snap)
	p0, p1 := strconv.Itoa(int(r.ports[0])), strconv.Itoa(int(r.ports[1]))
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"skylane_aqm_enqueued_packets_total", nil, 3},
		{"skylane_aqm_dequeued_packets_total", nil, 3},
		{"skylane_aqm_queued_packets", nil, 0},
		{"skylane_link_tx_packets_total", nil, 3},
		{"skylane_l2_frames_total", nil, 1},
		{"skylane_l2_replies_total", nil, 1},
		{"skylane_neigh_replies_sent_total", nil, 1},
		{"skylane_port_advisories", []string{"port", p0, "channel", "app0"}, 1},
		{"skylane_port_advisories", []string{"port", p1, "channel", "app1"}, 0},
		{"skylane_port_tx_rate_limit_bytes_per_second", []string{"port", p1, "channel", "app1"}, portRate / 8},
		{"skylane_port_tx_taken_packets_total", []string{"port", p0, "channel", "app0"}, 3},
		{"skylane_tx_packets_total", nil, 3},
	} {
		if got, ok := value(mfs, c.name, c.labels...); !ok || got != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
}

// Scrapes while a nexus moves traffic (and the apps do not drain, so RX
// rings fill and drop), the collector taking its snapshots from the
// nexus's worker as `skylane serve` has it: every scrape is one consistent
// snapshot (the ports' ring drops sum to the rx_ring_full drops, their
// deliveries to the total) and counters never go back. The race detector
// checks the collector shares nothing with the datapath but the snapshot.
func TestScrapeWhileRunning(t *testing.T) {
	a, peer, err := memif.NewPair(memif.Options{QueueLen: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	nx, err := nexus.New(nexus.Options{Link: a, Addrs: []netip.Addr{localIP}, Channel: channel.Options{RxSize: 64}})
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	defer nx.Close()
	for i := range uint16(2) { // UDP flows local:5000 and local:5001 ↔ remote:6000
		p, err := nx.OpenPort(fmt.Sprintf("app%d", i))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		k := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(localIP, 5000+i), netip.AddrPortFrom(remoteIP, 6000))
		if _, err := p.Register(k, flow.Connected); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.New(nx.Snapshot, metrics.Options{MaxFlows: 2}))
	srv := httptest.NewServer(metrics.Handler(reg))
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	frames := [][]byte{rxFrame(6000, 5000, "a"), rxFrame(6000, 5001, "b"), rxFrame(6000, 5999, "none")}
	wg.Go(func() {
		for ctx.Err() == nil {
			if _, err := peer.Write(frames); err != nil {
				t.Errorf("peer write: %v", err)
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	})

	var last map[string]float64
	for i := 0; i < 30; i++ {
		mfs := scrape(t, srv.URL+"/metrics")
		var ringDrops, delivered float64
		for _, m := range mfs["skylane_port_rx_ring_drops_total"].GetMetric() {
			ringDrops += m.GetCounter().GetValue()
		}
		for _, m := range mfs["skylane_port_rx_delivered_packets_total"].GetMetric() {
			delivered += m.GetCounter().GetValue()
		}
		full, _ := value(mfs, "skylane_drops_total", "dir", "rx", "place", "port", "reason", "rx_ring_full")
		total, _ := value(mfs, "skylane_rx_delivered_packets_total")
		if ringDrops != full || delivered != total {
			t.Errorf("scrape %d inconsistent: ring drops %v vs rx_ring_full %v, delivered %v vs %v",
				i, ringDrops, full, delivered, total)
		}
		cur := map[string]float64{}
		for name, mf := range mfs {
			if mf.GetType() != dto.MetricType_COUNTER {
				continue
			}
			for _, m := range mf.Metric {
				k := name + fmt.Sprint(m.GetLabel())
				cur[k] = m.GetCounter().GetValue()
				if prev, ok := last[k]; ok && cur[k] < prev {
					t.Errorf("scrape %d: %s went back from %v to %v", i, k, prev, cur[k])
				}
			}
		}
		last = cur
		time.Sleep(2 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	if last["skylane_rx_packets_total[]"] == 0 {
		t.Errorf("no traffic seen: %v", last)
	}
	if v, _ := value(scrape(t, srv.URL+"/metrics"), "skylane_drops_total", "dir", "rx", "place", "port", "reason", "rx_ring_full"); v == 0 {
		t.Errorf("the undrained RX rings never dropped")
	}
}

// Serve serves /metrics on its address until ctx is done, then returns nil
// and releases the address.
func TestServe(t *testing.T) {
	r := newRig(t, channel.Options{}, false)
	r.traffic(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- metrics.Serve(ctx, addr, metrics.New(metrics.SwitchSnapshot(r.sw), metrics.Options{MaxFlows: 100}))
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		select {
		case err := <-done:
			t.Fatalf("Serve = %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("Serve never listened: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	snap := r.sw.Snapshot()
	checkSnapshot(t, scrape(t, "http://"+addr+"/metrics"), &snap)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after cancel = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not stop with its context")
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Errorf("%s still listening after Serve returned", addr)
	}

	// A bad address or a collector that cannot register fails at once.
	if err := metrics.Serve(context.Background(), "127.0.0.1:-1", metrics.New(metrics.SwitchSnapshot(r.sw), metrics.Options{})); err == nil {
		t.Error("Serve on a bad address: nil error")
	}
	short, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	if err := metrics.Serve(short, "127.0.0.1:0", badCollector{}); err == nil {
		t.Error("Serve of an invalid collector: nil error")
	}
}

// badCollector describes an invalid descriptor (a label named twice), so
// Register refuses it.
type badCollector struct{}

func (badCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- prometheus.NewDesc("bad", "Bad.", []string{"a", "a"}, nil)
}
func (badCollector) Collect(chan<- prometheus.Metric) {}
