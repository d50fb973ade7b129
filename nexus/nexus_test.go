package nexus_test

import (
	"errors"
	"net/netip"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// The nexus owns local; the test plays the peer at the other end of the
// wire (RFC 2544 benchmarking addresses).
var (
	local = netip.MustParseAddr("198.18.0.1")
	peer  = netip.MustParseAddr("198.18.0.2")
)

// noTimer is a reap interval so long that the worker's only timer never
// fires during a test: every wake-up the tests see came from an event.
const noTimer = time.Hour

func newNexus(t *testing.T, o nexus.Options) (*nexus.Nexus, netif.Link) {
	t.Helper()
	return newNexusOn(t, o, memif.Options{Name: t.Name()})
}

// newNexusOn is newNexus on a wire of options mo.
func newNexusOn(t *testing.T, o nexus.Options, mo memif.Options) (*nexus.Nexus, netif.Link) {
	t.Helper()
	a, b, err := memif.NewPair(mo)
	if err != nil {
		t.Fatal(err)
	}
	o.Link, o.Addrs = a, []netip.Addr{local}
	n, err := nexus.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n, b
}

// udpFrame builds an Ethernet/IPv4/UDP frame with valid checksums.
func udpFrame(src, dst netip.AddrPort, payload []byte) []byte {
	return (&packettest.Frame{Src: src, Dst: dst, Proto: packet.ProtoUDP, Payload: payload}).Bytes()
}

// udpPacket builds an IPv4/UDP packet with valid checksums.
func udpPacket(src, dst netip.AddrPort, payload []byte) []byte {
	return (&packettest.Frame{Link: packet.RawIP, Src: src, Dst: dst, Proto: packet.ProtoUDP, Payload: payload}).Bytes()
}

// receive waits on the port until one packet arrives and gives its buffer
// back.
func receive(t testing.TB, p *nexus.Port) []byte {
	t.Helper()
	var bufs [8]channel.Buf
	var got []byte
	check := func() bool {
		n, err := p.App().Receive(bufs[:])
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return false
		}
		got = append([]byte(nil), bufs[0].Data...)
		if _, err := p.App().Free(bufs[:n]); err != nil {
			t.Fatal(err)
		}
		p.Kick()
		return true
	}
	for got == nil {
		if err := p.Wait(check, 0); err != nil {
			t.Fatal(err)
		}
	}
	return got
}

// send puts one packet on the port's TX ring, stamped with id.
func send(t testing.TB, p *nexus.Port, pkt []byte, id [16]byte) {
	t.Helper()
	var bufs [1]channel.Buf
	for {
		n, err := p.App().Alloc(bufs[:])
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		p.Kick()
		if err := p.Wait(func() bool { return false }, 0); err != nil {
			t.Fatal(err)
		}
	}
	b := bufs[0]
	b.Data = b.Data[:copy(b.Data, pkt)]
	m, err := p.App().Meta(b.Index)
	if err != nil {
		t.Fatal(err)
	}
	copy(m[channel.TxMetaFlowIDOff:], id[:])
	if n, err := p.App().Send([]channel.Buf{b}); n != 1 || err != nil {
		t.Fatalf("send: %d, %v", n, err)
	}
	p.Kick()
}

