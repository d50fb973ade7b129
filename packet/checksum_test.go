package packet

import (
	"bytes"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// csumCases are raw IP packets with correct checksums, as gopacket
// serializes them: TCP and UDP over IPv4 (with options) and IPv6, with
// even and odd payload lengths.
func csumCases(t testing.TB) map[string][]byte {
	out := map[string][]byte{}
	for _, v6 := range []bool{false, true} {
		for _, udp := range []bool{false, true} {
			for _, n := range []int{0, 1, 1400, 9001} {
				var ip gopacket.NetworkLayer
				var ipl gopacket.SerializableLayer
				proto := layers.IPProtocolTCP
				if udp {
					proto = layers.IPProtocolUDP
				}
				if v6 {
					l := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: net.ParseIP("2001:db8::1"), DstIP: net.ParseIP("2001:db8::2")}
					ip, ipl = l, l
				} else {
					l := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: net.IPv4(198, 18, 0, 1), DstIP: net.IPv4(198, 19, 0, 2),
						Options: []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}}
					ip, ipl = l, l
				}
				payload := bytes.Repeat([]byte{0xa5, 0x3c, 0xff}, n/3+1)[:n]
				var l4 gopacket.SerializableLayer
				if udp {
					u := &layers.UDP{SrcPort: 5353, DstPort: 9}
					_ = u.SetNetworkLayerForChecksum(ip)
					l4 = u
				} else {
					tc := &layers.TCP{SrcPort: 40000, DstPort: 80, Seq: 7, Ack: 9, ACK: true, PSH: true, Window: 512}
					_ = tc.SetNetworkLayerForChecksum(ip)
					l4 = tc
				}
				buf := gopacket.NewSerializeBuffer()
				if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ipl, l4, gopacket.Payload(payload)); err != nil {
					t.Fatal(err)
				}
				name := map[bool]string{false: "v4", true: "v6"}[v6] + map[bool]string{false: "/tcp", true: "/udp"}[udp] + "/" + string(rune('a'+n%26))
				out[name] = append([]byte(nil), buf.Bytes()...)
			}
		}
	}
	return out
}

func TestCompleteChecksum(t *testing.T) {
	for name, want := range csumCases(t) {
		if !ChecksumsValid(want) {
			t.Fatalf("%s: gopacket's packet does not verify", name)
		}
		l4, _, proto, ok := l4Span(want)
		if !ok {
			t.Fatalf("%s: no L4 span", name)
		}
		at := l4 + csumAt(proto)
		// Zeroed (gVisor with TX checksum offload), or the pseudo-header
		// sum (CHECKSUM_PARTIAL), or garbage: completion writes the same.
		for _, field := range []uint16{0, 0x1234, 0xffff} {
			b := append([]byte(nil), want...)
			b[at], b[at+1] = byte(field>>8), byte(field)
			if field == 0 && proto == ProtoUDP && b[0]>>4 == 6 && ChecksumsValid(b) {
				t.Errorf("%s: a zero UDP checksum over IPv6 verified", name)
			}
			if !CompleteChecksum(b) {
				t.Fatalf("%s: CompleteChecksum refused", name)
			}
			if !bytes.Equal(b, want) {
				t.Errorf("%s field %#x: completed checksum %#x, want %#x", name, field, b[at:at+2], want[at:at+2])
			}
		}
		// One flipped payload bit fails verification.
		b := append([]byte(nil), want...)
		b[len(b)-1] ^= 0x10
		if l4+csumAt(proto)+2 < len(b) && ChecksumsValid(b) {
			t.Errorf("%s: a corrupt packet verified", name)
		}
	}
}

func TestCompleteChecksumRefuses(t *testing.T) {
	good := csumCases(t)["v4/tcp/b"]
	frag := append([]byte(nil), good...)
	frag[6] |= 0x20 // MF
	short := append([]byte(nil), good...)
	short[3] += 4 // IP length past the buffer
	icmp := append([]byte(nil), good...)
	icmp[9] = 1
	for name, b := range map[string][]byte{"empty": nil, "fragment": frag, "short": short, "icmp": icmp, "v5": {0x50, 0, 0, 0}, "ihl": {0x41, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}} {
		c := append([]byte(nil), b...)
		if CompleteChecksum(c) {
			t.Errorf("%s: completed", name)
		}
		if !bytes.Equal(c, b) {
			t.Errorf("%s: changed by a refused completion", name)
		}
	}
}

// FuzzCompleteChecksum checks that neither function panics on any bytes,
// that a refused completion changes nothing, and that a completed packet
// verifies at L4.
func FuzzCompleteChecksum(f *testing.F) {
	for _, b := range csumCases(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = ChecksumsValid(b)
		c := append([]byte(nil), b...)
		if !CompleteChecksum(c) {
			if !bytes.Equal(b, c) {
				t.Fatal("a refused completion changed the packet")
			}
			return
		}
		l4, end, proto, ok := l4Span(c)
		if !ok || Fold(l4Sum(c, l4, end, proto)) != 0xffff {
			t.Fatalf("completed packet does not verify")
		}
	})
}
