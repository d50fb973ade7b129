package packet

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var (
	remote4Addr = netip.MustParseAddr("198.18.0.1")
	local4Addr  = netip.MustParseAddr("198.18.0.2")
	remote6Addr = netip.MustParseAddr("2001:db8::1")
	local6Addr  = netip.MustParseAddr("2001:db8::2")
)

type acceptCase struct {
	name string
	link LinkType
	pkt  []byte
	want Parsed
}

// v4 returns what Parse reports for an Ethernet frame holding ip4(proto)
// with ipLen bytes of IP packet, before any L4 header.
func v4(proto uint8, ipLen int) Parsed {
	return Parsed{L2Len: 14, EtherType: EtherTypeIPv4, IPVersion: 4, Proto: proto, TTL: 64,
		DontFrag: true, ID: 0x1234, L3Off: 14, IPHdrLen: 20, IPLen: ipLen,
		src: remote4Addr.As16(), dst: local4Addr.As16(), L4Off: 34, PayloadOff: 34, PayloadLen: ipLen - 20}
}

// v6 is v4 for an Ethernet frame holding an IPv6 header without extensions.
func v6(proto uint8, ipLen int) Parsed {
	return Parsed{L2Len: 14, EtherType: EtherTypeIPv6, IPVersion: 6, Proto: proto, TTL: 64,
		L3Off: 14, IPHdrLen: 40, IPLen: ipLen, src: remote6Addr.As16(), dst: local6Addr.As16(),
		L4Off: 54, PayloadOff: 54, PayloadLen: ipLen - 40}
}

// withL4 sets the L4 header fields Parse reports for a header of hl bytes.
func withL4(p Parsed, hl int, sport, dport uint16) Parsed {
	p.HasL4, p.L4HdrLen = true, hl
	p.SrcPort, p.DstPort = sport, dport
	p.PayloadOff += hl
	p.PayloadLen -= hl
	return p
}

// withTCP adds what Parse reports for tcp(flags) / tcpBytes with hl bytes.
func withTCP(p Parsed, flags TCPFlags, hl int) Parsed {
	p = withL4(p, hl, 40000, 80)
	p.Seq, p.Ack, p.Flags, p.Window, p.TCPOptLen = 1000, 2000, flags, 65535, hl-20
	return p
}

// withUDP adds what Parse reports for udp() / udpBytes with length ulen.
func withUDP(p Parsed, ulen int) Parsed {
	p = withL4(p, 8, 40000, 53)
	p.UDPLen = ulen
	return p
}

func withICMP(p Parsed, typ uint8, id uint16) Parsed {
	p = withL4(p, 8, id, id)
	p.ICMPType = typ
	return p
}