// readFrame waits on the peer's end of the wire for one frame.
func readFrame(t testing.TB, l netif.Link) []byte {
	t.Helper()
	bufs := [][]byte{make([]byte, 2048)}
	sizes := []int{0}
	for {
		n, err := l.Read(bufs, sizes)
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			return bufs[0][:sizes[0]]
		}
		if err := l.Wait(-1); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWakeUps runs a ping-pong between the peer and an app through a
// parked nexus whose only timer never fires: each leg wakes the worker
// through the link waiter (frames in), the app's kick (Port.Kick for an
// in-process port, the channel's eventfd and a port waiter for one woken
// as a remote app's would be) or the request channel, and the app through
// its bell. A missing wake-up
// hangs the test; the round-trip times show the wake-ups take
// microseconds, not the 10 ms of a polling loop.
//
// An unpaced memif wire wakes the worker directly (netif.Notifier); a paced
// one, whose frames become readable at due times, through a link waiter
// goroutine in the link's Wait, as a device's does.
func TestWakeUps(t *testing.T) {
	t.Run("in-process", func(t *testing.T) { testWakeUps(t, (*nexus.Nexus).OpenPort) })
	t.Run("eventfd", func(t *testing.T) { testWakeUps(t, (*nexus.Nexus).OpenEventfdPort) })
	t.Run("link-waiter", func(t *testing.T) {
		n, wire := newNexusOn(t, nexus.Options{ReapInterval: noTimer}, memif.Options{Name: t.Name(), Delay: time.Microsecond})
		testWakeUpsOn(t, n, wire, (*nexus.Nexus).OpenPort)
	})
}

// udpApp opens a port on n (closed at the test's end) with one connected
// UDP flow between the app's end and the peer's.
func udpApp(t *testing.T, n *nexus.Nexus, open func(*nexus.Nexus, string) (*nexus.Port, error)) (p *nexus.Port, id channel.FlowInfo, appEnd, peerEnd netip.AddrPort) {
	t.Helper()
	p, err := open(n, "app")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	appEnd = netip.AddrPortFrom(local, 7000)
	peerEnd = netip.AddrPortFrom(peer, 9000)
	if id, err = p.Register(packet.MakeKey(packet.ProtoUDP, appEnd, peerEnd), flow.Connected); err != nil {
		t.Fatal(err)
	}
	return p, id, appEnd, peerEnd
}

func testWakeUps(t *testing.T, open func(*nexus.Nexus, string) (*nexus.Port, error)) {
	testWakeUpsWith(t, nexus.Options{ReapInterval: noTimer}, open)
}

func testWakeUpsWith(t *testing.T, o nexus.Options, open func(*nexus.Nexus, string) (*nexus.Port, error)) {
	n, wire := newNexus(t, o)
	testWakeUpsOn(t, n, wire, open)
}

func testWakeUpsOn(t *testing.T, n *nexus.Nexus, wire netif.Link, open func(*nexus.Nexus, string) (*nexus.Port, error)) {
	p, id, appEnd, peerEnd := udpApp(t, n, open)
	const rounds = 200
	rtts := make([]time.Duration, 0, rounds)
	for i := range rounds {
		start := time.Now()
		if _, err := wire.Write([][]byte{udpFrame(peerEnd, appEnd, []byte{byte(i)})}); err != nil {
			t.Fatal(err)
		}
		got := receive(t, p)
		if len(got) != 29 || got[28] != byte(i) {
			t.Fatalf("round %d: app got %x", i, got)
		}
		send(t, p, udpPacket(appEnd, peerEnd, []byte{byte(i)}), id.ID)
		f := readFrame(t, wire)
		if len(f) != 14+29 || f[14+28] != byte(i) {
			t.Fatalf("round %d: peer got %x", i, f)
		}
		rtts = append(rtts, time.Since(start))
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	t.Logf("peer → nexus → app → nexus → peer: p50 %v, p99 %v over %d rounds", rtts[rounds/2], rtts[rounds*99/100], rounds)

	// A request to a parked worker is served at once, timer or not.
	start := time.Now()
	if _, err := n.Stats(); err != nil {
		t.Fatal(err)
	}
	t.Logf("request to a parked worker: %v", time.Since(start))
}

// TestPortsAndFlows checks the control requests: a port holds only the
// flows it registered, cannot tear down another's, and closing it tears
// all of its own down without touching the others'.
func TestPortsAndFlows(t *testing.T) {
	n, _ := newNexus(t, nexus.Options{ReapInterval: noTimer})
	a, err := n.OpenPort("a")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := n.OpenPort("b")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	listen := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(local, 80), netip.AddrPort{})
	conn := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(local, 80), netip.AddrPortFrom(peer, 40000))
	if _, err := a.Register(listen, flow.Listener3); err != nil {
		t.Fatal(err)
	}
	// A 5-tuple on the port its own listener holds.
	if _, err := a.Register(conn, flow.Connected); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Register(packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(local, 80), netip.AddrPortFrom(peer, 40001)), flow.Connected); !errors.Is(err, flow.ErrPortInUse) {
		t.Errorf("b registered on a's port: %v", err)
	}
	if err := b.Teardown(conn); !errors.Is(err, nexus.ErrNoFlow) {
		t.Errorf("b tore down a's flow: %v", err)
	}
	bk := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(local, 53), netip.AddrPort{})
	if _, err := b.Register(bk, flow.Listener3); err != nil {
		t.Fatal(err)
	}
	st, err := n.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Flows != 3 || len(st.Ports) != 2 || st.Ports[0].Flows != 2 || st.Ports[1].Flows != 1 {
		t.Fatalf("flows %d, ports %+v", st.Flows, st.Ports)
	}
	if err := a.Teardown(conn); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := a.Register(listen, flow.Listener3); !errors.Is(err, nexus.ErrClosed) {
		t.Errorf("register on a closed port: %v", err)
	}
	st, err = n.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Flows != 1 || len(st.Ports) != 1 || st.Ports[0].Flows != 1 {
		t.Fatalf("after closing a: flows %d, ports %+v", st.Flows, st.Ports)
	}
	// a's port 80 is free again.
	if _, err := b.Register(listen, flow.Listener3); err != nil {
		t.Errorf("b cannot take the port a released: %v", err)
	}
}

