package flowswitch_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/neigh"
	"github.com/skylane/skylane/packet"
)

// A listener flow's SYN-ACKs go to many remotes in one transmit batch: the
// switch resolves each packet's own destination (not the flow key's
// unspecified remote), through a neigh.Routes: packets to resolved remotes
// (on-link, and far behind a gateway) leave at once with their next hop's
// MAC, the one to an unknown remote waits, and leaves with its MAC once
// the kernel's answers come; the flow's counters count what left.
func TestL2RoutesPerPacketDestination(t *testing.T) {
	var asked []neigh.Query
	routes, err := neigh.NewRoutes(neigh.RoutesOptions{MAC: macA, Ask: func(q neigh.Query) { asked = append(asked, q) }})
	if err != nil {
		t.Fatal(err)
	}
	var clock int64 // the switch's: Service polls Routes after neigh.PendingPoll
	r := newRig(t, flowswitch.Options{SrcMAC: macA, Neighbors: routes, Now: func() int64 { return clock }}, channel.Options{})
	var (
		near    = netip.MustParseAddr("198.18.0.2")   // on-link, resolved
		unknown = netip.MustParseAddr("198.18.0.3")   // on-link, not asked yet
		gw      = netip.MustParseAddr("198.18.0.254") // the gateway, resolved
		macGW   = [6]byte{0x02, 0, 0, 0, 0, 0xfe}
		macUnk  = [6]byte{0x02, 0, 0, 0, 0, 0x03}
	)
	// The kernel's answers for the resolved ones, as neigh/kernel gives them.
	for _, d := range []netip.Addr{near, remoteIP} {
		routes.Hold(d, []byte{0x45})
	}
	routes.SetRoute(near, near)
	routes.SetRoute(remoteIP, gw)
	routes.SetNeighbor(near, macB, neigh.Reachable)
	routes.SetNeighbor(gw, macGW, neigh.Stale)
	clock += int64(neigh.PendingPoll)
	if _, err := r.sw.Service(); err != nil {
		t.Fatal(err)
	}
	r.wire(t) // the two primers
	asked = nil

	lst, err := r.sw.Register(r.ports[0], packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(localIP, 80), netip.AddrPort{}), flow.Listener3)
	if err != nil {
		t.Fatal(err)
	}
	synAck := func(dst netip.Addr) []byte {
		return txPkt{proto: packet.ProtoTCP, src: localIP, dst: dst, sport: 80, dport: 40000, flags: packet.TCPSyn | packet.TCPAck, size: 40}.build(t)
	}
	r.send(t, 0, lst.ID(), synAck(near), synAck(unknown), synAck(near), synAck(remoteIP))
	if _, err := r.sw.TxOnce(r.ports[0]); err != nil {
		t.Fatal(err)
	}
	var macs [][6]byte
	var dsts []netip.Addr
	for _, f := range r.wire(t) {
		macs = append(macs, [6]byte(f[0:6]))
		dsts = append(dsts, netip.AddrFrom4([4]byte(f[14+16:14+20])))
	}
	if !slices.Equal(dsts, []netip.Addr{near, near, remoteIP}) || !slices.Equal(macs, [][6]byte{macB, macB, macGW}) {
		t.Fatalf("on the wire: %v with %x, want the resolved three", dsts, macs)
	}
	var c flow.Counters
	r.sw.Do(func() { c = lst.Counters() })
	if c.PacketsOut != 3 || c.BytesOut != 3*40 {
		t.Errorf("listener counted %d packets, %d bytes out, want the 3 sent", c.PacketsOut, c.BytesOut)
	}
	if st := r.sw.Stats(); st.TxPackets != 3 || st.L2.Held != 1 {
		t.Errorf("tx %d, held %d", st.TxPackets, st.L2.Held)
	}
	if !slices.Equal(asked, []neigh.Query{{Kind: neigh.QueryRoute, Addr: unknown}}) {
		t.Errorf("asked %v", asked)
	}
	routes.SetRoute(unknown, unknown)
	routes.SetNeighbor(unknown, macUnk, neigh.Reachable)
	if !routes.Waiting() {
		t.Fatal("Routes not waiting")
	}
	if d, _ := r.sw.Service(); d > neigh.PendingPoll {
		t.Errorf("Service asks for a call in %v while packets wait, want at most %v", d, neigh.PendingPoll)
	}
	clock += int64(neigh.PendingPoll)
	if _, err := r.sw.Service(); err != nil {
		t.Fatal(err)
	}
	w := r.wire(t)
	if len(w) != 1 || [6]byte(w[0][0:6]) != macUnk || netip.AddrFrom4([4]byte(w[0][30:34])) != unknown {
		t.Fatalf("released %x", w)
	}
	if snap := r.sw.Snapshot(); snap.L2 == nil || snap.L2.RoutesTotal != 3 || len(snap.L2.Neighbors) != 3 {
		t.Errorf("snapshot next hops %+v", snap.L2)
	}
}

// Packets to remotes whose next hops are known leave through neigh.Routes
// without allocating, a batch alternating between two remotes.
func TestL2RoutesNoAllocs(t *testing.T) {
	routes, err := neigh.NewRoutes(neigh.RoutesOptions{MAC: macA, Ask: func(neigh.Query) {}})
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, flowswitch.Options{SrcMAC: macA, Neighbors: routes}, channel.Options{})
	other := netip.MustParseAddr("198.18.0.3")
	for _, d := range []netip.Addr{remoteIP, other} {
		routes.Hold(d, []byte{0x45})
		routes.SetRoute(d, d)
		routes.SetNeighbor(d, macB, neigh.Reachable)
	}
	lst, err := r.sw.Register(r.ports[0], packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(localIP, 80), netip.AddrPort{}), flow.Listener3)
	if err != nil {
		t.Fatal(err)
	}
	var pkts [][]byte
	for i := range 16 {
		d := remoteIP
		if i%2 == 1 {
			d = other
		}
		pkts = append(pkts, txPkt{proto: packet.ProtoTCP, src: localIP, dst: d, sport: 80, dport: 40000, flags: packet.TCPSyn | packet.TCPAck, size: 40}.build(t))
	}
	id := lst.ID()
	bufs := make([]channel.Buf, len(pkts))
	frames := make([][]byte, 32)
	for i := range frames {
		frames[i] = make([]byte, 2048)
	}
	sizes := make([]int, len(frames))
	step := func() {
		r.sendInto(t, 0, id, 0, bufs, pkts)
		if n, err := r.sw.TxOnce(r.ports[0]); n != len(pkts) || err != nil {
			t.Fatalf("TxOnce = %d, %v", n, err)
		}
		if n, _ := r.peer.Read(frames, sizes); n != len(pkts) {
			t.Fatalf("%d frames on the wire, want %d", n, len(pkts))
		}
	}
	for range 5 {
		step()
	}
	if n := testing.AllocsPerRun(50, step); n != 0 {
		t.Errorf("%v allocations per batch", n)
	}
	if st := r.sw.Stats().L2; st.Held != 0 || st.HoldDrops != 0 {
		t.Errorf("held %+v", st)
	}
}