func acceptCases(tb testing.TB) []acceptCase {
	var cs []acceptCase
	add := func(name string, link LinkType, pkt []byte, want Parsed) {
		cs = append(cs, acceptCase{name, link, pkt, want})
	}

	// IPv4/TCP data segment, 100 bytes of payload.
	add("ipv4_tcp", Ethernet, tcp4Packet(tb), withTCP(v4(ProtoTCP, 140), TCPAck|TCPPsh, 20))

	// IPv4/TCP SYN with an MSS option, TOS = DSCP EF | ECT(1), and the frame
	// padded to the Ethernet minimum of 60 bytes: IPLen stays 44.
	{
		ip := ip4(layers.IPProtocolTCP)
		ip.TOS = 0xb9
		t := tcp(TCPSyn)
		t.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}}}
		pkt := append(serialize(tb, eth(layers.EthernetTypeIPv4), ip, t), 0, 0)
		w := withTCP(v4(ProtoTCP, 44), TCPSyn, 24)
		w.TOS = 0xb9
		add("ipv4_tcp_syn_mss_padded", Ethernet, pkt, w)
	}

	// IPv4 with a router alert option (IHL 6) carrying UDP.
	{
		ip := ip4(layers.IPProtocolUDP)
		ip.Options = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
		w := v4(ProtoUDP, 52)
		w.IPOptions, w.IPHdrLen, w.L4Off, w.PayloadOff, w.PayloadLen = true, 24, 38, 38, 28
		add("ipv4_options_udp", Ethernet, serialize(tb, eth(layers.EthernetTypeIPv4), ip, udp(), payload(20)), withUDP(w, 28))
	}

	// IPv4 first fragment (MF, offset 0) of a 1008-byte UDP datagram: the UDP
	// header is there, the UDP length exceeds this fragment's data.
	{
		ip := ip4(layers.IPProtocolUDP)
		ip.Flags = layers.IPv4MoreFragments
		w := v4(ProtoUDP, 124)
		w.DontFrag, w.MoreFrags = false, true
		add("ipv4_first_fragment", Ethernet, serialize(tb, eth(layers.EthernetTypeIPv4), ip, gopacket.Payload(udpBytes(1008, 96))), withUDP(w, 1008))
	}

	// IPv4 later fragment (offset 104 bytes, last): no L4 header, no ports.
	{
		ip := ip4(layers.IPProtocolUDP)
		ip.Flags, ip.FragOffset = 0, 13
		w := v4(ProtoUDP, 924)
		w.DontFrag, w.FragOff = false, 104
		add("ipv4_later_fragment", Ethernet, serialize(tb, eth(layers.EthernetTypeIPv4), ip, payload(904)), w)
	}

	// IPv6/UDP with traffic class AF11 and a flow label.
	{
		ip := ip6(layers.IPProtocolUDP)
		ip.TrafficClass, ip.FlowLabel = 0x28, 0x12345
		w := v6(ProtoUDP, 148)
		w.TOS, w.FlowLabel = 0x28, 0x12345
		add("ipv6_udp", Ethernet, serialize(tb, eth(layers.EthernetTypeIPv6), ip, udp(), payload(100)), withUDP(w, 108))
	}

	// IPv6 hop-by-hop + fragment header, first fragment of a UDP datagram.
	{
		ip := withHBH(ip6(0), layers.IPProtocolIPv6Fragment)
		f := &layers.IPv6Fragment{NextHeader: layers.IPProtocolUDP, MoreFragments: true, Identification: 0xdeadbeef}
		w := v6(ProtoUDP, 160)
		w.ExtHeaders, w.FragHeader, w.MoreFrags, w.ID = 2, true, true, 0xdeadbeef
		w.IPHdrLen, w.L4Off, w.PayloadOff, w.PayloadLen = 56, 70, 70, 104
		add("ipv6_hbh_first_fragment", Ethernet, serialize(tb, eth(layers.EthernetTypeIPv6), ip, f, gopacket.Payload(udpBytes(1008, 96))), withUDP(w, 1008))
	}

	// IPv6 hop-by-hop + fragment header, later fragment: no L4 header.
	{
		ip := withHBH(ip6(0), layers.IPProtocolIPv6Fragment)
		f := &layers.IPv6Fragment{NextHeader: layers.IPProtocolUDP, FragmentOffset: 13, Identification: 0xdeadbeef}
		w := v6(ProtoUDP, 960)
		w.ExtHeaders, w.FragHeader, w.FragOff, w.ID = 2, true, 104, 0xdeadbeef
		w.IPHdrLen, w.L4Off, w.PayloadOff, w.PayloadLen = 56, 70, 70, 904
		add("ipv6_hbh_later_fragment", Ethernet, serialize(tb, eth(layers.EthernetTypeIPv6), ip, f, payload(904)), w)
	}

	// IPv6 atomic fragment (offset 0, M clear: RFC 6946) carrying a TCP ACK:
	// a whole datagram, not a fragment.
	{
		w := v6(ProtoTCP, 68)
		w.ExtHeaders, w.FragHeader, w.ID = 1, true, 7
		w.IPHdrLen, w.L4Off, w.PayloadOff, w.PayloadLen = 48, 62, 62, 20
		add("ipv6_atomic_fragment_tcp", Ethernet, ip6Frame(44, fragHdr(6, 0, false, 7), tcpBytes(TCPAck, 20, 0)), withTCP(w, TCPAck, 20))
	}

	// IPv6 destination options + routing + AH, then TCP with 10 bytes.
	{
		w := v6(ProtoTCP, 110)
		w.ExtHeaders, w.IPHdrLen, w.L4Off, w.PayloadOff, w.PayloadLen = 3, 80, 94, 94, 30
		add("ipv6_dstopts_routing_ah_tcp", Ethernet,
			ip6Frame(60, optsHdr(43, 8), routingHdr(51), ahHdr(6, 24), tcpBytes(TCPAck|TCPPsh, 20, 10)),
			withTCP(w, TCPAck|TCPPsh, 20))
	}

	// IPv6 ESP: opaque after the IPv6 header.
	add("ipv6_esp", Ethernet, ip6Frame(50, make([]byte, 16)), v6(50, 56))

	// ICMP echo request: the identifier is both ports.
	add("ipv4_icmp_echo_request", Ethernet,
		serialize(tb, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolICMPv4),
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 0x4242, Seq: 1}, payload(56)),
		withICMP(v4(ProtoICMP, 84), 8, 0x4242))

	// ICMP port unreachable quoting 28 bytes: no ports.
	{
		w := withICMP(v4(ProtoICMP, 56), 3, 0)
		w.ICMPCode = 3
		add("ipv4_icmp_unreachable", Ethernet,
			serialize(tb, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolICMPv4),
				&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}, payload(28)), w)
	}

	// ICMPv6 echo reply with identifier 0x4242.
	add("ipv6_icmpv6_echo_reply", Ethernet,
		serialize(tb, eth(layers.EthernetTypeIPv6), ip6(layers.IPProtocolICMPv6),
			&layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(129, 0)},
			&layers.ICMPv6Echo{Identifier: 0x4242, SeqNumber: 1}, payload(56)),
		withICMP(v6(ProtoICMPv6, 104), 129, 0x4242))

	// 802.1Q tag (priority 3, VLAN 100) then IPv4/UDP.
	{
		w := withUDP(v4(ProtoUDP, 38), 18)
		w.L2Len, w.HasVLAN, w.VLANTCI, w.L3Off = 18, true, 3<<13|100, 18
		w.L4Off, w.PayloadOff = 38, 46
		add("vlan_ipv4_udp", Ethernet,
			serialize(tb, eth(layers.EthernetTypeDot1Q),
				&layers.Dot1Q{Priority: 3, VLANIdentifier: 100, Type: layers.EthernetTypeIPv4},
				ip4(layers.IPProtocolUDP), udp(), payload(10)), w)
	}

	// ARP request: reported as ARP, left to the nexus.
	add("arp_request", Ethernet,
		serialize(tb, eth(layers.EthernetTypeARP), &layers.ARP{AddrType: layers.LinkTypeEthernet,
			Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: remoteMAC, SourceProtAddress: remote4,
			DstHwAddress: make([]byte, 6), DstProtAddress: local4}),
		Parsed{L2Len: 14, EtherType: EtherTypeARP, ARP: true})

	// Raw IPv4/TCP SYN, as read from a TUN device.
	{
		w := withTCP(v4(ProtoTCP, 40), TCPSyn, 20)
		w.L2Len, w.L3Off, w.L4Off, w.PayloadOff = 0, 0, 20, 40
		add("raw_ipv4_tcp_syn", RawIP, serialize(tb, ip4(layers.IPProtocolTCP), tcp(TCPSyn)), w)
	}

	// Raw IPv6 ICMPv6 echo request, identifier 7.
	{
		w := withICMP(v6(ProtoICMPv6, 64), 128, 7)
		w.L2Len, w.L3Off, w.L4Off, w.PayloadOff = 0, 0, 40, 48
		add("raw_ipv6_icmpv6_echo_request", RawIP,
			serialize(tb, ip6(layers.IPProtocolICMPv6), &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(128, 0)},
				&layers.ICMPv6Echo{Identifier: 7, SeqNumber: 1}, payload(16)), w)
	}

	// IPv4 GRE: another protocol is fine, with Proto set and no ports.
	add("ipv4_gre", Ethernet, serialize(tb, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolGRE), payload(4)), v4(47, 24))

	// IPv4/UDP whose UDP length (58) is below the IP payload (108): like
	// Linux, the bytes past the UDP length are not payload.
	add("ipv4_udp_short_length", Ethernet,
		mut(serialize(tb, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolUDP), udp(), payload(100)),
			func(b []byte) { b[38], b[39] = 0, 58 }),
		func() Parsed { w := withUDP(v4(ProtoUDP, 128), 58); w.PayloadLen = 50; return w }())

	// ICMP (v4) over IPv6 is an unknown protocol to an IPv6 stack.
	add("ipv6_icmpv4_unparsed", Ethernet, ip6Frame(1, make([]byte, 8)), v6(1, 48))
	return cs
}