// TestDefunctChannel: an app that puts a buffer it does not hold on its TX
// ring gets its channel defunct; the nexus tears its flows down and closes
// its port, and another port keeps working.
func TestDefunctChannel(t *testing.T) {
	n, wire := newNexus(t, nexus.Options{ReapInterval: noTimer})
	bad, err := n.OpenPort("bad")
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	good, err := n.OpenPort("good")
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	if _, err := bad.Register(packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(local, 1), netip.AddrPort{}), flow.Listener3); err != nil {
		t.Fatal(err)
	}
	goodEnd, peerEnd := netip.AddrPortFrom(local, 2), netip.AddrPortFrom(peer, 2)
	if _, err := good.Register(packet.MakeKey(packet.ProtoUDP, goodEnd, peerEnd), flow.Connected); err != nil {
		t.Fatal(err)
	}
	if _, err := bad.App().Send([]channel.Buf{{Index: 12345, Data: make([]byte, 60)}}); err != nil {
		t.Fatal(err)
	}
	bad.Kick()
	if err := bad.Wait(func() bool { return false }, 0); !errors.Is(err, nexus.ErrClosed) {
		t.Fatalf("wait on the defunct port: %v", err)
	}
	if err := bad.App().Err(); !errors.Is(err, channel.ErrDefunct) {
		t.Fatalf("app error %v, want defunct", err)
	}
	st, err := n.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Flows != 1 || len(st.Ports) != 1 {
		t.Fatalf("after the defunct channel: flows %d, ports %+v", st.Flows, st.Ports)
	}
	wire.Write([][]byte{udpFrame(peerEnd, goodEnd, []byte("still here"))})
	if got := receive(t, good); string(got[28:]) != "still here" {
		t.Fatalf("good port got %q", got)
	}
}

