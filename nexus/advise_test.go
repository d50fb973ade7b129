package nexus_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
)

// TestAdvise: Register hands out the flow's advisory entry, clear; Advise
// marks it in the app's read-only table and the event wakes an app asleep in
// Port.Wait (the bell rings for events, on in-process and eventfd ports
// alike); a slot a suspended flow leaves behind is clear when the next flow
// gets it; Flow reports the flow's entry and counters.
func TestAdvise(t *testing.T) {
	t.Run("in-process", func(t *testing.T) { testAdvise(t, (*nexus.Nexus).OpenPort) })
	t.Run("eventfd", func(t *testing.T) { testAdvise(t, (*nexus.Nexus).OpenEventfdPort) })
}

func testAdvise(t *testing.T, open func(*nexus.Nexus, string) (*nexus.Port, error)) {
	n, wire := newNexus(t, nexus.Options{ReapInterval: noTimer})
	p, err := open(n, "app")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	appEnd := netip.AddrPortFrom(local, 7000)
	peerEnd := netip.AddrPortFrom(peer, 9000)
	key := packet.MakeKey(packet.ProtoUDP, appEnd, peerEnd)
	fi, err := p.Register(key, flow.Connected)
	if err != nil {
		t.Fatal(err)
	}
	app := p.App()
	if !app.Admissible(fi.Advisory) {
		t.Fatalf("a new flow's entry %d reads suspended", fi.Advisory)
	}

	// awaitAdvisory sleeps in Port.Wait until an advisory event for the
	// flow's entry arrives, and sends whether the table then admits it.
	// It runs on its own goroutine, as the app's consumer would.
	type result struct {
		admissible bool
		err        error
	}
	got := make(chan result)
	awaitAdvisory := func() {
		ev := make([]channel.Event, 16)
		seen := false
		var err error
		check := func() bool {
			var k int
			if k, err = app.Events(ev); err != nil {
				return true
			}
			for _, e := range ev[:k] {
				if e.Kind == channel.EventAdvisory && e.Arg == fi.Advisory {
					seen = true
				}
			}
			return seen
		}
		for !seen && err == nil {
			err = p.Wait(check, 0)
		}
		got <- result{app.Admissible(fi.Advisory), err}
	}
	go awaitAdvisory()
	if err := n.Advise(key, true); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.err != nil || r.admissible {
		t.Fatalf("after suspend: admissible %v, %v", r.admissible, r.err)
	}
	go awaitAdvisory()
	if err := n.Advise(key, false); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.err != nil || !r.admissible {
		t.Fatalf("after resume: admissible %v, %v", r.admissible, r.err)
	}

	// The flow's figures, after one packet each way.
	send(t, p, udpPacket(appEnd, peerEnd, []byte("out")), fi.ID)
	readFrame(t, wire)
	if _, err := wire.Write([][]byte{udpFrame(peerEnd, appEnd, []byte("in"))}); err != nil {
		t.Fatal(err)
	}
	receive(t, p)
	fs, err := n.Flow(key)
	if err != nil {
		t.Fatal(err)
	}
	if fs.Port != p.Name() || fs.Advisory != fi.Advisory || fs.Counters.PacketsOut != 1 || fs.Counters.PacketsIn != 1 {
		t.Fatalf("flow stats %+v, want port %s, entry %d, one packet each way", fs, p.Name(), fi.Advisory)
	}

	// Torn down while suspended: the next flow on the slot starts clear.
	if err := n.Advise(key, true); err != nil {
		t.Fatal(err)
	}
	if err := p.Teardown(key); err != nil {
		t.Fatal(err)
	}
	key2 := packet.MakeKey(packet.ProtoUDP, appEnd, netip.AddrPortFrom(peer, 9001))
	fi2, err := p.Register(key2, flow.Connected)
	if err != nil {
		t.Fatal(err)
	}
	if fi2.Advisory != fi.Advisory {
		t.Fatalf("the flow table gave entry %d, not the freed %d: the test proves nothing", fi2.Advisory, fi.Advisory)
	}
	if !app.Admissible(fi2.Advisory) {
		t.Fatal("a new flow inherited the suspension of the slot's last flow")
	}

	if err := n.Advise(key, true); !errors.Is(err, nexus.ErrNoFlow) {
		t.Fatalf("advise a torn-down flow: %v", err)
	}
	if _, err := n.Flow(key); !errors.Is(err, nexus.ErrNoFlow) {
		t.Fatalf("figures of a torn-down flow: %v", err)
	}
	if st, err := n.Stats(); err != nil || st.Ports[0].Channel.Suspends != 2 || st.Ports[0].Channel.Resumes != 2 {
		t.Fatalf("channel counters %+v %v: want 2 suspends (Advise), 2 resumes (Advise, Register)", st.Ports[0].Channel, err)
	}
}

// TestOpenPortWith: port options reach the switch; options it refuses (a
// rate cap without regulation) fail the open and leave no port behind.
func TestOpenPortWith(t *testing.T) {
	n, _ := newNexus(t, nexus.Options{ReapInterval: noTimer})
	if _, err := n.OpenPortWith("capped", nexus.PortOptions{Rate: 1_000_000}); !errors.Is(err, flowswitch.ErrBadOptions) {
		t.Fatalf("a rate cap without regulation: %v", err)
	}
	p, err := n.OpenPortWith("honours", nexus.PortOptions{Advisories: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	st, err := n.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Ports) != 1 || st.Ports[0].Name != p.Name() {
		t.Fatalf("ports %+v, want only %s", st.Ports, p.Name())
	}
}
