package packettest_test

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/packet/packettest"
)

// Documentation addresses: RFC 2544 (198.18.0.0/15) and RFC 3849 (2001:db8::/32).
var (
	remote4 = netip.MustParseAddrPort("198.19.0.2:40000")
	local4  = netip.MustParseAddrPort("198.18.0.1:80")
	remote6 = netip.MustParseAddrPort("[2001:db8::2]:40000")
	local6  = netip.MustParseAddrPort("[2001:db8::1]:4000")
)

func cases() []struct {
	name string
	f    packettest.Frame
} {
	return []struct {
		name string
		f    packettest.Frame
	}{
		{"tcp4 ack+psh", packettest.Frame{Src: remote4, Dst: local4, Proto: packet.ProtoTCP,
			Seq: 1000, Ack: 777, Flags: packet.TCPAck | packet.TCPPsh, Window: 1000, ID: 7, Payload: []byte("hello")}},
		{"tcp4 syn, IP and TCP options", packettest.Frame{Src: remote4, Dst: local4, Proto: packet.ProtoTCP,
			Flags: packet.TCPSyn, IPOptions: packettest.IPv4NOPs(4), TCPOptions: packettest.TCPTimestamp(1, 2)}},
		{"tcp4 tos, no DF, odd payload", packettest.Frame{Src: remote4, Dst: local4, Proto: packet.ProtoTCP,
			TOS: 0xb8, NoDF: true, TTL: 3, Payload: []byte("odd")}},
		{"udp4 padded to 64", packettest.Frame{Src: remote4, Dst: local4, Proto: packet.ProtoUDP,
			Payload: []byte("tag"), Size: 64}},
		{"udp4 raw IP", packettest.Frame{Link: packet.RawIP, Src: local4, Dst: remote4, Proto: packet.ProtoUDP, Size: 64}},
		{"icmp4 echo", packettest.Frame{Src: netip.AddrPortFrom(remote4.Addr(), 99), Dst: local4,
			Proto: packet.ProtoICMP, ICMPSeq: 3, Payload: []byte("ping")}},
		{"tcp6", packettest.Frame{Src: remote6, Dst: local6, Proto: packet.ProtoTCP, Seq: 5,
			Flags: packet.TCPAck | packet.TCPFin, FlowLabel: 0x12345, TOS: 4, Payload: []byte("six")}},
		{"udp6 padded", packettest.Frame{Src: remote6, Dst: local6, Proto: packet.ProtoUDP, Size: 1500}},
		{"udp6 raw IP", packettest.Frame{Link: packet.RawIP, Src: remote6, Dst: local6, Proto: packet.ProtoUDP,
			Payload: []byte("x")}},
		{"icmp6 echo", packettest.Frame{Src: netip.AddrPortFrom(remote6.Addr(), 7), Dst: local6,
			Proto: packet.ProtoICMPv6, Payload: []byte("ping6")}},
	}
}

