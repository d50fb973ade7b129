package stack_test

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/stack"
)

// udpConn registers the flow local:port → peer:9 with the endpoint and
// dials it.
func (r *rig) udpConn(t *testing.T, port uint16) (*gonet.UDPConn, packet.Key) {
	t.Helper()
	key := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(local, port), netip.AddrPortFrom(peer, 9))
	if err := r.ep.Register(key, flow.Connected); err != nil {
		t.Fatal(err)
	}
	laddr := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(local.As4()), Port: port}
	raddr := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(peer.As4()), Port: 9}
	c, err := gonet.DialUDP(r.ns, &laddr, &raddr, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, key
}

// readDatagram waits on the peer's end of the wire for one frame and
// returns its UDP source port and first payload byte.
func (r *rig) readDatagram(t *testing.T) (port uint16, seq byte) {
	t.Helper()
	port, _, seq = r.readUDP(t)
	return port, seq
}

// readUDP waits on the peer's end of the wire for one frame and returns its
// UDP source and destination ports and first payload byte.
func (r *rig) readUDP(t *testing.T) (src, dst uint16, seq byte) {
	t.Helper()
	bufs, sizes := [][]byte{make([]byte, 2048)}, []int{0}
	for {
		n, err := r.wire.Read(bufs, sizes)
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			f := bufs[0][:sizes[0]]
			const udp = 14 + 20 // Ethernet, IPv4 without options
			if len(f) < udp+9 {
				t.Fatalf("short frame %x", f)
			}
			return binary.BigEndian.Uint16(f[udp:]), binary.BigEndian.Uint16(f[udp+2:]), f[udp+8]
		}
		if err := r.wire.Wait(-1); err != nil {
			t.Fatal(err)
		}
	}
}

func (r *rig) flowOut(t *testing.T, key packet.Key) uint64 {
	t.Helper()
	fs, err := r.n.Flow(key)
	if err != nil {
		t.Fatal(err)
	}
	return fs.Counters.PacketsOut
}

// TestAdvisoryHold walks every path of a held packet with UDP, whose
// writes reach WritePackets synchronously: a suspended flow's packets are
// held (up to MaxHeld, the rest dropped and counted) while another flow's
// go out; the resume sends the held ones, in order; a flow torn down and a
// stop drop what is held. TestMain's leak check proves every reference was
// released on each path.
func TestAdvisoryHold(t *testing.T) {
	const maxHeld = 8
	r := newRig(t, stack.Options{MaxHeld: maxHeld})
	sus, keyS := r.udpConn(t, 5000)
	other, keyO := r.udpConn(t, 5001)

	if err := r.n.Advise(keyS, true); err != nil {
		t.Fatal(err)
	}
	for i := range maxHeld + 4 {
		if _, err := sus.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		if _, err := other.Write([]byte{byte(100 + i)}); err != nil {
			t.Fatal(err)
		}
	}
	st := r.ep.Stats()
	if st.TxHeld != maxHeld || st.TxHeldDrops != 4 || st.FlowsHeld != 1 {
		t.Fatalf("held %d, dropped %d, flows held %d: want %d, 4, 1", st.TxHeld, st.TxHeldDrops, st.FlowsHeld, maxHeld)
	}
	if flows, pkts := r.ep.Suspended(); flows != 1 || pkts != maxHeld {
		t.Fatalf("suspended: %d flows, %d packets", flows, pkts)
	}
	// The other flow is not held: its three datagrams are on the wire.
	for i := range 3 {
		if port, seq := r.readDatagram(t); port != 5001 || seq != byte(100+i) {
			t.Fatalf("datagram %d on the wire: port %d seq %d", i, port, seq)
		}
	}
	if got := r.flowOut(t, keyS); got != 0 {
		t.Fatalf("%d packets of the suspended flow reached the nexus", got)
	}

	// Resume: the endpoint, asleep, is woken by the event and sends the
	// held datagrams, oldest first.
	if err := r.n.Advise(keyS, false); err != nil {
		t.Fatal(err)
	}
	for i := range maxHeld {
		if port, seq := r.readDatagram(t); port != 5000 || seq != byte(i) {
			t.Fatalf("held datagram %d on the wire: port %d seq %d", i, port, seq)
		}
	}
	st = r.ep.Stats()
	if st.TxHeldSent != maxHeld || st.FlowsResumed != 1 || st.AdvisoryEvents < 2 {
		t.Fatalf("after resume: sent %d, resumed %d, %d advisory events", st.TxHeldSent, st.FlowsResumed, st.AdvisoryEvents)
	}
	if flows, pkts := r.ep.Suspended(); flows != 0 || pkts != 0 {
		t.Fatalf("after resume: %d flows, %d packets held", flows, pkts)
	}

	// Torn down while holding: the held packets go with the flow.
	if err := r.n.Advise(keyS, true); err != nil {
		t.Fatal(err)
	}
	noFlow := r.ep.Stats().TxNoFlow
	for i := range 2 {
		sus.Write([]byte{byte(i)})
	}
	if err := r.ep.Release(keyS); err != nil {
		t.Fatal(err)
	}
	if got := r.ep.Stats().TxNoFlow - noFlow; got != 2 {
		t.Fatalf("release dropped %d held packets, want 2", got)
	}
	if flows, _ := r.ep.Suspended(); flows != 0 {
		t.Fatalf("a released flow still holds: %d flows", flows)
	}

	// Stopped while holding.
	if err := r.n.Advise(keyO, true); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		other.Write([]byte{byte(i)})
	}
	if _, pkts := r.ep.Suspended(); pkts != 3 {
		t.Fatalf("other flow holds %d packets, want 3", pkts)
	}
	closed := r.ep.Stats().TxClosed
	r.ep.Stop()
	if got := r.ep.Stats().TxClosed - closed; got != 3 {
		t.Fatalf("stop dropped %d held packets, want 3", got)
	}
	if flows, pkts := r.ep.Suspended(); flows != 0 || pkts != 0 {
		t.Fatalf("after stop: %d flows, %d packets held", flows, pkts)
	}
}
