package flowswitch_test

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/packet"
)

// An app that never drains its RX ring while packets keep coming is
// declared stalled after the (shortened) timeout: its channel is defunct
// with ReasonStalled, its port removed, its flows torn down and its memory
// returned; the other app goes on receiving. Time is synthetic.
func TestRegulationStall(t *testing.T) {
	var clock int64
	now := func() int64 { return clock }
	const timeout = 2 * time.Second
	r := newRegRig(t, 0, flowswitch.RegulationOptions{StallTimeout: timeout}, now, []bool{true}, channel.Options{})
	healthy := r.ports[0]
	fds := nettest.OpenFDs(t)
	ch, err := channel.New(channel.Options{Name: "stalled", RxSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	app, err := ch.AttachLocal()
	if err != nil {
		t.Fatal(err)
	}
	id := r.sw.AddPort(ch)
	stalledFlow, err := r.sw.Register(id, packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(localIP, 7000),
		netip.AddrPortFrom(remoteIP, 6000)), flow.Connected)
	if err != nil {
		t.Fatal(err)
	}
	rg := &rig{sw: r.sw, peer: r.peer}
	bufs := make([]channel.Buf, 64)
	got := 0
	step := func(i int) {
		rg.write(t, udpFrameFrom(t, netip.AddrPortFrom(remoteIP, 6000), 7000, "s", 0),
			udpFrameFrom(t, netip.AddrPortFrom(remoteIP, 6000), healthy.sport, "h", 0))
		if _, err := r.sw.RxOnce(); err != nil {
			t.Fatal(err)
		}
		if _, err := r.sw.Service(); err != nil {
			t.Fatal(err)
		}
		n, err := healthy.app.Receive(bufs)
		if err != nil {
			t.Fatal(err)
		}
		got += n
		healthy.app.Free(bufs[:n])
		healthy.ch.Sync()
		if ch.Err() == nil {
			ch.Sync()
		}
	}
	// 100 ms per step: the stalled app's ring (64) fills after 64 steps,
	// then the packets it is sent are refused.
	i := 0
	for ; ch.Err() == nil && i < 200; i++ {
		clock += int64(100 * time.Millisecond)
		step(i)
	}
	var de *channel.DefunctError
	if !errors.As(ch.Err(), &de) || de.Reason != channel.ReasonStalled {
		t.Fatalf("after %d steps the stalled channel is %v", i, ch.Err())
	}
	// The ring was full after 64 steps, and refused a packet at the
	// next; the stall is seen within the timeout plus two check periods
	// (a quarter of it each) after that.
	if full := 65 + int((timeout+2*timeout/4)/(100*time.Millisecond)); i > full {
		t.Errorf("defunct after %d steps, want at most %d", i, full)
	}
	if err := app.Err(); !errors.Is(err, channel.ErrDefunct) {
		t.Errorf("the app was not told: %v", err)
	}
	snap := r.sw.Snapshot()
	if snap.Regulation.Stalled != 1 || snap.Totals.PortsRemoved != 1 || len(snap.Ports) != 1 {
		t.Errorf("after the stall: %+v, %d ports", snap.Regulation, len(snap.Ports))
	}
	var active bool
	r.sw.Do(func() { active = stalledFlow.Active() })
	if active {
		t.Error("the stalled port's flow is still active")
	}
	app.Close()
	if n := nettest.OpenFDs(t); n != fds {
		t.Errorf("%d file descriptors open, %d before the stalled channel: its memory is not returned", n, fds)
	}
	// The healthy app was never touched, and still receives.
	before := got
	for range 10 {
		clock += int64(100 * time.Millisecond)
		step(0)
	}
	if got-before != 10 || healthy.ch.Err() != nil {
		t.Errorf("the healthy app got %d of 10 after the stall (%v)", got-before, healthy.ch.Err())
	}
}