// Each frame parses with packet.Parse into what was asked, and gopacket,
// serializing the decoded layers again with checksums computed, reproduces
// it byte for byte: the lengths and checksums are right.
func TestFramesAgreeWithGopacket(t *testing.T) {
	for _, c := range cases() {
		t.Run(c.name, func(t *testing.T) {
			b := c.f.Bytes()
			if len(b) != c.f.Len() {
				t.Fatalf("%d bytes, Len() = %d", len(b), c.f.Len())
			}
			link := packet.Ethernet
			first := layers.LayerTypeEthernet
			if c.f.Link == packet.RawIP {
				link = packet.RawIP
				first = layers.LayerTypeIPv4
				if b[0]>>4 == 6 {
					first = layers.LayerTypeIPv6
				}
			}
			var p packet.Parsed
			if err := packet.Parse(b, link, &p); err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if p.Src() != c.f.Src.Addr() || p.Dst() != c.f.Dst.Addr() || p.Proto != c.f.Proto {
				t.Errorf("parsed %v → %v proto %d", p.Src(), p.Dst(), p.Proto)
			}
			if c.f.Proto == packet.ProtoTCP || c.f.Proto == packet.ProtoUDP {
				if p.SrcPort != c.f.Src.Port() || p.DstPort != c.f.Dst.Port() {
					t.Errorf("parsed ports %d → %d", p.SrcPort, p.DstPort)
				}
			}
			if c.f.Proto == packet.ProtoTCP && (p.Seq != c.f.Seq || p.Ack != c.f.Ack || p.TCPOptLen != len(c.f.TCPOptions)) {
				t.Errorf("parsed seq %d ack %d options %d", p.Seq, p.Ack, p.TCPOptLen)
			}
			if p.IPOptions != (len(c.f.IPOptions) > 0) || p.TOS != c.f.TOS || p.FlowLabel != c.f.FlowLabel {
				t.Errorf("parsed IP options %v TOS %#x flow label %#x", p.IPOptions, p.TOS, p.FlowLabel)
			}
			if len(c.f.Payload) > 0 && !bytes.HasPrefix(b[p.PayloadOff:], c.f.Payload) {
				t.Errorf("payload %q", b[p.PayloadOff:])
			}
			// gopacket pads Ethernet frames to the 60-byte minimum.
			if got := reserialize(t, b, first); len(got) < len(b) || !bytes.Equal(got[:len(b)], b) ||
				(len(got) > len(b) && (first != layers.LayerTypeEthernet || len(got) != 60)) {
				t.Errorf("gopacket with checksums computed:\n got %x\nwant %x", got, b)
			}
		})
	}
}

// reserialize decodes b with gopacket and serializes its layers again with
// checksums computed (lengths as decoded).
func reserialize(t *testing.T, b []byte, first gopacket.LayerType) []byte {
	t.Helper()
	pk := gopacket.NewPacket(bytes.Clone(b), first, gopacket.Default)
	if el := pk.ErrorLayer(); el != nil {
		t.Fatalf("gopacket: %v", el.Error())
	}
	var net gopacket.NetworkLayer
	var ls []gopacket.SerializableLayer
	for _, l := range pk.Layers() {
		if n, ok := l.(gopacket.NetworkLayer); ok && net == nil {
			net = n
		}
		if c, ok := l.(interface {
			SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
		}); ok {
			if err := c.SetNetworkLayerForChecksum(net); err != nil {
				t.Fatal(err)
			}
		}
		s, ok := l.(gopacket.SerializableLayer)
		if !ok {
			t.Fatalf("layer %v does not serialize", l.LayerType())
		}
		ls = append(ls, s)
	}
	sb := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(sb, gopacket.SerializeOptions{ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return sb.Bytes()
}

// Append writes after the existing bytes and allocates nothing when the
// buffer has room.
func TestAppendNoAllocs(t *testing.T) {
	f := packettest.Frame{Src: remote4, Dst: local4, Proto: packet.ProtoUDP, Size: 64}
	buf := make([]byte, 3, 3+f.Len())
	copy(buf, "abc")
	out := f.Append(buf)
	if string(out[:3]) != "abc" || !bytes.Equal(out[3:], f.Bytes()) {
		t.Fatal("Append did not append the frame after the existing bytes")
	}
	if n := testing.AllocsPerRun(100, func() { buf = f.Append(buf[:0]) }); n != 0 {
		t.Errorf("%v allocations per Append", n)
	}
}

// A protocol without a header the builder knows carries the payload right
// after the IP header.
func TestOtherProtocol(t *testing.T) {
	f := packettest.Frame{Src: remote4, Dst: local4, Proto: 47, Payload: []byte("gre")}
	var p packet.Parsed
	b := f.Bytes()
	if err := packet.Parse(b, packet.Ethernet, &p); err != nil || p.Proto != 47 || p.HasL4 || string(b[p.PayloadOff:]) != "gre" {
		t.Fatalf("Parse = %v, %+v", err, p)
	}
}