func TestParseAccepts(t *testing.T) {
	for _, c := range acceptCases(t) {
		t.Run(c.name, func(t *testing.T) {
			var p Parsed
			if err := Parse(c.pkt, c.link, &p); err != nil {
				t.Fatalf("Parse = %v, want nil", err)
			}
			if p != c.want {
				t.Errorf("Parse mismatch\n got %+v\nwant %+v", p, c.want)
			}
			checkInvariants(t, c.pkt, &p)
			if p.IsFirstFragment() != (p.MoreFrags && p.FragOff == 0) || p.DSCP()<<2|p.ECN() != p.TOS {
				t.Error("IsFirstFragment, DSCP or ECN disagree with the fields")
			}
		})
	}
}

// TestParseNoAlloc checks the zero-allocation invariant on every accepted
// kind of packet and on a rejection.
func TestParseNoAlloc(t *testing.T) {
	var p Parsed
	for _, c := range acceptCases(t) {
		if n := testing.AllocsPerRun(100, func() {
			_ = Parse(c.pkt, c.link, &p)
			k := p.RxKey()
			_ = k.Hash()
		}); n != 0 {
			t.Errorf("%s: %v allocs per Parse, want 0", c.name, n)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = Parse(nil, Ethernet, &p) }); n != 0 {
		t.Errorf("rejection: %v allocs per Parse, want 0", n)
	}
}

