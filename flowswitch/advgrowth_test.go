package flowswitch_test

import (
	"net/netip"
	"testing"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/regulate"
)

// Advisories without a slot per connection: a port holds more flows than
// its advisory table (here 1000 slots, 1001 flows, twice the 512 a port
// could once hold at all). The flows get slots from the bottom and the last
// one none (flow.NoAdvisory). A suspend reaches exactly the flow that
// overwhelmed the queue: its own slot reads SUSPENDED, with one event naming
// it, and no other slot changes. The flow without a slot is never
// suspended: the queue drops it early, as the traffic of an app that does
// not read advisories.
func TestRegulationAdvisoryGrowth(t *testing.T) {
	const slots = 1000
	var clock int64
	now := func() int64 { return clock }
	a, b, err := memif.NewPair(memif.Options{Name: "advgrow", QueueLen: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ro := flowswitch.RegulationOptions{Queue: regulate.Options{Limit: 64}, NoMitigation: true}
	sw, err := flowswitch.New(flowswitch.Options{Link: a, LocalAddrs: []netip.Addr{localIP},
		SrcMAC: txSrcMAC, DstMAC: txDstMAC, Regulation: &ro, LinkRate: 8_000_000, Now: now,
		AdvisorySlots: slots})
	if err != nil {
		t.Fatal(err)
	}
	ch, app := newChannel(t, channel.Options{Name: "advgrow", Advisories: slots})
	id, err := sw.AddPortWith(ch, flowswitch.AddPortOptions{Advisories: true})
	if err != nil {
		t.Fatal(err)
	}
	flows := make([]*flow.Entry, slots+1)
	for i := range flows {
		k := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(localIP, uint16(10000+i)), netip.AddrPortFrom(remoteIP, 6000))
		if flows[i], err = sw.Register(id, k, flow.Connected); err != nil {
			t.Fatal(err)
		}
		want := uint32(i)
		if i == slots {
			want = flow.NoAdvisory
		}
		if flows[i].AdvisoryIndex() != want {
			t.Fatalf("flow %d: advisory %d, want %d", i, flows[i].AdvisoryIndex(), want)
		}
	}
	if l := sw.Stats().FlowLimits; l.NoAdvisory != 1 {
		t.Errorf("FlowLimits %+v, want one flow without a slot", l)
	}
	rg := &rig{sw: sw, peer: b, chans: []*channel.Channel{ch}, apps: []*channel.App{app}, ports: []flow.PortID{id}}
	burst := func(i int) {
		pkts := make([][]byte, 40)
		for j := range pkts {
			pkts[j] = txPkt{proto: packet.ProtoUDP, src: localIP, dst: remoteIP, sport: uint16(10000 + i), dport: 6000, size: 1000}.build(t)
		}
		rg.send(t, 0, flows[i].ID(), pkts...)
		if _, err := sw.TxSync(); err != nil {
			t.Fatal(err)
		}
	}

	advEvents := func() []uint32 {
		evs := make([]channel.Event, 64)
		n, err := app.Events(evs)
		if err != nil {
			t.Fatal(err)
		}
		var advs []uint32
		for _, ev := range evs[:n] {
			if ev.Kind == channel.EventAdvisory {
				advs = append(advs, ev.Arg)
			}
		}
		return advs
	}

	// The flow without a slot overwhelms the queue: dropped early, never
	// suspended (no slot could say so).
	burst(slots)
	q := sw.Stats().Regulation
	if q.Suspends != 0 || len(advEvents()) != 0 {
		t.Errorf("%d suspends, advisory events: the flow has no slot", q.Suspends)
	}
	if d := q.Queue.EarlyDrops + q.Queue.OverflowDrops; d == 0 {
		t.Errorf("the flow without a slot lost nothing to the queue: %+v", q.Queue)
	}
	// Drain: 1 ms a frame at the link's rate.
	for range 200 {
		clock += 1e6
		if _, err := sw.Service(); err != nil {
			t.Fatal(err)
		}
		rg.wire(t)
	}

	const hot = 777
	burst(hot) // 40 at once: over the queue's suspend backlog (Limit/4)
	for i := range slots {
		st, _, err := app.Advisory(i)
		if err != nil {
			t.Fatal(err)
		}
		if (st == channel.AdvisorySuspended) != (i == hot) {
			t.Fatalf("slot %d: state %d after flow %d's burst", i, st, hot)
		}
	}
	if advs := advEvents(); len(advs) != 1 || advs[0] != hot {
		t.Fatalf("advisory events %v, want one for slot %d", advs, hot)
	}
	if !app.Admissible(flows[slots].AdvisoryIndex()) {
		t.Fatal("a flow without a slot reads as suspended")
	}
}
