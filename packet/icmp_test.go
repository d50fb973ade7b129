package packet

import (
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func TestQuotedKey(t *testing.T) {
	l4, r4 := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	l6, r6 := netip.MustParseAddr("2001:2::1"), netip.MustParseAddr("2001:2::2")
	// The packets the local side sent (raw IP), whose starts the errors quote.
	sent4 := serialize(t, &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: l4.AsSlice(), DstIP: r4.AsSlice()},
		&layers.UDP{SrcPort: 8081, DstPort: 40000}, payload(100))
	sent6 := serialize(t, &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: l6.AsSlice(), DstIP: r6.AsSlice()},
		&layers.TCP{SrcPort: 8080, DstPort: 40001, DataOffset: 5}, payload(100))
	// An error: IP header from->to, ICMP header of type/code, then the quote.
	icmp4 := func(from, to netip.Addr, typ, code uint8, quote []byte) []byte {
		return serialize(t, &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: from.AsSlice(), DstIP: to.AsSlice()},
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code)}, gopacket.Payload(quote))
	}
	icmp6 := func(from, to netip.Addr, typ, code uint8, quote []byte) []byte {
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: from.AsSlice(), DstIP: to.AsSlice()}
		ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, code)}
		_ = ic.SetNetworkLayerForChecksum(ip)
		return serialize(t, ip, ic, payload(4), gopacket.Payload(quote)) // 4 bytes: unused / MTU
	}
	router := netip.MustParseAddr("198.18.1.1")
	cases := []struct {
		name string
		pkt  []byte
		want Key
		ok   bool
	}{
		// Fragmentation needed from a router on the path, quoting 28 bytes.
		{"frag_needed_v4", icmp4(router, l4, 3, 4, sent4[:28]),
			MakeKey(ProtoUDP, netip.AddrPortFrom(l4, 8081), netip.AddrPortFrom(r4, 40000)), true},
		// Port unreachable from the peer, quoting the whole packet.
		{"port_unreach_v4", icmp4(r4, l4, 3, 3, sent4), MakeKey(ProtoUDP, netip.AddrPortFrom(l4, 8081), netip.AddrPortFrom(r4, 40000)), true},
		// Packet too big.
		{"too_big_v6", icmp6(r6, l6, 2, 0, sent6[:48]),
			MakeKey(ProtoTCP, netip.AddrPortFrom(l6, 8080), netip.AddrPortFrom(r6, 40001)), true},
		// A quote cut before the ports.
		{"short_quote", icmp4(router, l4, 3, 4, sent4[:22]), Key{}, false},
		// A quote of a packet another host sent: not ours.
		{"not_ours", icmp4(router, netip.MustParseAddr("198.18.0.9"), 3, 4, sent4[:28]), Key{}, false},
		// An echo request is no error.
		{"echo", icmp4(r4, l4, 8, 0, sent4[:28]), Key{}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var p Parsed
			if err := Parse(c.pkt, RawIP, &p); err != nil {
				t.Fatal(err)
			}
			var k Key
			ok := p.IsICMPError() && p.QuotedKey(c.pkt, &k)
			if ok != c.ok || ok && k != c.want {
				t.Fatalf("QuotedKey = %v, %v; want %v, %v", k, ok, c.want, c.ok)
			}
		})
	}
}
