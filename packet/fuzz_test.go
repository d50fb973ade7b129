package packet

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// FuzzParse checks that Parse never panics, that what it accepts satisfies
// the invariants of Parsed and the keys, and that gopacket's decoder agrees
// with it on the same bytes.
func FuzzParse(f *testing.F) {
	for _, c := range acceptCases(f) {
		f.Add(c.pkt, uint8(c.link))
	}
	for _, c := range rejectCases(f) {
		f.Add(c.pkt, uint8(c.link))
	}
	// A jumbo payload option with a non-zero payload length: Parse skips
	// options, gopacket rejects it.
	f.Add(ip6Frame(0, []byte{59, 0, 0xc2, 4, 0, 1, 0, 0}), uint8(Ethernet))
	f.Fuzz(func(t *testing.T, b []byte, link uint8) {
		var p Parsed
		l2 := LinkType(link%2 + 1) // Ethernet or RawIP; the zero LinkType is tested apart
		err := Parse(b, l2, &p)
		if err != nil {
			r, ok := err.(Reason)
			if !ok || r == ReasonNone || r >= NumReasons {
				t.Fatalf("Parse returned %#v, not a named Reason", err)
			}
			return
		}
		checkInvariants(t, b, &p)
		crossCheck(t, b, l2, &p)
		if p.IsICMPError() {
			var k Key
			if p.QuotedKey(b, &k) && (k.Local != p.dst || k.Version != p.IPVersion) {
				t.Fatalf("QuotedKey %v of an error to %v", k, p.Dst())
			}
		}
	})
}

// checkInvariants checks what every accepted packet must satisfy.
func checkInvariants(t testing.TB, b []byte, p *Parsed) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%x: "+format+"\n%+v", append([]any{b}, append(args, *p)...)...)
	}
	if p.L2Len != 0 && p.L2Len != 14 && p.L2Len != 18 || p.L2Len > len(b) {
		fail("L2Len %d", p.L2Len)
	}
	if p.HasVLAN != (p.L2Len == 18) {
		fail("HasVLAN %v with L2Len %d", p.HasVLAN, p.L2Len)
	}
	if p.ARP {
		if p.EtherType != EtherTypeARP || p.IPVersion != 0 || p.IPLen != 0 {
			fail("ARP with IP fields")
		}
		return
	}
	if p.IPVersion != 4 && p.IPVersion != 6 {
		fail("IPVersion %d", p.IPVersion)
	}
	if p.Src().Is4() != (p.IPVersion == 4) || p.Dst().Is4() != (p.IPVersion == 4) || !p.Src().IsValid() || !p.Dst().IsValid() {
		fail("addresses %v %v for version %d", p.Src(), p.Dst(), p.IPVersion)
	}
	minHdr := ipv4MinLen
	if p.IPVersion == 6 {
		minHdr = ipv6HdrLen
	}
	end := p.L3Off + p.IPLen
	switch {
	case p.L3Off != p.L2Len:
		fail("L3Off %d != L2Len %d", p.L3Off, p.L2Len)
	case end > len(b):
		fail("IP packet ends at %d past the buffer %d", end, len(b))
	case p.IPHdrLen < minHdr || p.IPHdrLen > p.IPLen:
		fail("IPHdrLen %d", p.IPHdrLen)
	case p.L4Off != p.L3Off+p.IPHdrLen:
		fail("L4Off %d", p.L4Off)
	case p.PayloadLen < 0 || p.PayloadOff < p.L4Off || p.PayloadOff+p.PayloadLen > end:
		fail("payload %d+%d outside the IP packet", p.PayloadOff, p.PayloadLen)
	case p.IPVersion == 4 && (p.ExtHeaders != 0 || p.FragHeader || p.FlowLabel != 0):
		fail("IPv6 fields in IPv4")
	case p.IPVersion == 6 && (p.IPOptions || p.DontFrag):
		fail("IPv4 fields in IPv6")
	case p.ExtHeaders > MaxExtHeaders:
		fail("ExtHeaders %d", p.ExtHeaders)
	case p.FragOff%8 != 0 || (p.IPVersion == 6 && p.IsFragment() && !p.FragHeader):
		fail("fragment fields")
	case p.IPVersion == 4 && int(p.FragOff)+p.IPLen > maxIPLen:
		fail("fragment past 65535")
	case p.IsLaterFragment() && p.HasL4:
		fail("later fragment with an L4 header")
	}
	if p.HasL4 {
		if p.L4HdrLen < 8 || p.PayloadOff != p.L4Off+p.L4HdrLen {
			fail("L4 header %d", p.L4HdrLen)
		}
		switch p.Proto {
		case ProtoTCP:
			if p.TCPOptLen != p.L4HdrLen-20 || len(p.TCPOptions(b)) != p.TCPOptLen {
				fail("TCP options %d", p.TCPOptLen)
			}
		case ProtoUDP:
			if p.UDPLen < 8 || !p.MoreFrags && p.PayloadLen != p.UDPLen-8 {
				fail("UDP length %d", p.UDPLen)
			}
		case ProtoICMP, ProtoICMPv6:
			if p.SrcPort != p.DstPort || p.SrcPort != 0 && !p.isEcho() {
				fail("ICMP ports")
			}
		default:
			fail("HasL4 for protocol %d", p.Proto)
		}
	} else if p.PayloadOff != p.L4Off || p.SrcPort != 0 || p.DstPort != 0 || p.Flags != 0 || p.L4HdrLen != 0 {
		fail("L4 fields without an L4 header")
	}
	rx, tx := p.RxKey(), p.TxKey()
	if rx.Reverse() != tx || rx.Version != p.IPVersion || rx.Proto != p.Proto {
		fail("RxKey %v and TxKey %v disagree", rx, tx)
	}
}

