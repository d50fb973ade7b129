package packet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

type rejectCase struct {
	name string
	link LinkType
	pkt  []byte
	want Reason
}

func rejectCases(tb testing.TB) []rejectCase {
	tcp4 := tcp4Packet(tb) // IPv4 at 14, TCP at 34
	udp6 := udp6Packet(tb) // IPv6 at 14, UDP at 54
	udp4 := serialize(tb, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolUDP), udp(), payload(10))
	icmp4 := serialize(tb, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)})
	arp := serialize(tb, eth(layers.EthernetTypeARP), &layers.ARP{AddrType: layers.LinkTypeEthernet,
		Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPRequest,
		SourceHwAddress: remoteMAC, SourceProtAddress: remote4, DstHwAddress: make([]byte, 6), DstProtAddress: local4})
	setTL := func(tl uint16) func([]byte) {
		return func(b []byte) { binary.BigEndian.PutUint16(b[16:18], tl) }
	}
	return []rejectCase{
		// A zero LinkType is a caller bug, not Ethernet.
		{"zero_link_type", 0, tcp4, ReasonBadLinkType},
		// 13 bytes: no room for the EtherType.
		{"short_ethernet", Ethernet, tcp4[:13], ReasonTruncatedL2},
		// A VLAN TPID without the rest of its tag.
		{"short_vlan_tag", Ethernet, append(ethBytes(EtherTypeVLAN), 0, 100), ReasonTruncatedL2},
		// IPX is not ours.
		{"ipx", Ethernet, append(ethBytes(0x8137), make([]byte, 46)...), ReasonUnsupportedEtherType},
		// 802.3 frame: a length, not an EtherType.
		{"ieee802_3_length", Ethernet, append(ethBytes(46), make([]byte, 46)...), ReasonUnsupportedEtherType},
		// Q-in-Q: a second 802.1Q tag is not accepted.
		{"double_vlan", Ethernet, append(ethBytes(EtherTypeVLAN), 0, 100, 0x81, 0, 0, 200, 0x08, 0), ReasonUnsupportedEtherType},
		// ARP cut after its fixed header: the addresses are missing.
		{"short_arp", Ethernet, arp[:14+8+10], ReasonTruncatedARP},
		{"arp_no_header", Ethernet, arp[:14+7], ReasonTruncatedARP},
		// Empty TUN read.
		{"raw_empty", RawIP, nil, ReasonTruncatedIP},
		// Raw IP with version 5.
		{"raw_version_5", RawIP, mut(tcp4[14:], func(b []byte) { b[0] = 0x55 }), ReasonBadIPVersion},
		// EtherType IPv4 over an IPv6 header, and the other way round.
		{"ipv4_ethertype_v6_header", Ethernet, mut(udp6, func(b []byte) { b[12], b[13] = 0x08, 0x00 }), ReasonBadIPVersion},
		{"ipv6_ethertype_v4_header", Ethernet, mut(tcp4, func(b []byte) { b[12], b[13] = 0x86, 0xdd }), ReasonBadIPVersion},
		// 19 bytes of IPv4 header.
		{"short_ipv4_header", Ethernet, tcp4[:14+19], ReasonTruncatedIPv4},
		// Total length 140, one byte missing.
		{"short_ipv4_packet", Ethernet, tcp4[:len(tcp4)-1], ReasonTruncatedIPv4},
		// IHL 6 but only the 20-byte header and no more.
		{"short_ipv4_options", Ethernet, mut(tcp4[:34], func(b []byte) { b[14] = 0x46; setTL(24)(b) }), ReasonTruncatedIPv4},
		// IHL 4.
		{"ipv4_ihl_4", Ethernet, mut(tcp4, func(b []byte) { b[14] = 0x44 }), ReasonBadIPv4IHL},
		// Total length 19, below the header length; and 0 (TSO style).
		{"ipv4_total_length_19", Ethernet, mut(tcp4, setTL(19)), ReasonBadIPv4TotalLength},
		{"ipv4_total_length_0", Ethernet, mut(tcp4, setTL(0)), ReasonBadIPv4TotalLength},
		// Ping of death: offset 65512 + 140 bytes > 65535.
		{"ipv4_fragment_overflow", Ethernet, mut(tcp4, func(b []byte) { binary.BigEndian.PutUint16(b[20:22], 8189) }), ReasonBadFragment},
		// The same with an IPv6 fragment header.
		{"ipv6_fragment_overflow", Ethernet, ip6Frame(44, fragHdr(17, 65528, false, 1), make([]byte, 8)), ReasonBadFragment},
		// 39 bytes of IPv6 header.
		{"short_ipv6_header", Ethernet, udp6[:14+39], ReasonTruncatedIPv6},
		// Payload length 108, one byte missing.
		{"short_ipv6_packet", Ethernet, udp6[:len(udp6)-1], ReasonTruncatedIPv6},
		// Nine destination options headers.
		{"nine_ext_headers", Ethernet, ip6Frame(60, optsHdr(60, 8), optsHdr(60, 8), optsHdr(60, 8),
			optsHdr(60, 8), optsHdr(60, 8), optsHdr(60, 8), optsHdr(60, 8), optsHdr(60, 8), optsHdr(59, 8)),
			ReasonTooManyExtHeaders},
		// Hop-by-hop header claiming 16 bytes with 8 in the payload.
		{"long_hbh", Ethernet, ip6Frame(0, mut(optsHdr(59, 8), func(b []byte) { b[1] = 1 })), ReasonTruncatedExtHeader},
		// Fewer than 8 bytes where a routing header should be.
		{"short_routing", Ethernet, ip6Frame(43, make([]byte, 4)), ReasonTruncatedExtHeader},
		// Hop-by-hop after a destination options header (RFC 8200 §4.1).
		{"hbh_not_first", Ethernet, ip6Frame(60, optsHdr(0, 8), optsHdr(59, 8)), ReasonBadExtHeader},
		// Two fragment headers.
		{"two_fragment_headers", Ethernet, ip6Frame(44, fragHdr(44, 0, true, 1), fragHdr(59, 0, true, 1)), ReasonBadExtHeader},
		// AH with payload length 0: 8 bytes, below its 12-byte fixed part.
		{"short_ah", Ethernet, ip6Frame(51, []byte{59, 0, 0, 0, 0, 0, 0, 0}), ReasonBadExtHeader},
		// IPv4 TCP with only 19 bytes of TCP header.
		{"short_tcp", Ethernet, mut(tcp4[:14+20+19], setTL(39)), ReasonTruncatedTCP},
		// TCP data offset 4 (16 bytes).
		{"tcp_data_offset_4", Ethernet, mut(tcp4, func(b []byte) { b[46] = 0x40 }), ReasonBadTCPDataOffset},
		// TCP data offset 15 (60 bytes) with 20 bytes of segment.
		{"tcp_data_offset_past_packet", Ethernet, ip6Frame(6, mut(tcpBytes(TCPAck, 20, 0), func(b []byte) { b[12] = 0xf0 })), ReasonBadTCPDataOffset},
		// Seven bytes of UDP header.
		{"short_udp", Ethernet, ip6Frame(17, udpBytes(8, 0)[:7]), ReasonTruncatedUDP},
		// UDP length 7; UDP length past the IP payload; IPv6 jumbogram length 0.
		{"udp_length_7", Ethernet, mut(udp4, func(b []byte) { b[38], b[39] = 0, 7 }), ReasonBadUDPLength},
		{"udp_length_past_ip", Ethernet, mut(udp4, func(b []byte) { b[38], b[39] = 0, 19 }), ReasonBadUDPLength},
		{"udp_jumbo_length", Ethernet, ip6Frame(17, udpBytes(0, 8)), ReasonBadUDPLength},
		// ICMP echo with four bytes; ICMPv6 with seven.
		{"short_icmp", Ethernet, mut(icmp4[:14+20+4], setTL(24)), ReasonTruncatedICMP},
		{"short_icmpv6", Ethernet, ip6Frame(58, []byte{128, 0, 0, 0, 0, 7, 0}), ReasonTruncatedICMP},
	}
}

