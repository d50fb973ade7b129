package packet

import (
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Test packets use documentation addresses: 198.18.0.0/15 (RFC 2544) and
// 2001:db8::/32 (RFC 3849). "Remote" is the sender of received packets and
// "local" the receiver, as the flowswitch sees them.
var (
	remoteMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	localMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	remote4   = net.IP{198, 18, 0, 1}
	local4    = net.IP{198, 18, 0, 2}
	remote6   = net.ParseIP("2001:db8::1")
	local6    = net.ParseIP("2001:db8::2")
)

// serialize builds a packet from layers, fixing lengths and checksums.
func serialize(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	for _, l := range ls {
		if n, ok := l.(interface {
			SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
		}); ok {
			for _, nl := range ls {
				if nl, ok := nl.(gopacket.NetworkLayer); ok {
					if err := n.SetNetworkLayerForChecksum(nl); err != nil {
						tb.Fatal(err)
					}
				}
			}
		}
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		tb.Fatalf("serialize: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func eth(t layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: remoteMAC, DstMAC: localMAC, EthernetType: t}
}

func ip4(proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Id: 0x1234, Flags: layers.IPv4DontFragment,
		Protocol: proto, SrcIP: remote4, DstIP: local4}
}

func ip6(next layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next, SrcIP: remote6, DstIP: local6}
}

func tcp(flags TCPFlags) *layers.TCP {
	return &layers.TCP{SrcPort: 40000, DstPort: 80, Seq: 1000, Ack: 2000, Window: 65535,
		FIN: flags.Has(TCPFin), SYN: flags.Has(TCPSyn), RST: flags.Has(TCPRst),
		PSH: flags.Has(TCPPsh), ACK: flags.Has(TCPAck), URG: flags.Has(TCPUrg),
		ECE: flags.Has(TCPEce), CWR: flags.Has(TCPCwr)}
}

func udp() *layers.UDP { return &layers.UDP{SrcPort: 40000, DstPort: 53} }

func payload(n int) gopacket.Payload {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i)
	}
	return p
}

// Packets shared by the table tests, the fuzz seeds and the benchmarks.
func tcp4Packet(tb testing.TB) []byte {
	return serialize(tb, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolTCP),
		tcp(TCPAck|TCPPsh), payload(100))
}

func udp6Packet(tb testing.TB) []byte {
	return serialize(tb, eth(layers.EthernetTypeIPv6), ip6(layers.IPProtocolUDP), udp(), payload(100))
}

// hbhPad4 is a hop-by-hop header holding one PadN option of 4 bytes: 8 bytes.
func hbhPad4(next layers.IPProtocol) *layers.IPv6HopByHop {
	h := &layers.IPv6HopByHop{}
	h.NextHeader = next
	h.Options = []*layers.IPv6HopByHopOption{{OptionType: 1, OptionData: make([]byte, 4)}}
	return h
}

// withIP6 returns ip6(next) with a hop-by-hop header in front of next.
func withHBH(ip *layers.IPv6, next layers.IPProtocol) *layers.IPv6 {
	ip.NextHeader = layers.IPProtocolIPv6HopByHop
	ip.HopByHop = hbhPad4(next)
	return ip
}

// seedPackets returns one packet of each kind Parse accepts, for fuzz seeds.
func seedPackets(tb testing.TB) map[string][]byte {
	m := map[string][]byte{}
	for _, c := range acceptCases(tb) {
		m[c.name] = c.pkt
	}
	return m
}
