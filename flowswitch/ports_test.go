package flowswitch_test

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
)

// RemovePort tears the port's flows down: its packets become packets of no
// flow, its ID is refused everywhere, and the other port is untouched.
func TestRemovePort(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, channel.Options{}, channel.Options{})
	a := r.register(t, 0, 1000, 53)
	r.register(t, 0, 1001, 53)
	r.register(t, 1, 2000, 80)
	if err := r.sw.RemovePort(r.ports[0]); err != nil {
		t.Fatal(err)
	}
	if a.Active() {
		t.Error("a flow of the removed port is still active")
	}
	r.sw.Do(func() {
		if n := r.sw.Table().Len(); n != 1 {
			t.Errorf("%d flows left, want 1", n)
		}
	})
	r.write(t, udpFrame(t, 1000, 53, "gone", 0), udpFrame(t, 2000, 80, "kept", 0))
	r.rxOnce(t, 2)
	if tags := r.drain(t, 1); !equal(tags, []string{"kept"}) {
		t.Errorf("other port got %v", tags)
	}
	if c := r.chans[0].Counters(); c.RxPackets != 0 {
		t.Errorf("removed port's channel got %d packets", c.RxPackets)
	}
	st := r.sw.Stats()
	if st.NoFlow != 1 || st.PortsRemoved != 1 {
		t.Errorf("stats %+v", st)
	}
	k := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(localIP, 1000), netip.AddrPortFrom(remoteIP, 53))
	if _, err := r.sw.Register(r.ports[0], k, flow.Connected); !errors.Is(err, flowswitch.ErrNoPort) {
		t.Errorf("Register on a removed port = %v", err)
	}
	if _, err := r.sw.TxOnce(r.ports[0]); !errors.Is(err, flowswitch.ErrNoPort) {
		t.Errorf("TxOnce on a removed port = %v", err)
	}
	if err := r.sw.RemovePort(r.ports[0]); !errors.Is(err, flowswitch.ErrNoPort) {
		t.Errorf("second RemovePort = %v", err)
	}
	if err := r.sw.RemovePort(flowswitch.HostPort); !errors.Is(err, flowswitch.ErrNoPort) {
		t.Errorf("RemovePort(HostPort) = %v", err)
	}
	// The removed port's local port is free for another port now.
	if _, err := r.sw.Register(r.ports[1], k, flow.Connected); err != nil {
		t.Errorf("re-registering a removed port's flow: %v", err)
	}
}

// A flow torn down between two input batches gets none of the second's
// packets, and its other packets of the first were delivered.
func TestTeardownBetweenBatches(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, channel.Options{})
	a := r.register(t, 0, 1000, 53)
	r.write(t, udpFrame(t, 1000, 53, "a1", 0), udpFrame(t, 1000, 53, "a2", 0))
	r.rxOnce(t, 2)
	r.sw.Teardown(a)
	r.sw.Teardown(a) // twice: nothing more
	r.write(t, udpFrame(t, 1000, 53, "a3", 0))
	r.rxOnce(t, 1)
	if tags := r.drain(t, 0); !equal(tags, []string{"a1", "a2"}) {
		t.Errorf("got %v", tags)
	}
	if st := r.sw.Stats(); st.NoFlow != 1 || st.Delivered != 2 {
		t.Errorf("stats %+v", st)
	}
}