// crossCheck decodes b with gopacket and compares what both saw. Intentional
// differences, each skipped where it shows:
//
//   - gopacket validates IPv4 options, IPv6 option TLVs (including the
//     jumbo payload option) and TCP options; Parse skips over them. When
//     gopacket fails on them, the layers after are not compared.
//   - Parse reads ICMP only over IPv4 and ICMPv6 only over IPv6, and does not
//     walk AH over IPv4; gopacket decodes all three. Those packets have no L4
//     fields here.
//   - Parse reports the first fragment's L4 header; gopacket stops at the
//     fragment header, so fragments are compared up to the IP header only.
//     That includes IPv6 atomic fragments (offset 0, M clear), which Parse
//     reads through as whole datagrams (RFC 6946) and gopacket's NewPacket
//     does not.
func crossCheck(t *testing.T, b []byte, l2 LinkType, p *Parsed) {
	t.Helper()
	first := layers.LayerTypeEthernet
	if l2 == RawIP {
		first = layers.LayerTypeIPv4
		if p.IPVersion == 6 {
			first = layers.LayerTypeIPv6
		}
	}
	pkt := gopacket.NewPacket(b, first, gopacket.DecodeOptions{NoCopy: true})
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%x: gopacket disagrees: "+format+"\nours: %+v\ngopacket: %v", append([]any{b}, append(args, *p, pkt)...)...)
	}
	var decodeErr string
	if e := pkt.ErrorLayer(); e != nil {
		decodeErr = e.Error().Error()
	}
	if p.ARP {
		if pkt.Layer(layers.LayerTypeARP) == nil && !strings.Contains(decodeErr, "ARP") {
			fail("no ARP layer")
		}
		return
	}
	ls := pkt.Layers()
	i := 0
	for i < len(ls) && ls[i].LayerType() != layers.LayerTypeIPv4 && ls[i].LayerType() != layers.LayerTypeIPv6 {
		i++
	}
	if i == len(ls) {
		fail("no IP layer")
	}
	var nh uint8 // next header according to gopacket, walked like Parse does
	switch ip := ls[i].(type) {
	case *layers.IPv4:
		if p.IPOptions && strings.Contains(decodeErr, "option") {
			return // gopacket rejected the options and left the header unread
		}
		if !addrEqual(ip.SrcIP, p.Src()) || !addrEqual(ip.DstIP, p.Dst()) || uint8(ip.Protocol) != p.Proto ||
			ip.TTL != p.TTL || ip.TOS != p.TOS || uint32(ip.Id) != p.ID || ip.FragOffset*8 != p.FragOff ||
			int(ip.Length) != p.IPLen || int(ip.IHL)*4 != p.IPHdrLen ||
			ip.Flags&layers.IPv4DontFragment != 0 != p.DontFrag || ip.Flags&layers.IPv4MoreFragments != 0 != p.MoreFrags {
			fail("IPv4 header")
		}
		nh = uint8(ip.Protocol)
		i++
	case *layers.IPv6:
		if !addrEqual(ip.SrcIP, p.Src()) || !addrEqual(ip.DstIP, p.Dst()) || ip.HopLimit != p.TTL ||
			ip.TrafficClass != p.TOS || ip.FlowLabel != p.FlowLabel || int(ip.Length)+40 != p.IPLen {
			fail("IPv6 header")
		}
		nh = uint8(ip.NextHeader)
		i++
		exts := 0
	walk:
		for ; i < len(ls); i++ {
			switch e := ls[i].(type) {
			case *layers.IPv6HopByHop:
				nh = uint8(e.NextHeader)
			case *layers.IPv6Destination:
				nh = uint8(e.NextHeader)
			case *layers.IPv6Routing:
				nh = uint8(e.NextHeader)
			case *layers.IPv6Fragment:
				nh = uint8(e.NextHeader)
			case *layers.IPSecAH:
				nh = uint8(e.NextHeader)
			default:
				break walk
			}
			exts++
		}
		for _, e := range gopacketIPv6OptionErrors {
			if strings.Contains(decodeErr, e) {
				return // gopacket rejected an option TLV or a jumbogram length
			}
		}
		if p.FragHeader {
			// gopacket stops at the fragment header; Parse reads on
			// unless it is a later fragment.
			if _, ok := ls[i-1].(*layers.IPv6Fragment); !ok {
				fail("no fragment header")
			}
			if !p.IsLaterFragment() {
				return
			}
		}
		if exts != int(p.ExtHeaders) || nh != p.Proto {
			fail("extension headers: %d ending in %d", exts, nh)
		}
	}
	if p.IsFragment() || p.FragHeader {
		return
	}
	var l gopacket.Layer
	if i < len(ls) {
		l = ls[i]
	}
	switch l := l.(type) {
	case *layers.TCP:
		f := TCPFlags(l.Contents[13])
		if !p.HasL4 || p.Proto != ProtoTCP || uint16(l.SrcPort) != p.SrcPort || uint16(l.DstPort) != p.DstPort ||
			l.Seq != p.Seq || l.Ack != p.Ack || f != p.Flags || l.Window != p.Window ||
			int(l.DataOffset)*4 != p.L4HdrLen || len(l.Payload) != p.PayloadLen {
			fail("TCP header")
		}
	case *layers.UDP:
		if !p.HasL4 || p.Proto != ProtoUDP || uint16(l.SrcPort) != p.SrcPort || uint16(l.DstPort) != p.DstPort ||
			int(l.Length) != p.UDPLen || len(l.Payload) != p.PayloadLen {
			fail("UDP header")
		}
	case *layers.ICMPv4:
		if p.IPVersion == 6 {
			return // ICMP over IPv6: not parsed here
		}
		if !p.HasL4 || l.TypeCode.Type() != p.ICMPType || l.TypeCode.Code() != p.ICMPCode ||
			p.isEcho() && l.Id != p.SrcPort {
			fail("ICMP header")
		}
	case *layers.ICMPv6:
		if p.IPVersion == 4 {
			return // ICMPv6 over IPv4: not parsed here
		}
		if !p.HasL4 || l.TypeCode.Type() != p.ICMPType || l.TypeCode.Code() != p.ICMPCode {
			fail("ICMPv6 header")
		}
		if p.isEcho() {
			e, ok := pkt.Layer(layers.LayerTypeICMPv6Echo).(*layers.ICMPv6Echo)
			if !ok || e.Identifier != p.SrcPort {
				fail("ICMPv6 echo identifier")
			}
		}
	default:
		if p.HasL4 {
			fail("no L4 layer after the IP headers (%v)", decodeErr)
		}
	}
}

