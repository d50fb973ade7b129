package flowswitch_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/regulate"
)

// Adaptive batching: under a high packet rate the switch holds a partial
// batch for up to the level's hold, then delivers it (Service) with
// nothing lost or reordered; at a low rate it delivers at once.
func TestRegulationMitigation(t *testing.T) {
	var clock int64
	now := func() int64 { return clock }
	r := newRegRig(t, 0, flowswitch.RegulationOptions{}, now, []bool{false}, channel.Options{RxSize: 4096})
	p := r.ports[0]
	rg := &rig{sw: r.sw, peer: r.peer, chans: []*channel.Channel{p.ch}, apps: []*channel.App{p.app}, ports: []flow.PortID{p.id}}
	frame := udpFrameFrom(t, netip.AddrPortFrom(remoteIP, 6000), p.sport, "m", 0)
	batch := make([][]byte, 32)
	for i := range batch {
		batch[i] = frame
	}
	delivered := func() int { return len(rg.drain(t, 0)) }
	// Quiet: one frame is delivered at once.
	rg.write(t, frame)
	r.sw.RxOnce()
	if n := delivered(); n != 1 {
		t.Fatalf("a quiet link's frame was held: %d delivered", n)
	}
	// 32 frames every 20 µs: 1.6 Mpps for 60 ms (the level climbs one
	// step per 10 ms sample).
	total := 0
	for range 3000 {
		clock += int64(20 * time.Microsecond)
		rg.write(t, batch...)
		r.sw.RxOnce()
		total += delivered()
	}
	level := r.sw.Stats().Regulation.MitigationLevel
	if level == 0 {
		t.Fatalf("level 0 at 1.6 Mpps")
	}
	// A partial batch is held...
	rg.write(t, batch[:5]...)
	clock += int64(time.Microsecond)
	r.sw.RxOnce()
	if n := delivered(); n != 0 {
		t.Fatalf("%d frames of a partial batch delivered at once at level %d", n, level)
	}
	// ...until its hold passes: Service says when to come back.
	var held time.Duration
	n := 0
	for n == 0 && held <= regulate.MaxHold {
		wait, err := r.sw.Service()
		if err != nil || wait <= 0 || wait > regulate.MaxHold {
			t.Fatalf("Service asks to wait %v (%v) with frames held", wait, err)
		}
		clock += int64(wait)
		held += wait
		r.sw.Service()
		n = delivered()
	}
	if n != 5 {
		t.Fatalf("%d of the 5 held frames delivered after %v", n, held)
	}
	t.Logf("level %d: held %v", level, held)
	if st := r.sw.Stats(); st.Regulation.Held == 0 || st.Delivered != uint64(total+6) {
		t.Errorf("held %d, delivered %d of %d", st.Regulation.Held, st.Delivered, total+6)
	}
}