// TestClose closes a nexus with open ports while goroutines make requests:
// every request returns its result or ErrClosed, the apps see their
// channels closed, and every goroutine the nexus started is gone.
func TestClose(t *testing.T) {
	base := runtime.NumGoroutine()
	a, _, err := memif.NewPair(memif.Options{})
	if err != nil {
		t.Fatal(err)
	}
	n, err := nexus.New(nexus.Options{Link: a, Addrs: []netip.Addr{local}})
	if err != nil {
		t.Fatal(err)
	}
	var ports []*nexus.Port
	for i := range 4 {
		open := n.OpenPort
		if i%2 == 1 {
			open = n.OpenEventfdPort // with a port waiter goroutine
		}
		p, err := open("p")
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, p)
	}
	var wg, running sync.WaitGroup
	for i, p := range ports {
		wg.Add(1)
		running.Add(1)
		go func() {
			defer wg.Done()
			var once sync.Once
			defer once.Do(running.Done)
			for j := 0; ; j++ {
				if j == 10 {
					once.Do(running.Done)
				}
				k := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(local, uint16(1000*i+j%1000+1)), netip.AddrPort{})
				_, err := p.Register(k, flow.Listener3)
				if errors.Is(err, nexus.ErrClosed) {
					return
				}
				if err != nil && !errors.Is(err, flow.ErrPortInUse) {
					t.Errorf("register: %v", err)
					return
				}
				p.Teardown(k)
			}
		}()
	}
	running.Wait() // every goroutine made requests to the live nexus
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for _, p := range ports {
		if err := p.Wait(func() bool { return false }, 0); !errors.Is(err, nexus.ErrClosed) {
			t.Errorf("wait after close: %v", err)
		}
		if err := p.App().Err(); !errors.Is(err, channel.ErrDefunct) {
			t.Errorf("app error %v, want closed", err)
		}
		p.Close()
	}
	if _, err := n.OpenPort("late"); !errors.Is(err, nexus.ErrClosed) {
		t.Errorf("open after close: %v", err)
	}
	// The nexus's goroutines are joined by Close; the test's own senders
	// may still be between wg.Done and their exit.
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > base; runtime.Gosched() {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after close, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
	}
}

func TestOptions(t *testing.T) {
	a, _, err := memif.NewPair(memif.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, o := range []nexus.Options{
		{},
		{Link: a},
		{Link: a, Addrs: []netip.Addr{local}, ReapInterval: -1},
		{Link: a, Addrs: []netip.Addr{local}, Switch: flowswitch.Options{Link: a}},
		{Link: a, Addrs: []netip.Addr{netip.MustParseAddr("224.0.0.1")}},
	} {
		if n, err := nexus.New(o); err == nil {
			n.Close()
			t.Errorf("New(%+v) accepted", o)
		}
	}
}

// TestHostLink: with a host link (the kernel's side), a frame of no flow
// goes from the device to the host link and a frame the kernel sends goes
// out on the device, each waking the parked worker through its link's
// waiter (the reaper's timer never fires).
func TestHostLink(t *testing.T) {
	hostEnd, kernel, err := memif.NewPair(memif.Options{Name: "host"})
	if err != nil {
		t.Fatal(err)
	}
	n, wire := newNexus(t, nexus.Options{ReapInterval: noTimer, Switch: flowswitch.Options{HostLink: hostEnd}})
	p, err := n.OpenPort("app") // a user port with no flow for this traffic
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	in := udpFrame(netip.AddrPortFrom(peer, 9), netip.AddrPortFrom(local, 22), []byte("to the kernel"))
	for i := range 3 {
		if _, err := wire.Write([][]byte{in}); err != nil {
			t.Fatal(err)
		}
		if got := readFrame(t, kernel); string(got) != string(in) {
			t.Fatalf("round %d: kernel got %x", i, got)
		}
		out := udpFrame(netip.AddrPortFrom(local, 22), netip.AddrPortFrom(peer, 9), []byte("from the kernel"))
		if _, err := kernel.Write([][]byte{out}); err != nil {
			t.Fatal(err)
		}
		if got := readFrame(t, wire); string(got) != string(out) {
			t.Fatalf("round %d: wire got %x", i, got)
		}
	}
	st, err := n.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Switch.HostDelivered != 3 || st.Switch.HostTx != 3 {
		t.Fatalf("host port counters: delivered %d, sent %d", st.Switch.HostDelivered, st.Switch.HostTx)
	}
}

// Snapshot lists the flows and ports the nexus holds, and may be taken from
// another goroutine while apps work (run under -race).
func TestSnapshot(t *testing.T) {
	n, _ := newNexus(t, nexus.Options{})
	a, err := n.OpenPort("a")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	k := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(local, 53), netip.AddrPort{})
	if _, err := a.Register(k, flow.Listener3); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 50 {
			a.Kick() // the worker runs rounds while snapshots are taken
		}
	}()
	for range 50 {
		snap, err := n.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		if snap.Totals.ActiveFlows != 1 || len(snap.Ports) != 1 || !strings.HasPrefix(snap.Ports[0].Channel, "a") {
			t.Fatalf("snapshot: %d flows, ports %+v; want 1 flow on port a", snap.Totals.ActiveFlows, snap.Ports)
		}
	}
	<-done
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Snapshot(); err == nil {
		t.Error("Snapshot after Close succeeded")
	}
}

