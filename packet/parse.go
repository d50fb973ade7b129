package packet

import (
	"encoding/binary"
	"net/netip"
)

// LinkType says what a frame starts with.
type LinkType uint8

// Link types. The zero LinkType is invalid, so a forgotten field is caught
// (as ReasonBadLinkType) rather than read as Ethernet.
const (
	Ethernet LinkType = 1 // Ethernet II header, at most one 802.1Q tag
	RawIP    LinkType = 2 // IP header first, as on a TUN device
)

// EtherType values Parse understands.
const (
	EtherTypeIPv4 uint16 = 0x0800
	EtherTypeARP  uint16 = 0x0806
	EtherTypeVLAN uint16 = 0x8100 // 802.1Q tag; only one is accepted
	EtherTypeIPv6 uint16 = 0x86DD
)

// IP protocol numbers with an L4 header Parse reads. Other protocols parse
// fine, with Proto set and no L4 fields.
const (
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoICMPv6 uint8 = 58
)

// Header sizes.
const (
	ethHdrLen  = 14 // destination MAC, source MAC, EtherType
	vlanTagLen = 4  // TPID (0x8100, read as the EtherType) and TCI
	ipv4MinLen = 20 // IHL 5, no options
	ipv6HdrLen = 40
	arpFixLen  = 8 // hardware and protocol types and sizes, opcode
	tcpMinLen  = 20
	udpHdrLen  = 8
	icmpHdrLen = 8 // type, code, checksum and 4 bytes of rest-of-header

	// maxIPLen is the largest packet the IP length fields can describe
	// (no jumbograms); a fragment may not reach past it.
	maxIPLen = 65535
)

// Parsed holds what [Parse] read from one packet: offsets into the buffer it
// was given and copies of header fields, never a reference to the buffer. It
// holds no pointers at all, so it is cheap to clear and to keep in arrays.
// Offsets are from the start of the buffer. Fields of layers Parse did not
// reach are zero. After Parse returns an error, the contents are unspecified.
type Parsed struct {
	// Link layer.
	L2Len     int    // bytes before the IP (or ARP) header: 0 for RawIP, 14, or 18 with a VLAN tag
	EtherType uint16 // after the VLAN tag; for RawIP, EtherTypeIPv4 or EtherTypeIPv6 from the version
	VLANTCI   uint16 // the 802.1Q tag's priority, DEI and VLAN ID, if HasVLAN
	HasVLAN   bool   // an 802.1Q tag was present
	ARP       bool   // an ARP packet: nothing past the ARP length check was read

	// Network layer.
	IPVersion  uint8    // 4 or 6; 0 for ARP
	Proto      uint8    // IPv4 protocol, or the IPv6 next header after the extension headers
	TOS        uint8    // IPv4 TOS or IPv6 traffic class: DSCP << 2 | ECN
	TTL        uint8    // IPv4 TTL or IPv6 hop limit
	IPOptions  bool     // IPv4 header has options (IHL > 5)
	DontFrag   bool     // IPv4 DF flag
	MoreFrags  bool     // IPv4 MF flag or IPv6 fragment header M flag
	FragHeader bool     // IPv6 fragment header present (possibly an atomic fragment)
	ExtHeaders uint8    // IPv6 extension headers walked
	FragOff    uint16   // fragment offset in bytes
	FlowLabel  uint32   // IPv6 flow label
	ID         uint32   // IPv4 identification, or IPv6 fragment header identification
	L3Off      int      // offset of the IP header (== L2Len)
	IPHdrLen   int      // IPv4 IHL*4, or 40 + the IPv6 extension headers walked
	IPLen      int      // packet length per the IP header; L3Off+IPLen <= len(b), anything after is padding
	src, dst   [16]byte // addresses, IPv4 v4-mapped as in Key: see Src and Dst

	// Transport layer. L4Off is the end of the IP headers even when HasL4 is
	// false (later fragments, other protocols); the other fields need HasL4,
	// but for the ports of a first fragment cut inside its TCP or UDP
	// header, which are set with HasL4 false.
	L4Off     int      // offset of the L4 header (or fragment data) = L3Off + IPHdrLen
	L4HdrLen  int      // TCP data offset * 4, 8 for UDP, ICMP and ICMPv6; 0 if !HasL4
	HasL4     bool     // a TCP, UDP, ICMP or ICMPv6 header was parsed
	SrcPort   uint16   // TCP/UDP source port; the echo identifier for ICMP echo
	DstPort   uint16   // TCP/UDP destination port; the echo identifier for ICMP echo
	Seq, Ack  uint32   // TCP sequence and acknowledgement numbers
	Flags     TCPFlags // TCP flags (the NS bit is not kept)
	Window    uint16   // TCP window, unscaled
	TCPOptLen int      // bytes of TCP options: L4HdrLen - 20
	UDPLen    int      // UDP length field
	ICMPType  uint8
	ICMPCode  uint8

	// Payload past the last header parsed, within the IP length (and the UDP
	// length for unfragmented UDP): PayloadOff+PayloadLen <= L3Off+IPLen.
	// For a later fragment that is all the fragment's data.
	PayloadOff int
	PayloadLen int
}

// Src returns the IP source address; the zero Addr if p is not IP.
func (p *Parsed) Src() netip.Addr { return p.addr(&p.src) }

// Dst returns the IP destination address; the zero Addr if p is not IP.
func (p *Parsed) Dst() netip.Addr { return p.addr(&p.dst) }

