package flowswitch_test

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
	"github.com/skylane/skylane/pool"
	"github.com/skylane/skylane/regulate"
)

// newSuperTxRig is newTxRig with one port whose channel has 16 KiB
// buffers, on a wire of the given memif options, with the given switch
// options (Link, addresses and MACs set here).
func newSuperTxRig(t testing.TB, mo memif.Options, so flowswitch.Options) *rig {
	t.Helper()
	mo.QueueLen = 1024
	a, b, err := memif.NewPair(mo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	so.Link, so.LocalAddrs, so.SrcMAC, so.DstMAC = a, []netip.Addr{localIP}, txSrcMAC, txDstMAC
	sw, err := flowswitch.New(so)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{sw: sw, peer: b}
	ch, app := newChannel(t, channel.Options{Name: "super", Pool: pool.Options{BufferSize: pool.MaxBufferSize, SegmentSize: 16 * pool.MaxBufferSize}})
	r.chans, r.apps, r.ports = append(r.chans, ch), append(r.apps, app), append(r.ports, sw.AddPort(ch))
	return r
}

// superTCP is a TCP super packet of flow tcp0 (198.18.0.1:7000 →
// 198.19.0.2:8000) with payload bytes of a pattern starting at sequence
// number seq, flags ACK|PSH|FIN|CWR, a valid checksum.
func superTCP(seq uint32, payload int) []byte {
	p := make([]byte, payload)
	for i := range p {
		p[i] = byte(seq) + byte(i*31)
	}
	f := packettest.Frame{Link: packet.RawIP, Src: netip.AddrPortFrom(localIP, 7000), Dst: netip.AddrPortFrom(remoteIP, 8000),
		Proto: packet.ProtoTCP, Seq: seq, ID: 100, Flags: packet.TCPAck | packet.TCPPsh | packet.TCPFin | packet.TCPCwr, Payload: p}
	return f.Bytes()
}

// checkSegments decodes frames (Ethernet) with gopacket as segments of
// the super packets pkts, in order, each cut at mss bytes: every frame
// within MaxFrameLen, checksums valid, sequence numbers, IPv4 IDs and
// flags as a NIC's TSO makes them, and the payload byte for byte.
func checkSegments(t *testing.T, frames [][]byte, pkts [][]byte, mss, mtu int) {
	t.Helper()
	k := 0
	for _, pkt := range pkts {
		sp := gopacket.NewPacket(pkt, layers.LayerTypeIPv4, gopacket.Default)
		sip, stcp := sp.NetworkLayer().(*layers.IPv4), sp.TransportLayer().(*layers.TCP)
		var got []byte
		segs := (len(stcp.Payload) + mss - 1) / mss
		for i := range segs {
			if k >= len(frames) {
				t.Fatalf("%d frames on the wire, want more", len(frames))
			}
			fr := frames[k]
			k++
			if len(fr) > netif.MaxFrameLen(mtu, packet.Ethernet) {
				t.Fatalf("segment of %d bytes", len(fr))
			}
			g := gopacket.NewPacket(fr, layers.LayerTypeEthernet, gopacket.Default)
			ip, _ := g.NetworkLayer().(*layers.IPv4)
			tcp, _ := g.TransportLayer().(*layers.TCP)
			if ip == nil || tcp == nil {
				t.Fatalf("segment %d: %v", i, g)
			}
			if err, r := ip.VerifyChecksum(); err != nil || !r.Valid || int(ip.Length) != len(fr)-14 {
				t.Fatalf("segment %d: IPv4 checksum or length wrong", i)
			}
			_ = tcp.SetNetworkLayerForChecksum(ip)
			if err, r := tcp.VerifyChecksum(); err != nil || !r.Valid {
				t.Fatalf("segment %d: TCP checksum invalid", i)
			}
			if ip.Id != sip.Id+uint16(i) || tcp.Seq != stcp.Seq+uint32(i*mss) {
				t.Errorf("segment %d: ID %d seq %d", i, ip.Id, tcp.Seq)
			}
			last := i == segs-1
			if tcp.FIN != last || tcp.PSH != last || tcp.CWR != (i == 0) || !tcp.ACK {
				t.Errorf("segment %d: FIN %v PSH %v CWR %v", i, tcp.FIN, tcp.PSH, tcp.CWR)
			}
			got = append(got, tcp.Payload...)
		}
		if !bytes.Equal(got, stcp.Payload) {
			t.Fatal("segments do not add up to the super packet's payload")
		}
	}
	if k != len(frames) {
		t.Fatalf("%d frames on the wire, want %d", len(frames), k)
	}
}

// TestTxSuperSegmented: TCP super packets pass the checks and, on a link
// that takes no super packets (or through the AQM), the switch cuts them
// into valid MTU segments; each counts once in TxPackets and the flow's
// counters.
func TestTxSuperSegmented(t *testing.T) {
	for _, tc := range []struct {
		name string
		so   flowswitch.Options
	}{
		{"link", flowswitch.Options{}},
		{"aqm", flowswitch.Options{Regulation: &flowswitch.RegulationOptions{NoMitigation: true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newSuperTxRig(t, memif.Options{}, tc.so)
			f := r.txFlows0(t)
			const mss = 1448
			var pkts [][]byte
			seq := uint32(1 << 31)
			for _, n := range []int{10000, 16000, 1470} {
				pkts = append(pkts, superTCP(seq, n))
				seq += uint32(n)
			}
			r.sendSeg(t, 0, f.ID(), mss, pkts...)
			if n := r.tx(t, 0); n != 3 {
				t.Fatalf("took %d, want 3", n)
			}
			if tc.so.Regulation != nil {
				if _, err := r.sw.Service(); err != nil {
					t.Fatal(err)
				}
			}
			checkSegments(t, r.wire(t), pkts, mss, 1500)
			st := r.sw.Stats()
			bytes := uint64(len(pkts[0]) + len(pkts[1]) + len(pkts[2]))
			if st.TxPackets != 3 || st.TxBytes != bytes || st.TxSegmented != 3 || st.TxSegments != 7+12+2 || st.TxSuper != 0 {
				t.Errorf("stats: %d packets %d bytes, segmented %d into %d, whole %d", st.TxPackets, st.TxBytes, st.TxSegmented, st.TxSegments, st.TxSuper)
			}
			if c := f.Counters(); c.PacketsOut != 3 || c.BytesOut != bytes {
				t.Errorf("flow counters %+v", c)
			}
			if st.TxDrops != (flowswitch.TxDrops{}) {
				t.Errorf("drops %+v", st.TxDrops)
			}
		})
	}
}

// TestTxSuperWhole: to a link that carries super packets (memif with
// MaxSuperPacketLen), they go whole, byte for byte what the app sent
// behind the switch's L2 header.
func TestTxSuperWhole(t *testing.T) {
	max := pool.MaxBufferSize + netif.EthernetHeaderLen
	r := newSuperTxRig(t, memif.Options{MaxSuperPacketLen: max}, flowswitch.Options{})
	f := r.txFlows0(t)
	pkts := [][]byte{superTCP(1, 12000), superTCP(12001, pool.MaxBufferSize-40-14+14)} // the second fills a buffer
	r.sendSeg(t, 0, f.ID(), 1460, pkts...)
	if n := r.tx(t, 0); n != 2 {
		t.Fatalf("took %d, want 2", n)
	}
	bufs, sizes := [][]byte{make([]byte, max), make([]byte, max), make([]byte, max)}, make([]int, 3)
	n, err := r.peer.Read(bufs, sizes)
	if err != nil || n != 2 {
		t.Fatalf("read %d frames, %v; want 2", n, err)
	}
	for i := range n {
		if !bytes.Equal(bufs[i][14:sizes[i]], pkts[i]) {
			t.Errorf("frame %d is not the super packet sent", i)
		}
	}
	if st := r.sw.Stats(); st.TxSuper != 2 || st.TxSegmented != 0 || st.TxPackets != 2 {
		t.Errorf("stats: whole %d, segmented %d, packets %d", st.TxSuper, st.TxSegmented, st.TxPackets)
	}
}

// TestTxSuperRejects: every way a super packet can be wrong is refused,
// by its own counter, on the full path and after the fast path's cache is
// warm; nothing refused reaches the wire.
func TestTxSuperRejects(t *testing.T) {
	udp := txPkt{proto: packet.ProtoUDP, src: localIP, dst: remoteIP, sport: 7000, dport: 8000, size: 3000}
	lie := superTCP(1, 3000)
	lie[3]++ // claims a byte more than sent
	for _, tc := range []struct {
		name string
		pkt  []byte
		seg  uint16
		want func(d *flowswitch.TxDrops) uint64
	}{
		{"no-seg", superTCP(1, 3000), 0, func(d *flowswitch.TxDrops) uint64 { return d.MTU }},
		{"seg-small", superTCP(1, 3000), channel.MinSegSize - 1, func(d *flowswitch.TxDrops) uint64 { return d.SegSize }},
		{"seg-over-mtu", superTCP(1, 3000), 1461, func(d *flowswitch.TxDrops) uint64 { return d.SegSize }},
		{"length", lie, 1000, func(d *flowswitch.TxDrops) uint64 { return d.Length }},
	} {
		for _, warm := range []bool{false, true} {
			r := newSuperTxRig(t, memif.Options{}, flowswitch.Options{})
			e := r.txFlows0(t)
			sent := 0
			if warm { // a good packet first: the port's fast path caches tcp0
				r.sendSeg(t, 0, e.ID(), 1460, superTCP(0, 1))
				sent = 1
			}
			r.sendSeg(t, 0, e.ID(), tc.seg, tc.pkt)
			r.tx(t, 0)
			st := r.sw.Stats()
			if got := tc.want(&st.TxDrops); got != 1 || st.TxPackets != uint64(sent) {
				t.Errorf("%s (warm %v): counter %d, packets %d; drops %+v", tc.name, warm, got, st.TxPackets, st.TxDrops)
			}
			if w := r.wire(t); len(w) != sent {
				t.Errorf("%s: %d frames on the wire, want %d", tc.name, len(w), sent)
			}
		}
	}
	// UDP above the MTU with a segmentation size: SegProto.
	r := newSuperTxRig(t, memif.Options{}, flowswitch.Options{})
	e, err := r.sw.Register(r.ports[0], packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(localIP, 7000), netip.AddrPortFrom(remoteIP, 8000)), flow.Connected)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // full path, then the fast path's cache (a UDP template)
		r.sendSeg(t, 0, e.ID(), 0, udp0Like(t, 1000))
		r.sendSeg(t, 0, e.ID(), 1000, udp.build(t))
	}
	r.tx(t, 0)
	if st := r.sw.Stats(); st.TxDrops.SegProto != 2 || st.TxPackets != 2 {
		t.Errorf("udp: SegProto %d, packets %d", st.TxDrops.SegProto, st.TxPackets)
	}
}

