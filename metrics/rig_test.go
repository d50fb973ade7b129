package metrics_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/neigh"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// Documentation addresses: RFC 2544's benchmarking range 198.18.0.0/15.
var (
	localIP  = netip.MustParseAddr("198.18.0.1")
	remoteIP = netip.MustParseAddr("198.19.0.2")
	srcMAC   = [6]byte{0x02, 0, 0, 0, 0, 0x01}
	dstMAC   = [6]byte{0x02, 0, 0, 0, 0, 0xfe}
)

// rig is a real switch on one end of a memif wire, the test writing and
// reading frames on the other end, with two user ports ("app0", "app1"),
// each a channel with its app end.
type rig struct {
	sw    *flowswitch.Switch
	peer  netif.Link
	chans []*channel.Channel
	apps  []*channel.App
	ports []flow.PortID
	// udp0 (port 0) and udp1 (port 1) are UDP flows local:5000 and
	// local:5001 ↔ remote:6000; tcp0 (port 0) a TCP flow local:7000 ↔
	// remote:8000; listen (port 0) a TCP listener on local:80.
	udp0, udp1, tcp0, listen *flow.Entry
}

// portRate is port 1's transmit rate cap on a regulated rig, bits/s.
const portRate = 8e9

// newRig builds the rig. A regulated one has Regulation (with no adaptive
// batching, so RxOnce delivers at once) and a neighbour resolver (the
// next hop stays the static DstMAC): port 0's app honours advisories, port
// 1 has a rate cap of portRate.
func newRig(t testing.TB, chOpts channel.Options, regulated bool) *rig {
	t.Helper()
	a, b, err := memif.NewPair(memif.Options{QueueLen: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	opts := flowswitch.Options{Link: a, LocalAddrs: []netip.Addr{localIP}, SrcMAC: srcMAC, DstMAC: dstMAC}
	if regulated {
		opts.Regulation = &flowswitch.RegulationOptions{NoMitigation: true}
		opts.Neighbors, err = neigh.New(neigh.Options{MAC: srcMAC, Addrs: []netip.Addr{localIP}})
		if err != nil {
			t.Fatal(err)
		}
	}
	sw, err := flowswitch.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{sw: sw, peer: b}
	for i := range 2 {
		co := chOpts
		co.Name = fmt.Sprintf("app%d", i)
		ch, err := channel.New(co)
		if err != nil {
			t.Fatal(err)
		}
		app, err := ch.AttachLocal()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { app.Close(); ch.Close() })
		r.chans = append(r.chans, ch)
		r.apps = append(r.apps, app)
		var po flowswitch.AddPortOptions
		if regulated {
			po = flowswitch.AddPortOptions{Advisories: i == 0, Rate: portRate * int64(i)}
		}
		id, err := sw.AddPortWith(ch, po)
		if err != nil {
			t.Fatal(err)
		}
		r.ports = append(r.ports, id)
	}
	r.udp0 = r.register(t, 0, packet.ProtoUDP, 5000, netip.AddrPortFrom(remoteIP, 6000), flow.Connected)
	r.udp1 = r.register(t, 1, packet.ProtoUDP, 5001, netip.AddrPortFrom(remoteIP, 6000), flow.Connected)
	r.tcp0 = r.register(t, 0, packet.ProtoTCP, 7000, netip.AddrPortFrom(remoteIP, 8000), flow.Connected)
	r.listen = r.register(t, 0, packet.ProtoTCP, 80, netip.AddrPort{}, flow.Listener3)
	return r
}

func (r *rig) register(t testing.TB, i int, proto uint8, lport uint16, remote netip.AddrPort, kind flow.Kind) *flow.Entry {
	t.Helper()
	e, err := r.sw.Register(r.ports[i], packet.MakeKey(proto, netip.AddrPortFrom(localIP, lport), remote), kind)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// rxFrame is an Ethernet/IPv4/UDP frame remote:sport → local:dport.
func rxFrame(sport, dport uint16, tag string) []byte {
	f := packettest.Frame{Src: netip.AddrPortFrom(remoteIP, sport), Dst: netip.AddrPortFrom(localIP, dport),
		Proto: packet.ProtoUDP, Payload: []byte(tag)}
	return f.Bytes()
}

// txPacket is a raw IPv4/UDP packet local:sport → remote:6000, size bytes
// long (IP length), as an app sends it.
func txPacket(sport uint16, size int) []byte {
	f := packettest.Frame{Link: packet.RawIP, Src: netip.AddrPortFrom(localIP, sport),
		Dst: netip.AddrPortFrom(remoteIP, 6000), Proto: packet.ProtoUDP}
	f.Payload = make([]byte, size-f.HeaderLen())
	return f.Bytes()
}

func (r *rig) write(t testing.TB, frames ...[]byte) {
	t.Helper()
	if n, err := r.peer.Write(frames); err != nil || n != len(frames) {
		t.Fatalf("peer write: %d of %d, %v", n, len(frames), err)
	}
}

// drain receives and frees everything on app i's RX ring.
func (r *rig) drain(t testing.TB, i int) int {
	t.Helper()
	bufs := make([]channel.Buf, 64)
	total := 0
	for {
		n, err := r.apps[i].Receive(bufs)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return total
		}
		total += n
		if _, err := r.apps[i].Free(bufs[:n]); err != nil {
			t.Fatal(err)
		}
		if err := r.chans[i].Sync(); err != nil {
			t.Fatal(err)
		}
	}
}

// send has app i send pkts on flow e (its ID in each buffer's metadata,
// written through the nexus's view of the shared memory, as the flowswitch
// tests do) and runs TxSync until the TX rings are empty, then Service
// (which drains a regulated switch's queue).
func (r *rig) send(t testing.TB, i int, e *flow.Entry, pkts ...[]byte) {
	t.Helper()
	bufs := make([]channel.Buf, len(pkts))
	for got := 0; got < len(pkts); {
		if err := r.chans[i].Sync(); err != nil {
			t.Fatal(err)
		}
		n, err := r.apps[i].Alloc(bufs[got:])
		if err != nil || n == 0 {
			t.Fatalf("app alloc: %d, %v", n, err)
		}
		got += n
	}
	id := e.ID()
	for j, b := range bufs {
		bufs[j].Data = b.Data[:copy(b.Data, pkts[j])]
		meta := r.chans[i].Pool().UserMeta(b.Index)
		clear(meta)
		copy(meta[channel.TxMetaFlowIDOff:], id[:])
	}
	if n, err := r.apps[i].Send(bufs); n != len(bufs) || err != nil {
		t.Fatalf("app send: %d of %d, %v", n, len(bufs), err)
	}
	for {
		n, err := r.sw.TxSync()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	if _, err := r.sw.Service(); err != nil {
		t.Fatal(err)
	}
}

// arpRequest is an ARP request from the peer (dstMAC, remoteIP) for
// localIP, broadcast.
func arpRequest(t testing.TB) []byte {
	t.Helper()
	a := neigh.ARP{EthDst: neigh.Broadcast, EthSrc: dstMAC, Op: neigh.ARPRequest, SenderMAC: dstMAC, SenderIP: remoteIP,
		TargetIP: localIP}
	b := make([]byte, neigh.ARPFrameLen)
	if _, err := neigh.PutARP(b, &a); err != nil {
		t.Fatal(err)
	}
	return b
}

// wire reads and discards every frame waiting at the peer end.
func (r *rig) wire(t testing.TB) int {
	t.Helper()
	bufs := make([][]byte, 64)
	for i := range bufs {
		bufs[i] = make([]byte, netif.MaxFrameLen(r.peer.MTU(), r.peer.LinkType()))
	}
	sizes := make([]int, len(bufs))
	total := 0
	for {
		n, err := r.peer.Read(bufs, sizes)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return total
		}
		total += n
	}
}

// traffic moves a known set of packets through the switch:
//
//	RX: 3 frames of udp0, 2 of udp1, 1 of no flow, 1 truncated (7 frames,
//	    5 delivered; drops rx/no_flow 1, rx/parse_truncated_ipv4 1)
//	TX: udp0 100 + 200 bytes and one with a spoofed source port (drop
//	    tx/src_port); udp1 150 bytes (3 packets, 450 bytes)
func (r *rig) traffic(t testing.TB) {
	t.Helper()
	good := rxFrame(6000, 5000, "a")
	r.write(t, good, good, good, rxFrame(6000, 5001, "b"), rxFrame(6000, 5001, "b"),
		rxFrame(6000, 5999, "none"), good[:14+10])
	if n, err := r.sw.RxOnce(); err != nil || n != 7 {
		t.Fatalf("RxOnce = %d, %v; want 7", n, err)
	}
	if n := r.drain(t, 0); n != 3 {
		t.Fatalf("app0 got %d packets", n)
	}
	if n := r.drain(t, 1); n != 2 {
		t.Fatalf("app1 got %d packets", n)
	}
	r.send(t, 0, r.udp0, txPacket(5000, 100), txPacket(5000, 200), txPacket(5999, 100))
	r.send(t, 1, r.udp1, txPacket(5001, 150))
	if n := r.wire(t); n != 3 {
		t.Fatalf("wire got %d frames", n)
	}
}