// gopacketIPv6OptionErrors are the parts of gopacket's errors for option
// TLVs in IPv6 extension headers and for jumbograms (RFC 2675), which Parse
// does not look into: a zero payload length is just a short packet here.
var gopacketIPv6OptionErrors = []string{
	"IPv6 header option", "IPv6 header TLV option", "umbo", "IPv6 length 0",
}

func addrEqual(ip net.IP, a netip.Addr) bool {
	b, ok := netip.AddrFromSlice(ip)
	return ok && b == a
}

// FuzzKey checks that a received packet's RxKey is the TxKey of the reply,
// built by swapping the packet's addresses and ports, and that the masks and
// MakeKey agree with the keys from packets.
func FuzzKey(f *testing.F) {
	f.Add([]byte{198, 18, 0, 1}, []byte{198, 18, 0, 2}, uint16(40000), uint16(80), uint8(ProtoTCP))
	f.Add([]byte(remote6), []byte(local6), uint16(40000), uint16(53), uint8(ProtoUDP))
	f.Add([]byte(remote6), []byte(local6), uint16(7), uint16(7), uint8(ProtoICMPv6))
	f.Add([]byte{0, 0, 0, 0}, []byte{198, 18, 0, 2}, uint16(68), uint16(67), uint8(ProtoUDP))
	f.Fuzz(func(t *testing.T, remote, local []byte, rport, lport uint16, proto uint8) {
		ra, ok1 := netip.AddrFromSlice(remote)
		la, ok2 := netip.AddrFromSlice(local)
		// MakeKey unmaps v4-mapped addresses (an IPv6 packet never gets
		// there), so build IPv4 packets for them.
		ra, la = ra.Unmap(), la.Unmap()
		if !ok1 || !ok2 || ra.Is4() != la.Is4() {
			return
		}
		switch {
		case la.Is6() && (proto == nhHopByHop || proto == nhRouting || proto == nhFragment ||
			proto == nhAH || proto == nhDestOpts):
			return // an extension header, not a protocol
		case proto == ProtoTCP || proto == ProtoUDP:
		case proto == ProtoICMP && la.Is4() || proto == ProtoICMPv6 && la.Is6():
			rport = lport // an echo identifier, the same both ways
		default:
			lport, rport = 0, 0 // no ports
		}
		in := keyPacket(t, ra, la, rport, lport, proto)
		out := keyPacket(t, la, ra, lport, rport, proto)
		var pin, pout Parsed
		if err := Parse(in, RawIP, &pin); err != nil {
			t.Fatalf("parse received: %v", err)
		}
		if err := Parse(out, RawIP, &pout); err != nil {
			t.Fatalf("parse reply: %v", err)
		}
		rx, tx := pin.RxKey(), pout.TxKey()
		if rx != tx || rx.Hash() != tx.Hash() {
			t.Fatalf("RxKey %v != TxKey of the reply %v", rx, tx)
		}
		mk := MakeKey(proto, netip.AddrPortFrom(la, lport), netip.AddrPortFrom(ra, rport))
		if rx != mk {
			t.Fatalf("RxKey %v != MakeKey %v", rx, mk)
		}
		if got := MakeKey(proto, netip.AddrPortFrom(la, lport), netip.AddrPort{}); got != rx.Listener3() {
			t.Fatalf("MakeKey listener %v != Listener3 %v", got, rx.Listener3())
		}
		if l2 := rx.Listener3().Listener2(); l2 != rx.Listener2() || l2.Local != [16]byte{} || l2.LocalPort != rx.LocalPort {
			t.Fatalf("Listener2 %v", l2)
		}
		if rx.LocalAddrPort() != netip.AddrPortFrom(la, lport) {
			t.Fatalf("LocalAddrPort %v, want %v", rx.LocalAddrPort(), netip.AddrPortFrom(la, lport))
		}
	})
}

// keyPacket builds a raw IP packet from src to dst with an L4 header for
// proto carrying the ports (an ICMP echo request carries dport as its
// identifier); other protocols get 4 bytes of payload.
func keyPacket(tb testing.TB, src, dst netip.Addr, sport, dport uint16, proto uint8) []byte {
	var nl gopacket.SerializableLayer
	var netl gopacket.NetworkLayer
	if src.Is4() {
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocol(proto),
			SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		nl, netl = ip, ip
	} else {
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocol(proto),
			SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		nl, netl = ip, ip
	}
	switch {
	case proto == ProtoTCP:
		t := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), ACK: true}
		_ = t.SetNetworkLayerForChecksum(netl)
		return serialize(tb, nl, t)
	case proto == ProtoUDP:
		u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
		_ = u.SetNetworkLayerForChecksum(netl)
		return serialize(tb, nl, u)
	case proto == ProtoICMP && src.Is4():
		return serialize(tb, nl, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: dport})
	case proto == ProtoICMPv6 && src.Is6():
		return serialize(tb, nl, gopacket.Payload{128, 0, 0, 0, byte(dport >> 8), byte(dport), 0, 1})
	}
	return serialize(tb, nl, gopacket.Payload{1, 2, 3, 4})
}
