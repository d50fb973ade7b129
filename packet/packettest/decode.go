package packettest

import (
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/skylane/skylane/packet"
)

// Decode decodes frame b (framed as lt: Ethernet, or a raw IPv4/IPv6
// packet) with gopacket, an independent decoder, and fails the test unless
// it decodes cleanly with a valid IPv4 header checksum and valid TCP or UDP
// checksum and length. A raw IPv4 packet's total length must also be len(b)
// (an Ethernet frame may carry padding). It returns the decoded packet.
func Decode(t testing.TB, b []byte, lt packet.LinkType) gopacket.Packet {
	t.Helper()
	first := layers.LayerTypeEthernet
	if lt == packet.RawIP {
		first = layers.LayerTypeIPv4
		if len(b) > 0 && b[0]>>4 == 6 {
			first = layers.LayerTypeIPv6
		}
	}
	p := gopacket.NewPacket(b, first, gopacket.Default)
	if el := p.ErrorLayer(); el != nil {
		t.Fatalf("gopacket: %v", el.Error())
	}
	if ip, ok := p.NetworkLayer().(*layers.IPv4); ok {
		if err, r := ip.VerifyChecksum(); err != nil || !r.Valid {
			t.Fatalf("IPv4 header checksum %#x invalid (%v)", ip.Checksum, err)
		}
		if lt == packet.RawIP && int(ip.Length) != len(b) {
			t.Fatalf("IPv4 length %d, packet %d bytes", ip.Length, len(b))
		}
	}
	switch l4 := p.TransportLayer().(type) {
	case *layers.TCP:
		_ = l4.SetNetworkLayerForChecksum(p.NetworkLayer())
		if err, r := l4.VerifyChecksum(); err != nil || !r.Valid {
			t.Fatalf("TCP checksum %#x invalid, want %#x (%v)", l4.Checksum, r.Correct, err)
		}
	case *layers.UDP:
		_ = l4.SetNetworkLayerForChecksum(p.NetworkLayer())
		if err, r := l4.VerifyChecksum(); err != nil || !r.Valid {
			t.Fatalf("UDP checksum %#x invalid, want %#x (%v)", l4.Checksum, r.Correct, err)
		}
		if int(l4.Length) != len(l4.Contents)+len(l4.Payload) {
			t.Fatalf("UDP length %d, datagram %d bytes", l4.Length, len(l4.Contents)+len(l4.Payload))
		}
	}
	return p
}