// udp0Like is a UDP packet of size bytes on 198.18.0.1:7000 → 198.19.0.2:8000.
func udp0Like(t testing.TB, size int) []byte {
	return txPkt{proto: packet.ProtoUDP, src: localIP, dst: remoteIP, sport: 7000, dport: 8000, size: size}.build(t)
}

// FuzzTxSuper sends arbitrary packets (headers of a valid super packet
// overwritten by the fuzzer's bytes) with arbitrary segmentation sizes:
// the switch never panics, counts every packet once (passed or dropped),
// and puts only frames within the MTU on a link without super packets.
func FuzzTxSuper(f *testing.F) {
	f.Add([]byte{}, uint16(1448), 3000)
	f.Add([]byte{0x45, 0, 0x0b, 0xb8}, uint16(88), 3000)
	f.Add([]byte{0x46}, uint16(0), 100)
	f.Fuzz(func(t *testing.T, hdr []byte, seg uint16, size int) {
		size = min(max(size, 40), pool.MaxBufferSize)
		r := newSuperTxRig(t, memif.Options{}, flowswitch.Options{})
		e := r.txFlows0(t)
		pkt := superTCP(5, size-40)
		copy(pkt, hdr)
		r.sendSeg(t, 0, e.ID(), seg, pkt, superTCP(9, 3000))
		r.tx(t, 0)
		st := r.sw.Stats()
		d := st.TxDrops
		drops := d.Length + d.MTU + d.Parse + d.IPv4Options + d.SegProto + d.SegSize + d.SrcAddr + d.SrcPort + d.Proto +
			d.NoFlow + d.NotOwner + d.FlowID + d.TornDown + d.ListenerData + d.SYNRate
		if st.TxPackets+drops != 2 {
			t.Fatalf("%d passed + %d dropped of 2", st.TxPackets, drops)
		}
		for _, fr := range r.wire(t) {
			if len(fr) > netif.MaxFrameLen(1500, packet.Ethernet) {
				t.Fatalf("a %d-byte frame on the wire", len(fr))
			}
		}
	})
}

