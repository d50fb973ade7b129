package main

import (
	"strings"
	"testing"
	"time"

	"github.com/skylane/skylane/bench"
)

// TestMain lets the processes row re-execute this test binary as its child.
func TestMain(m *testing.M) {
	bench.RunChild()
	m.Run()
}

func TestDemo(t *testing.T) {
	if err := runDemo([]string{"-packets", "20000", "-idle", "200ms", "-burst", "600ms"}); err != nil {
		t.Fatal(err)
	}
}

func TestUnknownCommands(t *testing.T) {
	for _, args := range [][]string{{}, {"nope"}, {"bench", "nope"}, {"bench"}} {
		if err := run(args); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}

// The demo's figures show what it claims: flow batching, no spoofed packet
// on the wire, every spoof attempt stopped by its own check.
func TestDemoReport(t *testing.T) {
	rep, err := buildDemo(2000, 50*time.Millisecond, 600*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	f := rep.Flowswitch
	if f.PacketsPerDelivery <= 1 {
		t.Errorf("batching ratio %.2f packets per delivery, want > 1", f.PacketsPerDelivery)
	}
	if f.Tx.SpoofedOnWire != 0 {
		t.Errorf("%d spoofed packets on the wire", f.Tx.SpoofedOnWire)
	}
	if f.NoFlowDropped == 0 || len(f.MalformedDropped) == 0 {
		t.Errorf("no-flow drops %d, malformed drops %v", f.NoFlowDropped, f.MalformedDropped)
	}
	kinds := map[string]bool{}
	for _, a := range f.Tx.Attempts {
		kinds[a.Kind] = true
		var dropped uint64
		for _, n := range a.DroppedBy {
			dropped += n
		}
		switch {
		case a.Kind == "valid packets":
			if a.OnWire != a.Sent || dropped != 0 {
				t.Errorf("valid: %d sent, %d on the wire, %d dropped", a.Sent, a.OnWire, dropped)
			}
		case isSpoof(a.Kind):
			if dropped == 0 || a.OnWire != 0 || int(dropped) != a.Sent {
				t.Errorf("%s: %d sent, %d on the wire, dropped %v", a.Kind, a.Sent, a.OnWire, a.DroppedBy)
			}
		case a.Kind == "SYN flood":
			if a.DroppedBy["syn_rate"] == 0 || a.OnWire+int(dropped) != a.Sent {
				t.Errorf("SYN flood: %d sent, %d on the wire, dropped %v", a.Sent, a.OnWire, a.DroppedBy)
			}
		}
	}
	for _, k := range []string{"valid packets", "spoofed source IP", "spoofed source port", "another app's flow", "wrong flow ID", "SYN flood"} {
		if !kinds[k] {
			t.Errorf("no %q attempt in the report", k)
		}
	}
	// The counters section agrees with the report: every flow listed, and
	// the per-reason drops the attempts saw.
	st := f.Stats
	if len(st.Flows) != st.Totals.ActiveFlows || st.Totals.ActiveFlows != demoUDPFlows+demoTCPFlows {
		t.Errorf("stats list %d flows, %d active, want %d", len(st.Flows), st.Totals.ActiveFlows, demoUDPFlows+demoTCPFlows)
	}
	got := map[string]uint64{}
	for _, d := range st.Drops {
		got[d.Dir+"/"+d.Reason] = d.Packets
	}
	if got["rx/no_flow"] != f.NoFlowDropped || got["tx/src_addr"] == 0 || got["tx/syn_rate"] == 0 {
		t.Errorf("stats drops %v disagree with the report (no flow %d)", got, f.NoFlowDropped)
	}
	// The burst section shows regulation at work: the RPC's p99 is lower
	// regulated than behind the FIFO, and the bulk apps were paused.
	var rpc *bench.Result
	for i, r := range rep.Burst.Results {
		if r.Name == "rpc-p99-under-bulk" {
			rpc = &rep.Burst.Results[i]
		}
	}
	if rpc == nil {
		t.Fatalf("no rpc-p99-under-bulk row in the burst report: %+v", rep.Burst)
	}
	if rpc.Value >= rpc.BaselineValue {
		t.Errorf("RPC p99 %.2f ms regulated, %.2f ms with the FIFO: regulation did not help", rpc.Value, rpc.BaselineValue)
	}
	if n, _ := rpc.Extra["advisory_suspends"].(uint64); n == 0 {
		t.Errorf("no advisory suspend during the burst: %v", rpc.Extra)
	}
	// The unresponsive app lost packets to the AQM (early or CoDel), the
	// advisory apps none at the queue (per flow, from the flow table).
	x := rpc.Extra
	early, _ := x["unresp_aqm_early_drops"].(uint64)
	codel, _ := x["unresp_aqm_codel_drops"].(uint64)
	if early+codel == 0 {
		t.Errorf("no AQM drop of the unresponsive app during the burst: %v", x)
	}
	if n, ok := x["unresp_bulk_aqm_drops"].(uint64); !ok || n != 0 {
		t.Errorf("the advisory apps lost %v packets at the queue: %v", x["unresp_bulk_aqm_drops"], x)
	}
	var table strings.Builder
	if err := printDemo(&table, rep); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "unresponsive app") {
		t.Errorf("printed report lacks the unresponsive app's line:\n%s", table.String())
	}
	if !strings.Contains(table.String(), "FLOWSWITCH COUNTERS") || !strings.Contains(table.String(), "syn_rate") {
		t.Errorf("printed report lacks the counters table:\n%s", table.String())
	}
}
