package flowswitch_test

import (
	"testing"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/regulate"
)

// Advisory events, step by step under a synthetic clock: a flow that
// overwhelms the queue is suspended (its entry reads SUSPENDED and the app
// gets an EventAdvisory), it is resumed once it drained (the entry clears,
// another event), and it lost nothing. A teardown discards its queued
// packets and clears its entry.
func TestRegulationAdvisoryEvents(t *testing.T) {
	var clock int64
	now := func() int64 { return clock }
	const rate = 8_000_000 // 1 MB/s: a 1014-byte frame every ~1 ms
	ro := flowswitch.RegulationOptions{Queue: regulate.Options{Limit: 64}, NoMitigation: true}
	// The wire is unpaced (memif's clock is real); the switch's pacer is
	// the link, on the synthetic clock.
	r := newRegRig(t, rate, ro, now, []bool{true}, channel.Options{})
	p := r.ports[0]
	rg := &rig{sw: r.sw, peer: r.peer, chans: []*channel.Channel{p.ch}, apps: []*channel.App{p.app}, ports: []flow.PortID{p.id}}
	idx := int(p.flow.AdvisoryIndex())
	var pkts [][]byte
	for range 40 {
		pkts = append(pkts, txPkt{proto: packet.ProtoUDP, src: localIP, dst: remoteIP, sport: p.sport, dport: 6000, size: 1000}.build(t))
	}
	rg.send(t, 0, p.flow.ID(), pkts...)
	if _, err := r.sw.TxSync(); err != nil {
		t.Fatal(err)
	}
	// SuspendBacklog is Limit/4 = 16 packets: 40 queued at once suspend it.
	st, _, err := p.app.Advisory(idx)
	if err != nil || st != channel.AdvisorySuspended {
		t.Fatalf("advisory %d after 40 packets at once: %d, %v", idx, st, err)
	}
	if ev := advisoryEvents(t, p.app, idx); ev != 1 {
		t.Fatalf("%d advisory events, want 1", ev)
	}
	snap := r.sw.Snapshot()
	if f := snapFlow(snap, p.flow); f == nil || !f.Suspended || f.Queued == 0 {
		t.Fatalf("flow in the snapshot: %+v", f)
	}
	// Let it drain: 1 ms per frame.
	wire := 0
	for range 200 {
		clock += int64(time.Millisecond)
		if _, err := r.sw.Service(); err != nil {
			t.Fatal(err)
		}
		wire += len(rg.wire(t))
		if st, _, _ := p.app.Advisory(idx); st == channel.AdvisoryNone {
			break
		}
	}
	if st, _, _ := p.app.Advisory(idx); st != channel.AdvisoryNone {
		t.Fatal("never resumed")
	}
	if ev := advisoryEvents(t, p.app, idx); ev != 1 {
		t.Fatalf("%d advisory events at the resume, want 1", ev)
	}
	q := r.sw.Stats().Regulation
	if q.Suspends != 1 || q.Resumes != 1 || q.Queue.CoDelDrops+q.Queue.OverflowDrops+q.Queue.EarlyDrops != 0 {
		t.Errorf("%+v", q)
	}
	if q.Queue.Packets == 0 || wire+q.Queue.Packets != 40 {
		t.Errorf("%d on the wire, %d queued at the resume, want some queued and 40 in all", wire, q.Queue.Packets)
	}
	// Suspend again, then tear down: the queued packets go, the entry
	// clears.
	rg.send(t, 0, p.flow.ID(), pkts...)
	r.sw.TxSync()
	if st, _, _ := p.app.Advisory(idx); st != channel.AdvisorySuspended {
		t.Fatal("not suspended the second time")
	}
	queued := r.sw.Stats().Regulation.Queue.Packets
	r.sw.Teardown(p.flow)
	if st, _, _ := p.app.Advisory(idx); st != channel.AdvisoryNone {
		t.Error("the torn-down flow's entry is still SUSPENDED")
	}
	if q := r.sw.Stats().Regulation.Queue; q.Forgotten != uint64(queued) || q.Packets != 0 {
		t.Errorf("after the teardown: %d queued before, %+v", queued, q)
	}
}

// advisoryEvents reads the app's events and counts the advisory ones for
// index idx.
func advisoryEvents(t testing.TB, app *channel.App, idx int) int {
	t.Helper()
	evs := make([]channel.Event, 64)
	n, err := app.Events(evs)
	if err != nil {
		t.Fatal(err)
	}
	c := 0
	for _, e := range evs[:n] {
		if e.Kind == channel.EventAdvisory && int(e.Arg) == idx {
			c++
		}
	}
	return c
}
