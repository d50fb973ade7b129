package vnet

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// TestHdrBytes pins the wire layout of struct virtio_net_hdr (host order,
// little endian here).
func TestHdrBytes(t *testing.T) {
	h := Hdr{Flags: FlagNeedsCsum, GSOType: GSOTCPv4, HdrLen: 0x0102, GSOSize: 0x0304, CsumStart: 0x0506, CsumOffset: 0x0708}
	var b [HdrLen]byte
	h.Encode(b[:])
	want := []byte{
		1,          // flags: NEEDS_CSUM
		1,          // gso_type: TCPV4
		0x02, 0x01, // hdr_len
		0x04, 0x03, // gso_size
		0x06, 0x05, // csum_start
		0x08, 0x07, // csum_offset
	}
	if !bytes.Equal(b[:], want) {
		t.Fatalf("encoded % x, want % x", b, want)
	}
	var g Hdr
	if err := g.Decode(b[:]); err != nil || g != h {
		t.Fatalf("decoded %+v, %v; want %+v", g, err, h)
	}
	if err := g.Decode(b[:HdrLen-1]); err == nil {
		t.Fatal("decoded a short header")
	}
}

// superTCP builds a TCP super packet over IPv4 or IPv6 (documentation
// addresses) with payload bytes 0, 1, 2, ... and a valid checksum.
func superTCP(t testing.TB, v6 bool, payload int, flags func(*layers.TCP)) []byte {
	t.Helper()
	tcp := &layers.TCP{SrcPort: 4000, DstPort: 80, Seq: 0xfffff000, Ack: 7, ACK: true, Window: 1000,
		Options: []layers.TCPOption{{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
			{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: make([]byte, 8)}}}
	if flags != nil {
		flags(tcp)
	}
	return serialize(t, v6, tcp, payload)
}

func serialize(t testing.TB, v6 bool, l4 gopacket.SerializableLayer, payload int) []byte {
	t.Helper()
	data := make([]byte, payload)
	for i := range data {
		data[i] = byte(i)
	}
	var ip gopacket.NetworkLayer
	var ipl gopacket.SerializableLayer
	proto := layers.IPProtocolTCP
	if _, ok := l4.(*layers.UDP); ok {
		proto = layers.IPProtocolUDP
	}
	if v6 {
		x := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto,
			SrcIP: net.ParseIP("2001:2::1"), DstIP: net.ParseIP("2001:2::2")}
		ip, ipl = x, x
	} else {
		x := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, Id: 0xfffe, Flags: layers.IPv4DontFragment,
			SrcIP: net.IP{198, 18, 0, 1}, DstIP: net.IP{198, 18, 0, 2}}
		ip, ipl = x, x
	}
	switch x := l4.(type) {
	case *layers.TCP:
		_ = x.SetNetworkLayerForChecksum(ip)
	case *layers.UDP:
		_ = x.SetNetworkLayerForChecksum(ip)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		ipl, l4, gopacket.Payload(data)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// verify decodes pkt with gopacket and checks its IP and L4 checksums; it
// returns the decoded packet.
func verify(t testing.TB, pkt []byte) gopacket.Packet {
	t.Helper()
	return packettest.Decode(t, pkt, packet.RawIP)
}

// TestSegment splits TCP and UDP super packets and checks every segment
// with gopacket: checksums, lengths, sequence numbers, flags, IPv4 IDs, and
// that the payloads put back together equal the original.
func TestSegment(t *testing.T) {
	for _, tc := range []struct {
		name    string
		v6, udp bool
		payload int
		mss     int
		segs    int
	}{
		{"tcp4", false, false, 10000, 1448, 7},   // last segment short
		{"tcp6", true, false, 2896, 1448, 2},     // exact multiple
		{"tcp4-one", false, false, 100, 1448, 1}, // fits one segment
		{"udp4", false, true, 4001, 1000, 5},     // one byte in the last datagram
		{"udp6", true, true, 3000, 1000, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pkt []byte
			h := Hdr{GSOSize: uint16(tc.mss)}
			if tc.udp {
				pkt = serialize(t, tc.v6, &layers.UDP{SrcPort: 5300, DstPort: 4000}, tc.payload)
				h.GSOType = GSOUDPL4
			} else {
				pkt = superTCP(t, tc.v6, tc.payload, func(tcp *layers.TCP) { tcp.PSH, tcp.FIN, tcp.CWR = true, true, true })
				h.GSOType = GSOTCPv4
				if tc.v6 {
					h.GSOType = GSOTCPv6
				}
			}
			var s Super
			if err := s.Init(pkt, 0, &h); err != nil {
				t.Fatal(err)
			}
			if s.Segments() != tc.segs {
				t.Fatalf("%d segments, want %d", s.Segments(), tc.segs)
			}
			var joined []byte
			buf := make([]byte, 2000)
			for i := range s.Segments() {
				n, err := s.Segment(i, buf)
				if err != nil {
					t.Fatal(err)
				}
				if n != s.SegmentLen(i) {
					t.Fatalf("segment %d: %d bytes, SegmentLen says %d", i, n, s.SegmentLen(i))
				}
				p := verify(t, buf[:n])
				joined = append(joined, p.TransportLayer().LayerPayload()...)
				if ip, ok := p.NetworkLayer().(*layers.IPv4); ok && ip.Id != 0xfffe+uint16(i) {
					t.Errorf("segment %d: IPv4 ID %#x, want %#x", i, ip.Id, 0xfffe+uint16(i))
				}
				if tcp, ok := p.TransportLayer().(*layers.TCP); ok {
					if want := 0xfffff000 + uint32(i*tc.mss); tcp.Seq != want { // wraps past 2^32
						t.Errorf("segment %d: seq %#x, want %#x", i, tcp.Seq, want)
					}
					last := i == s.Segments()-1
					if tcp.FIN != last || tcp.PSH != last || tcp.CWR != (i == 0) {
						t.Errorf("segment %d: FIN %v PSH %v CWR %v", i, tcp.FIN, tcp.PSH, tcp.CWR)
					}
				}
			}
			orig := gopacket.NewPacket(pkt, map[bool]gopacket.LayerType{false: layers.LayerTypeIPv4, true: layers.LayerTypeIPv6}[tc.v6], gopacket.Default)
			if !bytes.Equal(joined, orig.TransportLayer().LayerPayload()) {
				t.Fatal("segment payloads do not add up to the super packet's")
			}
			if _, err := s.Segment(0, buf[:s.SegmentLen(0)-1]); err == nil {
				t.Fatal("segment written into a buffer too small")
			}
		})
	}
}