func TestParseRejects(t *testing.T) {
	seen := map[Reason]bool{}
	for _, c := range rejectCases(t) {
		t.Run(c.name, func(t *testing.T) {
			var p Parsed
			err := Parse(c.pkt, c.link, &p)
			if err != c.want {
				t.Fatalf("Parse = %v, want %v", err, c.want)
			}
			seen[c.want] = true
		})
	}
	for r := ReasonNone + 1; r < NumReasons; r++ {
		if !seen[r] {
			t.Errorf("no rejection case for %v", r)
		}
	}
}

func TestReasonNames(t *testing.T) {
	snake := regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	names := map[string]Reason{}
	for r := range NumReasons {
		s := r.String()
		if !snake.MatchString(s) {
			t.Errorf("Reason(%d).String() = %q, not snake_case", r, s)
		}
		if o, dup := names[s]; dup {
			t.Errorf("Reasons %d and %d share the name %q", o, r, s)
		}
		names[s] = r
		if r.Error() != "parse packet: "+s {
			t.Errorf("Reason(%d).Error() = %q", r, r.Error())
		}
	}
	if got := NumReasons.String(); got != fmt.Sprintf("reason_%d", NumReasons) {
		t.Errorf("out of range String() = %q", got)
	}
	// A stats table indexed by reason.
	var counters [NumReasons]uint64
	counters[ReasonTruncatedL2]++
	wrapped := fmt.Errorf("rx: %w", ReasonBadUDPLength)
	if ReasonOf(wrapped) != ReasonBadUDPLength || !errors.Is(wrapped, ReasonBadUDPLength) {
		t.Errorf("ReasonOf(%v) = %v", wrapped, ReasonOf(wrapped))
	}
	if ReasonOf(nil) != ReasonNone || ReasonOf(errors.New("x")) != ReasonNone {
		t.Error("ReasonOf of a non-Reason error is not ReasonNone")
	}
}