func (p *Parsed) addr(a *[16]byte) netip.Addr {
	switch p.IPVersion {
	case 4:
		return netip.AddrFrom4([4]byte(a[12:16]))
	case 6:
		return netip.AddrFrom16(*a)
	}
	return netip.Addr{}
}

// IsFragment reports whether the packet is part of a fragmented datagram
// (an atomic IPv6 fragment, offset 0 without M, is a whole datagram).
func (p *Parsed) IsFragment() bool { return p.MoreFrags || p.FragOff != 0 }

// IsFirstFragment reports whether the packet is the first fragment of a
// fragmented datagram: it carries the L4 header, but not all of the payload.
func (p *Parsed) IsFirstFragment() bool { return p.MoreFrags && p.FragOff == 0 }

// DSCP returns the Differentiated Services codepoint, the top six bits of TOS.
func (p *Parsed) DSCP() uint8 { return p.TOS >> 2 }

// ECN returns the ECN field, the low two bits of TOS (3 is CE).
func (p *Parsed) ECN() uint8 { return p.TOS & 3 }

// IsLaterFragment reports whether the packet is a fragment other than the
// first: it carries no L4 header, so HasL4 is false and it has no ports.
func (p *Parsed) IsLaterFragment() bool { return p.FragOff != 0 }

// Parse parses the headers of the frame b, whose link layer is l2, into p.
// It never panics, never allocates and does not keep b. A rejection is
// returned as a [Reason]. Checksums are not verified (see the package doc).
//
// An IP packet with an L4 protocol other than TCP, UDP, ICMP (over IPv4) or
// ICMPv6 (over IPv6) is accepted with Proto set and HasL4 false, and so is
// ARP (with ARP set); any other EtherType is rejected.
func Parse(b []byte, l2 LinkType, p *Parsed) error {
	*p = Parsed{}
	switch l2 {
	case Ethernet:
		if len(b) < ethHdrLen {
			return ReasonTruncatedL2
		}
		off := ethHdrLen
		et := binary.BigEndian.Uint16(b[12:14])
		if et == EtherTypeVLAN {
			if len(b) < ethHdrLen+vlanTagLen {
				return ReasonTruncatedL2
			}
			p.HasVLAN = true
			p.VLANTCI = binary.BigEndian.Uint16(b[14:16])
			et = binary.BigEndian.Uint16(b[16:18])
			off += vlanTagLen
		}
		p.L2Len = off
		p.EtherType = et
		switch et {
		case EtherTypeIPv4:
			return parseIPv4(b, off, p)
		case EtherTypeIPv6:
			return parseIPv6(b, off, p)
		case EtherTypeARP:
			p.ARP = true
			return checkARP(b[off:])
		}
		return ReasonUnsupportedEtherType
	case RawIP:
		if len(b) < 1 {
			return ReasonTruncatedIP
		}
		switch b[0] >> 4 {
		case 4:
			p.EtherType = EtherTypeIPv4
			return parseIPv4(b, 0, p)
		case 6:
			p.EtherType = EtherTypeIPv6
			return parseIPv6(b, 0, p)
		}
		return ReasonBadIPVersion
	}
	return ReasonBadLinkType
}

// checkARP checks that the ARP header and the four addresses it announces fit
// in a; the nexus reads the rest.
func checkARP(a []byte) error {
	if len(a) < arpFixLen {
		return ReasonTruncatedARP
	}
	hlen, plen := int(a[4]), int(a[5])
	if len(a) < arpFixLen+2*(hlen+plen) {
		return ReasonTruncatedARP
	}
	return nil
}

// parseIPv4 parses the IPv4 header at b[off:] and what follows it.
func parseIPv4(b []byte, off int, p *Parsed) error {
	h := b[off:]
	if len(h) < ipv4MinLen {
		return ReasonTruncatedIPv4
	}
	if h[0]>>4 != 4 {
		return ReasonBadIPVersion
	}
	hl := int(h[0]&0x0f) * 4
	if hl < ipv4MinLen {
		return ReasonBadIPv4IHL
	}
	tl := int(binary.BigEndian.Uint16(h[2:4]))
	if tl < hl {
		return ReasonBadIPv4TotalLength
	}
	if tl > len(h) {
		return ReasonTruncatedIPv4
	}
	h = h[:tl]
	frag := binary.BigEndian.Uint16(h[6:8])
	p.IPVersion = 4
	p.TOS = h[1]
	p.ID = uint32(binary.BigEndian.Uint16(h[4:6]))
	// Flags and fragment offset (RFC 791 §3.1): a reserved bit, DF, MF, then
	// 13 bits of offset in units of 8 bytes.
	p.DontFrag = frag&0x4000 != 0
	p.MoreFrags = frag&0x2000 != 0
	p.FragOff = (frag & 0x1fff) << 3
	p.TTL = h[8]
	p.Proto = h[9]
	p.src[10], p.src[11] = 0xff, 0xff // v4-mapped
	p.dst[10], p.dst[11] = 0xff, 0xff
	copy(p.src[12:], h[12:16])
	copy(p.dst[12:], h[16:20])
	p.IPOptions = hl > ipv4MinLen
	p.L3Off = off
	p.IPHdrLen = hl
	p.IPLen = tl
	p.L4Off = off + hl
	p.PayloadOff = off + hl
	p.PayloadLen = tl - hl
	if int(p.FragOff)+tl > maxIPLen {
		return ReasonBadFragment
	}
	if p.FragOff != 0 {
		return nil // later fragment: no L4 header
	}
	return parseL4(h[hl:], p)
}