// TestCompleteChecksum puts the pseudo-header sum in a TCP packet's checksum
// field, as a kernel does with CHECKSUM_PARTIAL, and completes it.
func TestCompleteChecksum(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		pkt := superTCP(t, v6, 1001, nil) // odd length
		_, l4, _, _, err := L4(pkt, 0)
		if err != nil {
			t.Fatal(err)
		}
		binary.BigEndian.PutUint16(pkt[l4+16:], pseudoSum(pkt, protoTCP, len(pkt)-l4))
		if err := CompleteChecksum(pkt, l4, 16); err != nil {
			t.Fatal(err)
		}
		verify(t, pkt)
		if err := CompleteChecksum(pkt, l4, len(pkt)-l4-1); err == nil {
			t.Fatal("completed a checksum field past the end")
		}
	}
}

// TestPrepareGSO checks the header PrepareGSO writes for TCP and UDP super
// packets, and that it refuses what the kernel would.
func TestPrepareGSO(t *testing.T) {
	pkt := superTCP(t, false, 5000, func(tcp *layers.TCP) { tcp.CWR = true })
	var h Hdr
	hdrs := make([]byte, 120)
	n, err := PrepareGSO(pkt, 0, 1448, false, &h, hdrs)
	if err != nil {
		t.Fatal(err)
	}
	want := Hdr{Flags: FlagNeedsCsum, GSOType: GSOTCPv4 | GSOECN, HdrLen: 20 + 32, GSOSize: 1448, CsumStart: 20, CsumOffset: 16}
	if h != want || n != 52 {
		t.Fatalf("got %+v, %d; want %+v, 52", h, n, want)
	}
	if !bytes.Equal(hdrs[:36], pkt[:36]) || !bytes.Equal(hdrs[38:n], pkt[38:n]) {
		t.Fatal("headers changed beyond the checksum field")
	}
	// Completing the partial sum over the whole packet gives the real one.
	full := append(append([]byte(nil), hdrs[:n]...), pkt[n:]...)
	if err := CompleteChecksum(full, 20, 16); err != nil || !bytes.Equal(full, pkt) {
		t.Fatalf("partial sum does not complete to the packet's checksum (%v)", err)
	}
	udp := serialize(t, true, &layers.UDP{SrcPort: 1, DstPort: 2}, 3000)
	if _, err := PrepareGSO(udp, 0, 1000, false, &h, hdrs); err == nil {
		t.Fatal("UDP GSO accepted without USO")
	}
	if _, err := PrepareGSO(udp, 0, 1000, true, &h, hdrs); err != nil || h.GSOType != GSOUDPL4 || h.CsumStart != 40 || h.CsumOffset != 6 {
		t.Fatalf("UDP: %+v, %v", h, err)
	}
	if _, err := PrepareGSO(pkt, 0, 0, false, &h, hdrs); err == nil {
		t.Fatal("zero MSS accepted")
	}
	if _, err := PrepareGSO(append(pkt, 0), 0, 1448, false, &h, hdrs); err == nil {
		t.Fatal("trailing bytes past the IP length accepted")
	}
	if got := DefaultMSS(pkt, 0, 1500); got != 1500-52 {
		t.Fatalf("DefaultMSS %d, want %d", got, 1500-52)
	}
}