// TestLinkFailed: when the link fails, LinkFailed closes and LinkErr says
// why; the ports are closed, and requests still get answers.
func TestLinkFailed(t *testing.T) {
	n, wire := newNexus(t, nexus.Options{})
	p, err := n.OpenPort("app")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if n.LinkErr() != nil {
		t.Fatalf("LinkErr before a failure: %v", n.LinkErr())
	}
	wire.Close() // closing one end of a memif wire closes both
	select {
	case <-n.LinkFailed():
	case <-time.After(10 * time.Second):
		t.Fatal("LinkFailed not closed 10 s after the wire closed")
	}
	if err := n.LinkErr(); err == nil || !strings.Contains(err.Error(), "nexus on") {
		t.Errorf("LinkErr: %v", err)
	}
	if _, err := n.OpenPort("late"); err == nil {
		t.Error("a port opened on a failed link")
	}
}

// TestBusyPoll runs the ping-pong of TestWakeUps on a nexus that spins
// before it sleeps, and checks the budget's bounds.
func TestBusyPoll(t *testing.T) {
	for _, d := range []time.Duration{-time.Microsecond, 2 * time.Second} {
		a, _, err := memif.NewPair(memif.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if n, err := nexus.New(nexus.Options{Link: a, Addrs: []netip.Addr{local}, BusyPoll: d}); err == nil {
			n.Close()
			t.Errorf("busy-poll budget %v accepted", d)
		}
		a.Close()
	}
	testWakeUpsWith(t, nexus.Options{ReapInterval: noTimer, BusyPoll: 50 * time.Microsecond}, (*nexus.Nexus).OpenPort)
}

// TestNoWakeForRoom: an app that is not short of anything sleeps through
// the nexus taking its TX ring (no goroutine hand-off that would find
// nothing to do), and wakes for a received packet.
func TestNoWakeForRoom(t *testing.T) {
	n, wire := newNexus(t, nexus.Options{ReapInterval: noTimer})
	p, id, appEnd, peerEnd := udpApp(t, n, (*nexus.Nexus).OpenPort)
	// A first packet, and a request that makes the worker run a round
	// after it: the events of the registration and of the pool's growth
	// are taken in (an event wakes a sleeping app, rightly).
	send(t, p, udpPacket(appEnd, peerEnd, []byte{0}), id.ID)
	readFrame(t, wire)
	if _, err := n.Stats(); err != nil {
		t.Fatal(err)
	}
	const timeout = 300 * time.Millisecond
	armed := make(chan struct{})
	woke := make(chan time.Duration, 1)
	go func() {
		var once sync.Once
		start := time.Now()
		err := p.Wait(func() bool { once.Do(func() { close(armed) }); return false }, timeout)
		if err != nil {
			t.Error(err)
		}
		woke <- time.Since(start)
	}()
	<-armed
	// Send is safe beside Wait (a stack sends from netstack's goroutines
	// while its service goroutine sleeps).
	send(t, p, udpPacket(appEnd, peerEnd, []byte{1}), id.ID)
	if f := readFrame(t, wire); len(f) != 14+29 {
		t.Fatalf("peer got %x", f)
	}
	if d := <-woke; d < timeout {
		t.Errorf("the app woke after %v, before its %v timeout, for the nexus taking its TX ring", d, timeout)
	}
	// A packet for it wakes it.
	if _, err := wire.Write([][]byte{udpFrame(peerEnd, appEnd, []byte{2})}); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, p); len(got) != 29 || got[28] != 2 {
		t.Fatalf("app got %x", got)
	}
}