// txFlows0 registers flow tcp0 (TCP 198.18.0.1:7000 ↔ 198.19.0.2:8000)
// on port 0.
func (r *rig) txFlows0(t testing.TB) *flow.Entry {
	t.Helper()
	e, err := r.sw.Register(r.ports[0], packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(localIP, 7000), netip.AddrPortFrom(remoteIP, 8000)), flow.Connected)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// An advisory port's grant is room under the AQM's high-water mark, in
// queue entries: its super packets count as the segments they become, so
// a ring full of them fills the queue to the mark, not past its limit.
func TestTxSuperAdvisoryBackpressure(t *testing.T) {
	var clock int64
	r := newSuperTxRig(t, memif.Options{}, flowswitch.Options{Regulation: &flowswitch.RegulationOptions{NoMitigation: true},
		LinkRate: 10_000_000, Now: func() int64 { return clock }})
	ch, app := newChannel(t, channel.Options{Name: "adv", Pool: pool.Options{BufferSize: pool.MaxBufferSize, SegmentSize: 16 * pool.MaxBufferSize}})
	id, err := r.sw.AddPortWith(ch, flowswitch.AddPortOptions{Advisories: true})
	if err != nil {
		t.Fatal(err)
	}
	r.chans, r.apps, r.ports = append(r.chans, ch), append(r.apps, app), append(r.ports, id)
	e, err := r.sw.Register(id, packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(localIP, 7000), netip.AddrPortFrom(remoteIP, 8000)), flow.Connected)
	if err != nil {
		t.Fatal(err)
	}
	const mss, segs, pkts = 1448, 10, 250 // 2500 segments: more than the queue's 2048
	var batch [][]byte
	for i := range pkts {
		batch = append(batch, superTCP(uint32(i*mss*segs), mss*segs))
	}
	r.sendSeg(t, 1, e.ID(), mss, batch...)
	for range 4 {
		if _, err := r.sw.TxSync(); err != nil {
			t.Fatal(err)
		}
		clock += int64(time.Millisecond)
	}
	snap := r.sw.Snapshot()
	reg := snap.Regulation
	highWater := regulate.DefaultLimit * 3 / 4
	if reg == nil || reg.Queued < highWater-segs || reg.Queued > highWater+segs || reg.OverflowDrops != 0 {
		t.Fatalf("queue holds %d (want the high-water mark %d ± one super packet's %d segments), overflow drops %d",
			reg.Queued, highWater, segs, reg.OverflowDrops)
	}
	if ps := snap.Ports[1].Regulation; ps == nil || ps.Backpress == 0 {
		t.Errorf("advisory port never held back: %+v", ps)
	}
}