// FuzzSegment splits arbitrary packets with arbitrary GSO headers: it must
// never panic, and every segment must fit what SegmentLen announced.
func FuzzSegment(f *testing.F) {
	f.Add(superTCP(f, false, 3000, nil), uint8(GSOTCPv4), uint16(1000), uint16(20), uint16(16))
	f.Add(superTCP(f, true, 3000, nil), uint8(GSOTCPv6), uint16(1), uint16(40), uint16(16))
	f.Add(serialize(f, false, &layers.UDP{SrcPort: 1, DstPort: 2}, 100), uint8(GSOUDPL4), uint16(7), uint16(20), uint16(6))
	buf, hdrs := make([]byte, 65535), make([]byte, 120)
	f.Fuzz(func(t *testing.T, pkt []byte, typ uint8, size, start, off uint16) {
		h := Hdr{GSOType: typ, GSOSize: size, CsumStart: start, CsumOffset: off}
		_ = CompleteChecksum(pkt, int(start), int(off))
		_ = CompletePartial(pkt, int(start%64))
		var hdr Hdr
		_, _ = PrepareGSO(pkt, 0, int(size), true, &hdr, hdrs)
		var s Super
		if s.Init(pkt, 0, &h) != nil {
			return
		}
		if s.Segments() > len(pkt) {
			t.Fatalf("%d segments from %d bytes", s.Segments(), len(pkt))
		}
		for i := range min(s.Segments(), 64) {
			n, err := s.Segment(i, buf)
			if err != nil || n != s.SegmentLen(i) || n > len(pkt) {
				t.Fatalf("segment %d: %d bytes, %v; SegmentLen %d", i, n, err, s.SegmentLen(i))
			}
		}
	})
}
