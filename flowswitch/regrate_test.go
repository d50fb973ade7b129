package flowswitch_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/packet"
)

// A port with a rate cap sends no faster than it, in steady state (here
// over a synthetic second), whatever its app queues.
func TestRegulationPortRate(t *testing.T) {
	var clock int64
	now := func() int64 { return clock }
	ro := flowswitch.RegulationOptions{NoMitigation: true}
	r := newRegRig(t, 0, ro, now, nil, channel.Options{})
	ch, err := channel.New(channel.Options{Name: "capped"})
	if err != nil {
		t.Fatal(err)
	}
	app, err := ch.AttachLocal()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close(); ch.Close() })
	const rate, burst = 800_000, 4000 // 100 kB/s
	id, err := r.sw.AddPortWith(ch, flowswitch.AddPortOptions{Rate: rate, Burst: burst})
	if err != nil {
		t.Fatal(err)
	}
	e, err := r.sw.Register(id, packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(localIP, 5000),
		netip.AddrPortFrom(remoteIP, 6000)), flow.Connected)
	if err != nil {
		t.Fatal(err)
	}
	rg := &rig{sw: r.sw, peer: r.peer, chans: []*channel.Channel{ch}, apps: []*channel.App{app}, ports: []flow.PortID{id}}
	pkt := udp0Pkt(1000).build(t)
	sent := 0
	for range 200 { // 1 s in 5 ms steps, the app keeping its TX ring stocked
		if k := r.sw.Stats().TxPackets; int(k) > sent-20 {
			batch := make([][]byte, 20)
			for i := range batch {
				batch[i] = pkt
			}
			rg.send(t, 0, e.ID(), batch...)
			sent += 20
		}
		clock += int64(5 * time.Millisecond)
		if _, err := r.sw.TxSync(); err != nil {
			t.Fatal(err)
		}
		rg.wire(t)
	}
	got := r.sw.Stats().TxBytes
	// One second at 100 kB/s, plus the burst and one packet of overshoot.
	if max := uint64(rate/8 + burst + 1000); got > max || got < uint64(rate/8)*9/10 {
		t.Errorf("%d bytes in a second, want about %d (at most %d)", got, rate/8, max)
	}
	snap := r.sw.Snapshot()
	if ps := snap.Ports[0].Regulation; ps == nil || ps.Limited == 0 || ps.Rate != rate {
		t.Errorf("port regulation stats %+v", ps)
	}
}
