package gso_test

import (
	"bytes"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/netif/gso"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// super builds a TCP (or UDP) super packet over IPv4 or IPv6
// (documentation addresses) with payload bytes 0, 1, 2, ..., behind l2
// bytes of link header, with valid checksums (gopacket's).
func super(t testing.TB, v6, udp bool, l2, payload int) []byte {
	t.Helper()
	data := make([]byte, payload)
	for i := range data {
		data[i] = byte(i * 7)
	}
	proto := layers.IPProtocolTCP
	if udp {
		proto = layers.IPProtocolUDP
	}
	var ip gopacket.NetworkLayer
	var ipl gopacket.SerializableLayer
	if v6 {
		x := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: net.ParseIP("2001:2::1"), DstIP: net.ParseIP("2001:2::2")}
		ip, ipl = x, x
	} else {
		x := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, Id: 0xfffe, Flags: layers.IPv4DontFragment,
			SrcIP: net.IP{198, 18, 0, 1}, DstIP: net.IP{198, 18, 0, 2}}
		ip, ipl = x, x
	}
	var l4 gopacket.SerializableLayer
	if udp {
		u := &layers.UDP{SrcPort: 5300, DstPort: 4000}
		_ = u.SetNetworkLayerForChecksum(ip)
		l4 = u
	} else {
		tcp := &layers.TCP{SrcPort: 4000, DstPort: 80, Seq: 0xfffff000, Ack: 7, ACK: true, PSH: true, FIN: true, CWR: true, Window: 1000,
			Options: []layers.TCPOption{{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
				{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: make([]byte, 8)}}}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		l4 = tcp
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		ipl, l4, gopacket.Payload(data)); err != nil {
		t.Fatal(err)
	}
	return append(make([]byte, l2), buf.Bytes()...)
}

// decode decodes the IP packet pkt with gopacket and checks its lengths and
// checksums, as an independent decoder.
func decode(t testing.TB, pkt []byte) gopacket.Packet {
	t.Helper()
	return packettest.Decode(t, pkt, packet.RawIP)
}

// TestSegment cuts super packets into MTU-sized segments and checks each
// with gopacket: at most the MTU, checksums, sequence numbers, IPv4 IDs,
// flags, and the payloads put back together byte for byte.
func TestSegment(t *testing.T) {
	const mtu = 1500
	for _, tc := range []struct {
		name        string
		v6, udp     bool
		l2, payload int
		segSize     int // 0: gso.MSS at the MTU
		segs        int
	}{
		{"tcp4-eth", false, false, 14, 16000, 0, 12}, // 1448-byte MSS, last short
		{"tcp6", true, false, 0, 2856, 0, 2},         // exact multiple of 1428
		{"tcp4-small-mss", false, false, 0, 5000, 536, 10},
		{"tcp4-one", false, false, 0, 100, 0, 1},
		{"tcp6-empty", true, false, 0, 0, 0, 1}, // a bare ACK: one segment, its headers
		{"udp4", false, true, 0, 4001, 1000, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt := super(t, tc.v6, tc.udp, tc.l2, tc.payload)
			seg := tc.segSize
			if seg == 0 {
				seg = gso.MSS(pkt, tc.l2, mtu)
			}
			var g gso.Super
			if err := g.Init(pkt, tc.l2, seg); err != nil {
				t.Fatal(err)
			}
			if g.Segments() != tc.segs {
				t.Fatalf("%d segments, want %d", g.Segments(), tc.segs)
			}
			orig := decode(t, pkt[tc.l2:])
			var joined []byte
			buf := make([]byte, tc.l2+mtu)
			for i := range g.Segments() {
				n, err := g.Segment(i, buf)
				if err != nil {
					t.Fatal(err)
				}
				if n != g.SegmentLen(i) || n-tc.l2 > mtu {
					t.Fatalf("segment %d: %d bytes, SegmentLen %d, MTU %d", i, n, g.SegmentLen(i), mtu)
				}
				if !bytes.Equal(buf[:tc.l2], pkt[:tc.l2]) {
					t.Fatalf("segment %d: link header changed", i)
				}
				p := decode(t, buf[tc.l2:n])
				joined = append(joined, p.TransportLayer().LayerPayload()...)
				if ip, ok := p.NetworkLayer().(*layers.IPv4); ok && ip.Id != 0xfffe+uint16(i) {
					t.Errorf("segment %d: IPv4 ID %#x, want %#x", i, ip.Id, 0xfffe+uint16(i))
				}
				if tcp, ok := p.TransportLayer().(*layers.TCP); ok {
					if want := 0xfffff000 + uint32(i*seg); tcp.Seq != want { // wraps past 2^32
						t.Errorf("segment %d: seq %#x, want %#x", i, tcp.Seq, want)
					}
					last := i == g.Segments()-1
					if tcp.FIN != last || tcp.PSH != last || tcp.CWR != (i == 0) || !tcp.ACK {
						t.Errorf("segment %d: FIN %v PSH %v CWR %v ACK %v", i, tcp.FIN, tcp.PSH, tcp.CWR, tcp.ACK)
					}
				}
			}
			if !bytes.Equal(joined, orig.TransportLayer().LayerPayload()) {
				t.Fatal("segment payloads do not add up to the super packet's")
			}
		})
	}
}

// TestInitRejects: what is not a TCP/UDP super packet, or a segment size
// out of range, is refused.
func TestInitRejects(t *testing.T) {
	pkt := super(t, false, false, 0, 3000)
	var g gso.Super
	for _, size := range []int{0, -1, 1 << 16} {
		if g.Init(pkt, 0, size) == nil {
			t.Errorf("segment size %d accepted", size)
		}
	}
	if g.Init(pkt[:30], 0, 1000) == nil {
		t.Error("truncated packet accepted")
	}
	icmp := append([]byte(nil), pkt...)
	icmp[9] = 1
	if g.Init(icmp, 0, 1000) == nil {
		t.Error("ICMP accepted")
	}
}

// FuzzSegment cuts arbitrary packets with arbitrary segment sizes: it must
// never panic, and every segment must be what SegmentLen announced, no
// longer than the packet.
func FuzzSegment(f *testing.F) {
	f.Add(super(f, false, false, 0, 3000), uint16(1000))
	f.Add(super(f, true, false, 0, 3000), uint16(1))
	f.Add(super(f, false, true, 0, 100), uint16(7))
	buf := make([]byte, 1<<16)
	f.Fuzz(func(t *testing.T, pkt []byte, size uint16) {
		var g gso.Super
		if g.Init(pkt, 0, int(size)) != nil {
			return
		}
		if g.Segments() > len(pkt) || g.HeaderLen() > len(pkt) {
			t.Fatalf("%d segments, %d-byte headers from %d bytes", g.Segments(), g.HeaderLen(), len(pkt))
		}
		for i := range min(g.Segments(), 64) {
			n, err := g.Segment(i, buf)
			if err != nil || n != g.SegmentLen(i) || n > len(pkt) {
				t.Fatalf("segment %d: %d bytes, %v; SegmentLen %d", i, n, err, g.SegmentLen(i))
			}
		}
	})
}