// While the next hop is unresolved, MTU packets wait in the resolver and a
// super packet is dropped, counted (the resolver sends what it holds as
// it is, and only MTU frames go out that way); nothing reaches the wire.
func TestTxSuperUnresolvedNeighbour(t *testing.T) {
	a, b, err := memif.NewPair(memif.Options{QueueLen: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	sw, err := flowswitch.New(flowswitch.Options{Link: a, LocalAddrs: []netip.Addr{localIP}, SrcMAC: txSrcMAC})
	if err != nil {
		t.Fatal(err)
	}
	ch, app := newChannel(t, channel.Options{Name: "l2super", Pool: pool.Options{BufferSize: pool.MaxBufferSize, SegmentSize: 16 * pool.MaxBufferSize}})
	r := &rig{sw: sw, peer: b, chans: []*channel.Channel{ch}, apps: []*channel.App{app}, ports: []flow.PortID{sw.AddPort(ch)}}
	e := r.txFlows0(t)
	const mss = 1448
	r.sendSeg(t, 0, e.ID(), mss, superTCP(0, 10*mss), superTCP(10*mss, mss))
	if n := r.tx(t, 0); n != 2 {
		t.Fatalf("took %d, want 2", n)
	}
	if st := sw.Stats().L2; st.Held != 1 || st.HoldDrops != 1 {
		t.Fatalf("held %d, hold drops %d; want the MTU packet held and the super packet dropped", st.Held, st.HoldDrops)
	}
	for _, f := range r.wire(t) {
		var p packet.Parsed
		if packet.Parse(f, packet.Ethernet, &p) == nil && p.Proto == packet.ProtoTCP {
			t.Fatalf("a TCP frame reached the wire before its neighbour was resolved: %d bytes", len(f))
		}
	}
}
