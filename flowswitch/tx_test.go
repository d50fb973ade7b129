package flowswitch_test

import (
	"bytes"
	"encoding/binary"
	"net"
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
)

// MACs the switch writes on transmitted frames (locally administered).
var (
	txSrcMAC = [6]byte{0x02, 0, 0, 0, 0, 0x01}
	txDstMAC = [6]byte{0x02, 0, 0, 0, 0, 0xfe}
)

// hookLink is a link whose Write first calls hook with the frames it is given.
type hookLink struct {
	netif.Link
	hook func(frames [][]byte)
}

func (l *hookLink) Write(frames [][]byte) (int, error) {
	if l.hook != nil {
		l.hook(frames)
	}
	return l.Link.Write(frames)
}

// newTxRig is newRig for the transmit path: two user ports, the switch's
// MACs set, and the switch's link wrapped in a hookLink.
func newTxRig(t testing.TB) (*rig, *hookLink) {
	t.Helper()
	a, b, err := memif.NewPair(memif.Options{QueueLen: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	hl := &hookLink{Link: a}
	sw, err := flowswitch.New(flowswitch.Options{
		Link: hl, LocalAddrs: []netip.Addr{localIP}, SrcMAC: txSrcMAC, DstMAC: txDstMAC,
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{sw: sw, peer: b}
	for range 2 {
		ch, app := newChannel(t, channel.Options{Name: "tx"})
		r.chans = append(r.chans, ch)
		r.apps = append(r.apps, app)
		r.ports = append(r.ports, sw.AddPort(ch))
	}
	return r, hl
}

// txPkt describes one IPv4 packet an app sends: src → dst.
type txPkt struct {
	proto      uint8 // packet.ProtoUDP or ProtoTCP
	src, dst   netip.Addr
	sport      uint16
	dport      uint16
	flags      packet.TCPFlags // TCP flags; 0 means ACK
	size       int             // total IP length, at least the headers
	ipOptions  bool            // add 4 bytes of IPv4 NOP options (IHL 6)
	trailing   int             // garbage bytes after the IP length
	lieLength  int             // added to the IP total length field after building
	versionBad bool            // IP version 5
}

func (p txPkt) build(t testing.TB) []byte {
	t.Helper()
	f := packettest.Frame{Link: packet.RawIP, Src: netip.AddrPortFrom(p.src, p.sport),
		Dst: netip.AddrPortFrom(p.dst, p.dport), Proto: p.proto, Flags: p.flags, Seq: 1000}
	if p.ipOptions {
		f.IPOptions = packettest.IPv4NOPs(4)
	}
	f.Payload = make([]byte, max(p.size-f.HeaderLen(), 0))
	for i := range f.Payload {
		f.Payload[i] = byte(i)
	}
	b := f.Bytes()
	if p.lieLength != 0 {
		binary.BigEndian.PutUint16(b[2:4], uint16(len(b)+p.lieLength))
	}
	if p.versionBad {
		b[0] = 5<<4 | b[0]&0x0f
	}
	for i := range p.trailing {
		b = append(b, 0xee^byte(i))
	}
	return b
}

// send has app i send pkts, each with flow ID id in its metadata, and
// returns the buffers it sent (the app's view, still mapped).
//
// The app end has no metadata accessor yet, so the test writes the
// metadata through the nexus's view of the same shared memory.
func (r *rig) send(t testing.TB, i int, id [16]byte, pkts ...[]byte) []channel.Buf {
	t.Helper()
	return r.sendSeg(t, i, id, 0, pkts...)
}

// sendSeg is send with the segmentation size seg in every packet's
// metadata (channel.TxMetaSegSizeOff).
func (r *rig) sendSeg(t testing.TB, i int, id [16]byte, seg uint16, pkts ...[]byte) []channel.Buf {
	t.Helper()
	bufs := make([]channel.Buf, len(pkts))
	r.sendInto(t, i, id, seg, bufs, pkts)
	return bufs
}

// sendInto is sendSeg with the caller's bufs (len(pkts) of them), for
// tests that count allocations.
func (r *rig) sendInto(t testing.TB, i int, id [16]byte, seg uint16, bufs []channel.Buf, pkts [][]byte) {
	t.Helper()
	for got := 0; got < len(pkts); {
		if err := r.chans[i].Sync(); err != nil { // refill the alloc ring
			t.Fatal(err)
		}
		n, err := r.apps[i].Alloc(bufs[got:])
		if err != nil || n == 0 {
			t.Fatalf("app alloc: %d, %v", n, err)
		}
		got += n
	}
	for j, b := range bufs {
		bufs[j].Data = b.Data[:copy(b.Data, pkts[j])]
		meta := r.chans[i].Pool().UserMeta(b.Index)
		clear(meta)
		copy(meta[channel.TxMetaFlowIDOff:], id[:])
		binary.LittleEndian.PutUint16(meta[channel.TxMetaSegSizeOff:], seg)
		bufs[j].Flags = r.txFlags
	}
	if n, err := r.apps[i].Send(bufs); n != len(bufs) || err != nil {
		t.Fatalf("app send: %d of %d, %v", n, len(bufs), err)
	}
}

// tx runs TxOnce on port i until the TX ring is empty.
func (r *rig) tx(t testing.TB, i int) int {
	t.Helper()
	total := 0
	for {
		n, err := r.sw.TxOnce(r.ports[i])
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return total
		}
		total += n
	}
}

// wire reads every frame waiting at the peer end.
func (r *rig) wire(t testing.TB) [][]byte {
	t.Helper()
	var frames [][]byte
	bufs := make([][]byte, 64)
	for i := range bufs {
		bufs[i] = make([]byte, netif.MaxFrameLen(r.peer.MTU(), r.peer.LinkType()))
	}
	sizes := make([]int, len(bufs))
	for {
		n, err := r.peer.Read(bufs, sizes)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return frames
		}
		for i := range n {
			frames = append(frames, append([]byte(nil), bufs[i][:sizes[i]]...))
		}
	}
}

// txFlows registers the flows the TX tests use:
//
//	udp0   UDP 198.18.0.1:5000 ↔ 198.19.0.2:6000, port 0
//	udp1   UDP 198.18.0.1:5001 ↔ 198.19.0.2:6000, port 1
//	listen TCP 198.18.0.1:80 listener (Listener3), port 0
//	tcp0   TCP 198.18.0.1:7000 ↔ 198.19.0.2:8000, port 0
type txFlows struct{ udp0, udp1, listen, tcp0 *flow.Entry }

func (r *rig) txFlows(t testing.TB) txFlows {
	t.Helper()
	reg := func(i int, proto uint8, lport uint16, remote netip.AddrPort, kind flow.Kind) *flow.Entry {
		e, err := r.sw.Register(r.ports[i], packet.MakeKey(proto, netip.AddrPortFrom(localIP, lport), remote), kind)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	return txFlows{
		udp0:   reg(0, packet.ProtoUDP, 5000, netip.AddrPortFrom(remoteIP, 6000), flow.Connected),
		udp1:   reg(1, packet.ProtoUDP, 5001, netip.AddrPortFrom(remoteIP, 6000), flow.Connected),
		listen: reg(0, packet.ProtoTCP, 80, netip.AddrPort{}, flow.Listener3),
		tcp0:   reg(0, packet.ProtoTCP, 7000, netip.AddrPortFrom(remoteIP, 8000), flow.Connected),
	}
}

// lisPkt is a TCP packet from src:sport (the listener's, 80, unless
// spoofed) to a remote's port 40000 with flags, size bytes long.
func lisPkt(src netip.Addr, sport uint16, flags packet.TCPFlags, size int) txPkt {
	return txPkt{proto: packet.ProtoTCP, src: src, dst: remoteIP, sport: sport, dport: 40000, flags: flags, size: size}
}

// udp0Pkt is a valid packet of flow udp0, size bytes long.
func udp0Pkt(size int) txPkt {
	return txPkt{proto: packet.ProtoUDP, src: localIP, dst: remoteIP, sport: 5000, dport: 6000, size: size}
}

// A valid packet reaches the wire with the switch's L2 header, trimmed to its
// IP length, byte for byte what the app sent otherwise.
func TestTxValid(t *testing.T) {
	r, _ := newTxRig(t)
	f := r.txFlows(t)
	p := udp0Pkt(200)
	p.trailing = 7
	pkt := p.build(t)
	rst := txPkt{proto: packet.ProtoTCP, src: localIP, dst: remoteIP, sport: 80, dport: 40000,
		flags: packet.TCPRst | packet.TCPAck, size: 40}.build(t)
	r.send(t, 0, f.udp0.ID(), pkt)
	r.send(t, 0, f.listen.ID(), rst) // a listener may send a RST
	if n := r.tx(t, 0); n != 2 {
		t.Fatalf("took %d, want 2", n)
	}
	frames := r.wire(t)
	if len(frames) != 2 {
		t.Fatalf("%d frames on the wire, want 2", len(frames))
	}
	want := [][]byte{pkt[:200], rst}
	for i, fr := range frames {
		g := gopacket.NewPacket(fr, layers.LayerTypeEthernet, gopacket.Default)
		eth, _ := g.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		ip, _ := g.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if eth == nil || ip == nil {
			t.Fatalf("frame %d: not Ethernet/IPv4: %v", i, g)
		}
		if !bytes.Equal(eth.SrcMAC, txSrcMAC[:]) || !bytes.Equal(eth.DstMAC, txDstMAC[:]) || eth.EthernetType != layers.EthernetTypeIPv4 {
			t.Errorf("frame %d: L2 %v → %v type %v", i, eth.SrcMAC, eth.DstMAC, eth.EthernetType)
		}
		if !ip.SrcIP.Equal(net.IP(localIP.AsSlice())) || !ip.DstIP.Equal(net.IP(remoteIP.AsSlice())) {
			t.Errorf("frame %d: IP %v → %v", i, ip.SrcIP, ip.DstIP)
		}
		if !bytes.Equal(fr[14:], want[i]) {
			t.Errorf("frame %d: L3 bytes differ from the packet sent (trimmed)", i)
		}
	}
	if u, _ := gopacket.NewPacket(frames[0], layers.LayerTypeEthernet, gopacket.Default).Layer(layers.LayerTypeUDP).(*layers.UDP); u == nil || u.SrcPort != 5000 || u.DstPort != 6000 {
		t.Errorf("frame 0 UDP: %v", u)
	}
	st := r.sw.Stats()
	if st.TxPackets != 2 || st.TxBytes != uint64(200+len(rst)) || st.TxDrops != (flowswitch.TxDrops{}) {
		t.Errorf("stats: %d packets, %d bytes, drops %+v", st.TxPackets, st.TxBytes, st.TxDrops)
	}
	if c := f.udp0.Counters(); c.PacketsOut != 1 || c.BytesOut != 200 {
		t.Errorf("udp0 counters %+v", c)
	}
	if _, out := f.listen.LastFlags(); out != packet.TCPRst|packet.TCPAck {
		t.Errorf("listener out flags %v", out)
	}
}

// Each spoof is dropped by its own check, counted exactly, and none of it
// reaches the wire.
func TestTxSpoofs(t *testing.T) {
	spoofIP := netip.MustParseAddr("198.18.0.9") // not the interface's address
	tests := []struct {
		name    string
		port    int // sending port
		n       int // copies sent
		pkt     func(txFlows) (txPkt, [16]byte)
		counter func(*flowswitch.TxDrops) *uint64
	}{{
		name: "spoofed source IP", port: 0, n: 5,
		pkt: func(f txFlows) (txPkt, [16]byte) {
			p := udp0Pkt(100)
			p.src = spoofIP
			return p, f.udp0.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.SrcAddr },
	}, {
		name: "spoofed source port", port: 0, n: 5,
		pkt: func(f txFlows) (txPkt, [16]byte) {
			p := udp0Pkt(100)
			p.sport = 5999
			return p, f.udp0.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.SrcPort },
	}, {
		name: "other protocol", port: 0, n: 5, // TCP on udp0's ports
		pkt: func(f txFlows) (txPkt, [16]byte) {
			p := udp0Pkt(100)
			p.proto, p.flags = packet.ProtoTCP, packet.TCPAck
			return p, f.udp0.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.Proto },
	}, {
		name: "another channel's flow", port: 0, n: 5, // udp1 belongs to port 1
		pkt: func(f txFlows) (txPkt, [16]byte) {
			p := udp0Pkt(100)
			p.sport = 5001
			return p, f.udp1.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.NotOwner },
	}, {
		name: "wrong flow ID", port: 0, n: 5,
		pkt: func(f txFlows) (txPkt, [16]byte) {
			return udp0Pkt(100), f.tcp0.ID() // a flow of the same port, but not this one
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.FlowID },
	}, {
		name: "zero flow ID", port: 0, n: 3,
		pkt: func(f txFlows) (txPkt, [16]byte) {
			return udp0Pkt(100), [16]byte{}
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.FlowID },
	}, {
		name: "IPv4 options", port: 0, n: 5,
		pkt: func(f txFlows) (txPkt, [16]byte) {
			p := udp0Pkt(100)
			p.ipOptions = true
			return p, f.udp0.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.IPv4Options },
	}, {
		name: "length lie", port: 0, n: 5, // IP total length 20 bytes more than sent
		pkt: func(f txFlows) (txPkt, [16]byte) {
			p := udp0Pkt(100)
			p.lieLength = 20
			return p, f.udp0.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.Length },
	}, {
		name: "beyond MTU", port: 0, n: 5, // 1501 bytes, consistent lengths
		pkt: func(f txFlows) (txPkt, [16]byte) {
			return udp0Pkt(1501), f.udp0.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.MTU },
	}, {
		name: "not IP", port: 0, n: 5,
		pkt: func(f txFlows) (txPkt, [16]byte) {
			p := udp0Pkt(100)
			p.versionBad = true
			return p, f.udp0.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.Parse },
	}, {
		name: "listener data", port: 0, n: 5, // ACK+PSH with payload from the listener's port
		pkt: func(f txFlows) (txPkt, [16]byte) {
			return txPkt{proto: packet.ProtoTCP, src: localIP, dst: remoteIP, sport: 80, dport: 40000,
				flags: packet.TCPAck | packet.TCPPsh, size: 140}, f.listen.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.ListenerData },
	}, {
		name: "listener SYN", port: 0, n: 5,
		pkt: func(f txFlows) (txPkt, [16]byte) {
			return txPkt{proto: packet.ProtoTCP, src: localIP, dst: remoteIP, sport: 80, dport: 40000,
				flags: packet.TCPSyn, size: 40}, f.listen.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.ListenerData },
	}, {
		name: "listener SYN-ACK with data", port: 0, n: 5, // a handshake may not carry data
		pkt: func(f txFlows) (txPkt, [16]byte) {
			return lisPkt(localIP, 80, packet.TCPSyn|packet.TCPAck, 41), f.listen.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.ListenerData },
	}, {
		name: "listener SYN-ACK-FIN", port: 0, n: 5,
		pkt: func(f txFlows) (txPkt, [16]byte) {
			return lisPkt(localIP, 80, packet.TCPSyn|packet.TCPAck|packet.TCPFin, 40), f.listen.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.ListenerData },
	}, {
		name: "listener pure ACK", port: 0, n: 5, // an accepted connection's first ACK before its flow
		pkt: func(f txFlows) (txPkt, [16]byte) {
			return lisPkt(localIP, 80, packet.TCPAck, 40), f.listen.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.ListenerData },
	}, {
		name: "listener FIN", port: 0, n: 5,
		pkt: func(f txFlows) (txPkt, [16]byte) {
			return lisPkt(localIP, 80, packet.TCPFin|packet.TCPAck, 40), f.listen.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.ListenerData },
	}, {
		name: "SYN-ACK from another port's listener", port: 1, n: 5, // the listener is port 0's
		pkt: func(f txFlows) (txPkt, [16]byte) {
			return lisPkt(localIP, 80, packet.TCPSyn|packet.TCPAck, 40), f.listen.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.NotOwner },
	}, {
		name: "SYN-ACK with the listener's ID from another source port", port: 0, n: 5,
		pkt: func(f txFlows) (txPkt, [16]byte) {
			return lisPkt(localIP, 81, packet.TCPSyn|packet.TCPAck, 40), f.listen.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.SrcPort },
	}, {
		name: "SYN-ACK from a spoofed address", port: 0, n: 5,
		pkt: func(f txFlows) (txPkt, [16]byte) {
			return lisPkt(spoofIP, 80, packet.TCPSyn|packet.TCPAck, 40), f.listen.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.SrcAddr },
	}, {
		name: "SYN-ACK with a wrong flow ID", port: 0, n: 5,
		pkt: func(f txFlows) (txPkt, [16]byte) {
			return lisPkt(localIP, 80, packet.TCPSyn|packet.TCPAck, 40), f.tcp0.ID()
		},
		counter: func(d *flowswitch.TxDrops) *uint64 { return &d.FlowID },
	}}
	// Each spoof runs cold (first on its port) and warm: right after a
	// valid packet of the flow it imitates, in the same batch, so that the
	// port's fast-path cache holds that flow and the spoof must be refused
	// by the fast path too (or sent down the full path).
	for _, tt := range tests {
		for _, warm := range []bool{false, true} {
			if warm && tt.port != 0 {
				continue // warming sends a valid packet of port 0's flows
			}
			name := tt.name + "/cold"
			if warm {
				name = tt.name + "/warm"
			}
			t.Run(name, func(t *testing.T) {
				r, _ := newTxRig(t)
				f := r.txFlows(t)
				p, id := tt.pkt(f)
				pkt := p.build(t)
				wantWire := 0
				if warm {
					good, gid := udp0Pkt(100), f.udp0.ID()
					if p.sport == 80 { // a listener's: warm with a valid RST
						good = txPkt{proto: packet.ProtoTCP, src: localIP, dst: remoteIP, sport: 80, dport: 40000,
							flags: packet.TCPRst | packet.TCPAck, size: 40}
						gid = f.listen.ID()
					}
					r.send(t, tt.port, gid, good.build(t))
					wantWire = 1
				}
				pkts := make([][]byte, tt.n)
				for i := range pkts {
					pkts[i] = pkt
				}
				r.send(t, tt.port, id, pkts...)
				if n := r.tx(t, tt.port); n != tt.n+wantWire {
					t.Fatalf("took %d, want %d", n, tt.n+wantWire)
				}
				if fr := r.wire(t); len(fr) != wantWire {
					t.Fatalf("%d frames on the wire, want %d", len(fr), wantWire)
				}
				var want flowswitch.TxDrops
				*tt.counter(&want) = uint64(tt.n)
				if st := r.sw.Stats(); st.TxDrops != want || st.TxPackets != uint64(wantWire) {
					t.Errorf("drops %+v, %d packets; want %+v, %d", st.TxDrops, st.TxPackets, want, wantWire)
				}
			})
		}
	}
}

// Packets an app still sends on a flow torn down through the switch count
// as TornDown: right after the flow's own packets (the fast-path cache held
// it), and also once the same 5-tuple was registered again as a new flow
// with a new ID. A stale ID on another flow's headers is still a FlowID
// drop, and a flow torn down behind the switch's back (on its table)
// counts by what the packet now is.
func TestTxTornDown(t *testing.T) {
	r, _ := newTxRig(t)
	f := r.txFlows(t)
	pkt := udp0Pkt(100).build(t)
	r.send(t, 0, f.udp0.ID(), pkt) // valid: fills the cache
	r.tx(t, 0)
	r.sw.Teardown(f.udp0)
	r.send(t, 0, f.udp0.ID(), pkt, pkt)
	r.tx(t, 0)
	if d := r.sw.Stats().TxDrops; d != (flowswitch.TxDrops{TornDown: 2}) {
		t.Errorf("after teardown: drops %+v", d)
	}
	again, err := r.sw.Register(r.ports[0], f.udp0.Key(), flow.Connected)
	if err != nil {
		t.Fatal(err)
	}
	r.send(t, 0, f.udp0.ID(), pkt) // old ID on the new flow's tuple
	r.send(t, 0, again.ID(), pkt)  // the new flow: fine
	r.send(t, 0, f.tcp0.ID(), pkt) // another live flow's ID
	r.send(t, 0, f.udp0.ID(), txPkt{proto: packet.ProtoUDP, src: localIP, dst: remoteIP, sport: 5000, dport: 6001,
		size: 100}.build(t)) // old ID, another tuple: not this flow's packet
	r.tx(t, 0)
	if d := r.sw.Stats().TxDrops; d != (flowswitch.TxDrops{TornDown: 3, FlowID: 1, NoFlow: 1}) {
		t.Errorf("after re-registering: drops %+v", d)
	}
	if fr := r.wire(t); len(fr) != 2 {
		t.Errorf("%d frames on the wire, want 2 (the valid ones)", len(fr))
	}
	// Behind the switch's back: no record, the port is free again.
	r.sw.Do(func() { r.sw.Table().Teardown(again) })
	r.send(t, 0, again.ID(), pkt)
	r.tx(t, 0)
	if d := r.sw.Stats().TxDrops; d.SrcPort != 1 || d.TornDown != 3 {
		t.Errorf("torn down on the table: drops %+v", d)
	}
}

// 100 SYNs at once on one flow: at most the burst (20) pass, plus what the
// rate refilled while the test ran; the rest are SYNRate drops.
func TestTxSYNFlood(t *testing.T) {
	r, _ := newTxRig(t)
	f := r.txFlows(t)
	syn := txPkt{proto: packet.ProtoTCP, src: localIP, dst: remoteIP, sport: 7000, dport: 8000,
		flags: packet.TCPSyn, size: 40}.build(t)
	const sent = 100
	pkts := make([][]byte, sent)
	for i := range pkts {
		pkts[i] = syn
	}
	start := time.Now()
	r.send(t, 0, f.tcp0.ID(), pkts...)
	if n := r.tx(t, 0); n != sent {
		t.Fatalf("took %d", n)
	}
	refill := int(time.Since(start).Seconds() * flow.SYNRate)
	frames := r.wire(t)
	st := r.sw.Stats()
	passed := len(frames)
	if passed < flow.SYNBurst || passed > flow.SYNBurst+refill {
		t.Errorf("%d SYNs on the wire, want %d (+%d refilled)", passed, flow.SYNBurst, refill)
	}
	if st.TxPackets != uint64(passed) || st.TxDrops != (flowswitch.TxDrops{SYNRate: uint64(sent - passed)}) {
		t.Errorf("stats: %d sent, drops %+v; want %d SYNRate", st.TxPackets, st.TxDrops, sent-passed)
	}
	for i, fr := range frames {
		if !bytes.Equal(fr[14:], syn) {
			t.Fatalf("frame %d is not the SYN sent", i)
		}
	}
}

// The app scribbles over its buffer after TxOnce took it: the wire holds
// the packet as checked, and the buffer is not sent again.
func TestTxScribbleAfterTake(t *testing.T) {
	r, _ := newTxRig(t)
	f := r.txFlows(t)
	pkt := udp0Pkt(100).build(t)
	bufs := r.send(t, 0, f.udp0.ID(), pkt)
	if n := r.tx(t, 0); n != 1 {
		t.Fatalf("took %d", n)
	}
	copy(bufs[0].Data[12:16], netip.MustParseAddr("198.18.0.9").AsSlice()) // spoof the source
	if n := r.tx(t, 0); n != 0 {
		t.Fatalf("took %d more", n)
	}
	frames := r.wire(t)
	if len(frames) != 1 || !bytes.Equal(frames[0][14:], pkt) {
		t.Fatalf("wire: %d frames, first equal to the valid packet: %v", len(frames), len(frames) > 0 && bytes.Equal(frames[0][14:], pkt))
	}
	if st := r.sw.Stats(); st.TxPackets != 1 || st.TxDrops != (flowswitch.TxDrops{}) {
		t.Errorf("stats %d packets, drops %+v", st.TxPackets, st.TxDrops)
	}
}

// The link is given the nexus's checked copy, not the app's memory: the app
// spoofs its buffer (and its flow ID) after the checks, while Link.Write
// runs, and the wire still holds the valid packet.
func TestTxWireIsCheckedCopy(t *testing.T) {
	r, hl := newTxRig(t)
	f := r.txFlows(t)
	pkt := udp0Pkt(300).build(t)
	var bufs []channel.Buf
	calls := 0
	hl.hook = func(frames [][]byte) {
		calls++
		for _, b := range bufs {
			copy(b.Data[12:16], netip.MustParseAddr("198.18.0.9").AsSlice())
			clear(r.chans[0].Pool().UserMeta(b.Index))
		}
		for i, fr := range frames {
			if !bytes.Equal(fr[14:], pkt) {
				t.Errorf("frame %d given to the link changed with the app's buffer", i)
			}
		}
	}
	bufs = r.send(t, 0, f.udp0.ID(), pkt, pkt, pkt)
	r.tx(t, 0)
	frames := r.wire(t)
	if calls != 1 || len(frames) != 3 {
		t.Fatalf("%d Write calls, %d frames; want 1, 3", calls, len(frames))
	}
	for i, fr := range frames {
		if !bytes.Equal(fr[14:], pkt) {
			t.Errorf("frame %d on the wire is not the checked packet", i)
		}
	}
}

// A TxOnce of a 32-packet batch allocates nothing.
func TestTxNoAllocs(t *testing.T) {
	r, _ := newTxRig(t)
	f := r.txFlows(t)
	pkt := udp0Pkt(100).build(t)
	id := f.udp0.ID()
	app, ch := r.apps[0], r.chans[0]
	bufs := make([]channel.Buf, 32)
	rbufs := make([][]byte, 64)
	for i := range rbufs {
		rbufs[i] = make([]byte, netif.MaxFrameLen(r.peer.MTU(), r.peer.LinkType()))
	}
	sizes := make([]int, 64)
	step := func() {
		// The app: refill, alloc, fill, send 32 packets (not measured apart).
		for got := 0; got < len(bufs); {
			ch.Sync()
			n, err := app.Alloc(bufs[got:])
			if n == 0 || err != nil {
				t.Fatalf("alloc %d, %v", n, err)
			}
			got += n
		}
		for i, b := range bufs {
			bufs[i].Data = b.Data[:copy(b.Data, pkt)]
			copy(ch.Pool().UserMeta(b.Index), id[:])
		}
		app.Send(bufs)
		if n, err := r.sw.TxOnce(r.ports[0]); n != 32 || err != nil {
			t.Fatalf("TxOnce = %d, %v", n, err)
		}
		if n, _ := r.peer.Read(rbufs, sizes); n != 32 {
			t.Fatalf("%d frames on the wire", n)
		}
	}
	for range 5 {
		step()
	}
	if a := testing.AllocsPerRun(100, step); a != 0 {
		t.Errorf("%v allocations per batch of 32", a)
	}
	if d := r.sw.Stats().TxDrops; d != (flowswitch.TxDrops{}) {
		t.Errorf("drops %+v", d)
	}
}

// A bad port is an error, not a panic.
func TestTxNoPort(t *testing.T) {
	r, _ := newTxRig(t)
	for _, p := range []flow.PortID{flowswitch.HostPort, 99} {
		if _, err := r.sw.TxOnce(p); err == nil {
			t.Errorf("TxOnce(%d) = nil error", p)
		}
	}
}

// fifoQueue is a plain FIFO TxQueue with a capacity: it copies what it
// accepts and writes it all to its link on Flush.
type fifoQueue struct {
	link   netif.Link
	limit  int
	frames [][]byte
	tokens []uint32
	adv    []uint32
	got    int // frames accepted since the last Flush
}

func (q *fifoQueue) Enqueue(frames [][]byte, tokens, adv []uint32) int {
	n := min(len(frames), q.limit-len(q.frames))
	for i := range n {
		q.frames = append(q.frames, bytes.Clone(frames[i]))
	}
	q.tokens = append(q.tokens, tokens[:n]...)
	q.adv = append(q.adv, adv[:n]...)
	return n
}

func (q *fifoQueue) Flush() error {
	_, err := q.link.Write(q.frames)
	q.frames = q.frames[:0]
	return err
}

// With a TxQueue, the checked frames go to the queue, not the link, each
// with its flow's token and advisory index; the link sees them on Flush. A
// frame the queue refuses is not counted as sent.
func TestTxQueue(t *testing.T) {
	a, b, err := memif.NewPair(memif.Options{QueueLen: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	q := &fifoQueue{link: a, limit: 4}
	sw, err := flowswitch.New(flowswitch.Options{Link: a, TxQueue: q, LocalAddrs: []netip.Addr{localIP},
		SrcMAC: txSrcMAC, DstMAC: txDstMAC})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{sw: sw, peer: b}
	for range 2 {
		ch, err := channel.New(channel.Options{Name: "txq"})
		if err != nil {
			t.Fatal(err)
		}
		app, err := ch.AttachLocal()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { app.Close(); ch.Close() })
		r.chans, r.apps = append(r.chans, ch), append(r.apps, app)
		r.ports = append(r.ports, sw.AddPort(ch))
	}
	f := r.txFlows(t)
	tcp := txPkt{proto: packet.ProtoTCP, src: localIP, dst: remoteIP, sport: 7000, dport: 8000, size: 60}.build(t)
	udp1 := txPkt{proto: packet.ProtoUDP, src: localIP, dst: remoteIP, sport: 5001, dport: 6000, size: 80}.build(t)
	r.send(t, 0, f.udp0.ID(), udp0Pkt(100).build(t))
	r.send(t, 0, f.tcp0.ID(), tcp)
	r.send(t, 0, f.udp0.ID(), udp0Pkt(120).build(t))
	r.send(t, 1, f.udp1.ID(), udp1, udp1) // the queue takes only the first
	if n, err := sw.TxSync(); n != 5 || err != nil {
		t.Fatalf("TxSync = %d, %v", n, err)
	}
	if fr := r.wire(t); len(fr) != 0 {
		t.Fatalf("%d frames on the wire before Flush", len(fr))
	}
	want := []*flow.Entry{f.udp0, f.tcp0, f.udp0, f.udp1}
	if len(q.tokens) != len(want) {
		t.Fatalf("queue got %d frames, want %d", len(q.tokens), len(want))
	}
	for i, e := range want {
		if q.tokens[i] != e.Token() || q.adv[i] != e.AdvisoryIndex() {
			t.Errorf("frame %d: token %d advisory %d, want %d %d (%v)", i, q.tokens[i], q.adv[i], e.Token(), e.AdvisoryIndex(), e.Key())
		}
	}
	queued := append([][]byte(nil), q.frames...)
	if err := q.Flush(); err != nil {
		t.Fatal(err)
	}
	fr := r.wire(t)
	if len(fr) != len(queued) {
		t.Fatalf("%d frames on the wire after Flush, want %d", len(fr), len(queued))
	}
	for i := range fr {
		if !bytes.Equal(fr[i], queued[i]) {
			t.Errorf("frame %d differs from the one queued", i)
		}
	}
	if !bytes.Equal(fr[1][14:], tcp) || !bytes.Equal(fr[3][14:], udp1) {
		t.Error("frames are not the packets sent")
	}
	if st := sw.Stats(); st.TxPackets != 4 || st.TxDrops != (flowswitch.TxDrops{}) {
		t.Errorf("stats: %d packets, drops %+v", st.TxPackets, st.TxDrops)
	}
}