// TestNoRetention checks that Parsed and Key can hold no reference to the
// buffer: no slices, maps, pointers, interfaces or strings anywhere.
func TestNoRetention(t *testing.T) {
	for _, typ := range []reflect.Type{reflect.TypeFor[Parsed](), reflect.TypeFor[Key]()} {
		for i := range typ.NumField() {
			f := typ.Field(i)
			switch k := f.Type.Kind(); k {
			case reflect.Bool, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Int:
			case reflect.Array:
				if e := f.Type.Elem().Kind(); e != reflect.Uint8 && e != reflect.Uint64 {
					t.Errorf("%v.%s: array of %v", typ, f.Name, e)
				}
			default:
				t.Errorf("%v.%s: kind %v may reference the buffer", typ, f.Name, k)
			}
		}
	}
}

func TestTOSAndFragments(t *testing.T) {
	p := parseCase(t, "ipv4_tcp_syn_mss_padded") // TOS 0xb9: DSCP EF (46), ECT(1)
	if p.DSCP() != 46 || p.ECN() != 1 {
		t.Errorf("DSCP %d ECN %d, want 46 1", p.DSCP(), p.ECN())
	}
	for name, want := range map[string][3]bool{ // IsFragment, IsFirstFragment, IsLaterFragment
		"ipv4_tcp":                 {false, false, false},
		"ipv4_first_fragment":      {true, true, false},
		"ipv4_later_fragment":      {true, false, true},
		"ipv6_hbh_first_fragment":  {true, true, false},
		"ipv6_hbh_later_fragment":  {true, false, true},
		"ipv6_atomic_fragment_tcp": {false, false, false},
	} {
		p := parseCase(t, name)
		if got := [3]bool{p.IsFragment(), p.IsFirstFragment(), p.IsLaterFragment()}; got != want {
			t.Errorf("%s: fragment predicates %v, want %v", name, got, want)
		}
	}
}