// The nexus's worker, which runs the one datapath loop (Round, then each
// channel's Sync), removes on its own a port whose channel the app broke,
// and goes on serving the other port.
func TestDefunctPortRemoved(t *testing.T) {
	a, b, err := memif.NewPair(memif.Options{QueueLen: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	nx, err := nexus.New(nexus.Options{Link: a, Addrs: []netip.Addr{localIP}})
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	defer nx.Close()
	var ports []*nexus.Port
	for i, dport := range []uint16{53, 80} {
		p, err := nx.OpenPort(fmt.Sprintf("port%d", i))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		k := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(localIP, dport), netip.AddrPortFrom(remoteIP, 1000*uint16(i+1)))
		if _, err := p.Register(k, flow.Connected); err != nil {
			t.Fatal(err)
		}
		ports = append(ports, p)
	}
	bad, good := ports[0], ports[1]

	// App 0 sends a buffer it does not hold: the channel turns defunct when
	// the switch takes its TX ring, and the worker removes the port in the
	// same round.
	if _, err := bad.App().Send([]channel.Buf{{Index: 1 << 20, Data: make([]byte, 10)}}); err != nil {
		t.Fatal(err)
	}
	bad.Kick()
	for bad.App().Err() == nil {
		if err := bad.App().Wait(0); err != nil && !errors.Is(err, channel.ErrDefunct) {
			t.Fatal(err)
		}
	}
	snap, err := nx.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if snap.Totals.PortsRemoved != 1 || len(snap.Ports) != 1 || snap.Ports[0].Channel != good.Name() {
		t.Fatalf("after the app broke its channel: %+v, ports %+v", snap.Totals, snap.Ports)
	}
	if snap.Totals.ActiveFlows != 1 {
		t.Errorf("%d active flows: the defunct port's flow is still active", snap.Totals.ActiveFlows)
	}
	// The other port still receives.
	if n, err := b.Write([][]byte{udpFrame(t, 2000, 80, "alive", 0)}); n != 1 || err != nil {
		t.Fatalf("peer write: %d, %v", n, err)
	}
	bufs := make([]channel.Buf, 8)
	for {
		if err := good.App().Wait(0); err != nil {
			t.Fatal(err)
		}
		if n, err := good.App().Receive(bufs); err != nil || n > 0 {
			if err != nil || n != 1 {
				t.Fatalf("receive %d, %v", n, err)
			}
			good.App().Free(bufs[:n])
			break
		}
	}
}

// The control methods are safe from other goroutines while the datapath
// runs (Round, driven as the nexus does): one goroutine adds ports,
// registers, tears down and removes them, another takes snapshots, while
// traffic of a fixed flow flows. Run with -race.
func TestControlWhileRunning(t *testing.T) {
	r := newRig(t, flowswitch.Options{}, channel.Options{})
	r.register(t, 0, 1000, 53)
	stopDrive := drive(r.sw, r.dev, r.ports, r.chans)

	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(2)
	go func() { // control: ports come and go
		defer wg.Done()
		for i := range 20 {
			ch, err := channel.New(channel.Options{Name: fmt.Sprintf("ctl%d", i)})
			if err != nil {
				t.Error(err)
				return
			}
			p := r.sw.AddPort(ch)
			var es []*flow.Entry
			for j := range 5 {
				k := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(localIP, uint16(3000+i)),
					netip.AddrPortFrom(remoteIP, uint16(4000+j)))
				e, err := r.sw.Register(p, k, flow.Connected)
				if err != nil {
					t.Error(err)
					return
				}
				es = append(es, e)
			}
			r.sw.Teardown(es[0])
			r.sw.Do(func() { _ = es[1].Counters() })
			if err := r.sw.RemovePort(p); err != nil {
				t.Error(err)
			}
			ch.Close() // the switch no longer touches it
		}
	}()
	go func() { // observer
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = r.sw.Snapshot()
			_ = r.sw.Stats()
		}
	}()
	// Traffic: the fixed flow's packets all arrive.
	const total = 200
	got := 0
	bufs := make([]channel.Buf, 64)
	for i := 0; got < total; {
		if i < total {
			r.write(t, udpFrame(t, 1000, 53, "x", 0))
			i++
		}
		n, err := r.apps[0].Receive(bufs)
		if err != nil {
			t.Fatal(err)
		}
		got += n
		r.apps[0].Free(bufs[:n])
		if n == 0 && i == total {
			if err := r.apps[0].Wait(time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	wg.Wait()
	if err := stopDrive(); err != nil {
		t.Errorf("Round = %v", err)
	}
	snap := r.sw.Snapshot()
	if snap.Totals.PortsRemoved != 20 || len(snap.Ports) != 1 || snap.Totals.ActiveFlows != 1 {
		t.Errorf("after the churn: %+v, %d ports", snap.Totals, len(snap.Ports))
	}
}
