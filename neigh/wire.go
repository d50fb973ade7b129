package neigh

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// MAC is an Ethernet address.
type MAC [6]byte

// String returns m as six colon-separated hex bytes.
func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// Broadcast is the Ethernet broadcast address ARP requests go to.
var Broadcast = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// Frame layout constants.
const (
	ethHdrLen     = 14
	etherTypeARP  = 0x0806
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	arpLen        = 28 // Ethernet/IPv4 ARP: 8 fixed bytes, 2 × (6 + 4) addresses
	ipv6HdrLen    = 40
	protoICMPv6   = 58
	ndpMinLen     = 24 // ICMPv6 type, code, checksum, 4 bytes of flags/reserved, target
	ndpOptLLLen   = 8  // a link-layer address option for Ethernet: type, length 1 (8 bytes), MAC
	ndpHopLimit   = 255

	// ARPFrameLen is the length of the ARP frames PutARP writes: an
	// Ethernet header and an Ethernet/IPv4 ARP packet. (A NIC pads it to
	// the 60-byte minimum; veth and TUN need no padding.)
	ARPFrameLen = ethHdrLen + arpLen
	// NDPFrameLen is the length of the NS and NA frames PutNS and PutNA
	// write: Ethernet, IPv6, the 24-byte message and one link-layer
	// address option.
	NDPFrameLen = ethHdrLen + ipv6HdrLen + ndpMinLen + ndpOptLLLen
)

// ARP operations (RFC 826).
const (
	ARPRequest = 1
	ARPReply   = 2
)

// ICMPv6 neighbour discovery message types (RFC 4861 §4.3, §4.4) and
// neighbour advertisement flags.
const (
	TypeNS = 135
	TypeNA = 136

	FlagRouter    = 0x80
	FlagSolicited = 0x40
	FlagOverride  = 0x20

	optSourceLL = 1
	optTargetLL = 2
)

// Reasons a frame is refused. Each is its own error so a caller can count
// them apart.
var (
	ErrTruncated   = errors.New("neigh: frame truncated")
	ErrNotARP      = errors.New("neigh: not an Ethernet/IPv4 ARP packet")
	ErrNotNDP      = errors.New("neigh: not an ICMPv6 neighbour solicitation or advertisement")
	ErrHopLimit    = errors.New("neigh: NDP hop limit is not 255 (the message crossed a router)")
	ErrChecksum    = errors.New("neigh: bad ICMPv6 checksum")
	ErrBadOption   = errors.New("neigh: malformed NDP option")
	ErrBadTarget   = errors.New("neigh: NDP target is multicast")
	ErrBufTooSmall = errors.New("neigh: buffer too small for the frame")
	ErrBadAddr     = errors.New("neigh: address of the wrong family")
)

// ARP is an Ethernet/IPv4 ARP packet, with the Ethernet addresses of the
// frame that carried it.
type ARP struct {
	EthDst, EthSrc MAC
	Op             uint16
	SenderMAC      MAC
	SenderIP       netip.Addr // IPv4
	TargetMAC      MAC
	TargetIP       netip.Addr // IPv4
}

// ParseARP reads an untagged Ethernet frame carrying an Ethernet/IPv4 ARP
// packet into a. It never allocates and never reads past frame.
func ParseARP(frame []byte, a *ARP) error {
	if len(frame) < ethHdrLen {
		return ErrTruncated
	}
	if binary.BigEndian.Uint16(frame[12:]) != etherTypeARP {
		return ErrNotARP
	}
	p := frame[ethHdrLen:]
	if len(p) < arpLen {
		return ErrTruncated
	}
	// Hardware type Ethernet (1), protocol IPv4, address sizes 6 and 4:
	// nothing else is resolved on these links.
	if binary.BigEndian.Uint16(p[0:]) != 1 || binary.BigEndian.Uint16(p[2:]) != etherTypeIPv4 || p[4] != 6 || p[5] != 4 {
		return ErrNotARP
	}
	a.EthDst = MAC(frame[0:6])
	a.EthSrc = MAC(frame[6:12])
	a.Op = binary.BigEndian.Uint16(p[6:])
	a.SenderMAC = MAC(p[8:14])
	a.SenderIP = netip.AddrFrom4([4]byte(p[14:18]))
	a.TargetMAC = MAC(p[18:24])
	a.TargetIP = netip.AddrFrom4([4]byte(p[24:28]))
	return nil
}

// PutARP writes a's frame into b (EthDst, EthSrc, Op and the four
// addresses) and returns ARPFrameLen. It never allocates.
func PutARP(b []byte, a *ARP) (int, error) {
	if len(b) < ARPFrameLen {
		return 0, ErrBufTooSmall
	}
	if !a.SenderIP.Is4() || !a.TargetIP.Is4() {
		return 0, ErrBadAddr
	}
	copy(b[0:6], a.EthDst[:])
	copy(b[6:12], a.EthSrc[:])
	binary.BigEndian.PutUint16(b[12:], etherTypeARP)
	p := b[ethHdrLen:ARPFrameLen]
	binary.BigEndian.PutUint16(p[0:], 1)
	binary.BigEndian.PutUint16(p[2:], etherTypeIPv4)
	p[4], p[5] = 6, 4
	binary.BigEndian.PutUint16(p[6:], a.Op)
	copy(p[8:14], a.SenderMAC[:])
	s4, t4 := a.SenderIP.As4(), a.TargetIP.As4()
	copy(p[14:18], s4[:])
	copy(p[18:24], a.TargetMAC[:])
	copy(p[24:28], t4[:])
	return ARPFrameLen, nil
}

// NDP is an ICMPv6 neighbour solicitation or advertisement with the
// addresses of the IPv6 header and Ethernet frame that carried it.
type NDP struct {
	EthDst, EthSrc MAC
	Src, Dst       netip.Addr // IPv6 header
	Type           uint8      // TypeNS or TypeNA
	Flags          uint8      // NA: FlagRouter, FlagSolicited, FlagOverride
	Target         netip.Addr
	// LL is the source (NS) or target (NA) link-layer address option, if
	// HasLL.
	LL    MAC
	HasLL bool
}

// ParseNDP reads an untagged Ethernet frame carrying an IPv6 neighbour
// solicitation or advertisement into m, with the checks of RFC 4861 §7.1.1
// and §7.1.2: hop limit 255, valid checksum, code 0, at least 24 bytes,
// target not multicast, every option of non-zero length inside the
// message, and no source link-layer option when the source is
// unspecified. It never allocates and never reads past frame.
func ParseNDP(frame []byte, m *NDP) error {
	if len(frame) < ethHdrLen {
		return ErrTruncated
	}
	if binary.BigEndian.Uint16(frame[12:]) != etherTypeIPv6 {
		return ErrNotNDP
	}
	ip := frame[ethHdrLen:]
	if len(ip) < ipv6HdrLen {
		return ErrTruncated
	}
	if ip[0]>>4 != 6 || ip[6] != protoICMPv6 {
		return ErrNotNDP // extension headers before NDP are not accepted
	}
	plen := int(binary.BigEndian.Uint16(ip[4:]))
	if ipv6HdrLen+plen > len(ip) {
		return ErrTruncated
	}
	icmp := ip[ipv6HdrLen : ipv6HdrLen+plen]
	if len(icmp) < ndpMinLen {
		if len(icmp) >= 1 && (icmp[0] == TypeNS || icmp[0] == TypeNA) {
			return ErrTruncated
		}
		return ErrNotNDP
	}
	if (icmp[0] != TypeNS && icmp[0] != TypeNA) || icmp[1] != 0 {
		return ErrNotNDP
	}
	if ip[7] != ndpHopLimit {
		return ErrHopLimit
	}
	src := netip.AddrFrom16([16]byte(ip[8:24]))
	dst := netip.AddrFrom16([16]byte(ip[24:40]))
	if ^checksum.Checksum(icmp, pseudo6(src, dst, len(icmp))) != 0 {
		return ErrChecksum
	}
	*m = NDP{
		EthDst: MAC(frame[0:6]), EthSrc: MAC(frame[6:12]),
		Src: src, Dst: dst, Type: icmp[0],
		Target: netip.AddrFrom16([16]byte(icmp[8:24])),
	}
	if m.Type == TypeNA {
		m.Flags = icmp[4] & (FlagRouter | FlagSolicited | FlagOverride)
	}
	if m.Target.IsMulticast() {
		return ErrBadTarget
	}
	want := uint8(optSourceLL)
	if m.Type == TypeNA {
		want = optTargetLL
	}
	for opts := icmp[ndpMinLen:]; len(opts) > 0; {
		if len(opts) < 2 || opts[1] == 0 || int(opts[1])*8 > len(opts) {
			return ErrBadOption
		}
		n := int(opts[1]) * 8
		if opts[0] == want && n == ndpOptLLLen {
			m.LL, m.HasLL = MAC(opts[2:8]), true
		}
		opts = opts[n:]
	}
	if m.Type == TypeNS && !src.IsValid() || m.Type == TypeNS && src.IsUnspecified() && m.HasLL {
		return ErrBadOption
	}
	return nil
}

// pseudo6 is the folded sum of the IPv6 pseudo header for ICMPv6.
func pseudo6(src, dst netip.Addr, length int) uint16 {
	s16, d16 := src.As16(), dst.As16()
	s := checksum.Checksum(s16[:], 0)
	s = checksum.Checksum(d16[:], s)
	s = checksum.Combine(s, uint16(length>>16))
	s = checksum.Combine(s, uint16(length))
	return checksum.Combine(s, protoICMPv6)
}

// PutNDP writes m as a frame into b: Ethernet (EthDst, EthSrc), IPv6 (Src,
// Dst, hop limit 255), the NS or NA message with Flags and Target, and the
// link-layer option with LL if HasLL, with its checksum. It returns the
// frame's length (NDPFrameLen with the option, 8 bytes less without). It
// never allocates.
func PutNDP(b []byte, m *NDP) (int, error) {
	n := ethHdrLen + ipv6HdrLen + ndpMinLen
	if m.HasLL {
		n += ndpOptLLLen
	}
	if len(b) < n {
		return 0, ErrBufTooSmall
	}
	if !m.Src.Is6() || !m.Dst.Is6() || !m.Target.Is6() || m.Src.Is4In6() {
		return 0, ErrBadAddr
	}
	if m.Type != TypeNS && m.Type != TypeNA {
		return 0, ErrNotNDP
	}
	copy(b[0:6], m.EthDst[:])
	copy(b[6:12], m.EthSrc[:])
	binary.BigEndian.PutUint16(b[12:], etherTypeIPv6)
	ip := b[ethHdrLen:n]
	plen := n - ethHdrLen - ipv6HdrLen
	binary.BigEndian.PutUint32(ip[0:], 6<<28)
	binary.BigEndian.PutUint16(ip[4:], uint16(plen))
	ip[6], ip[7] = protoICMPv6, ndpHopLimit
	s, d, tg := m.Src.As16(), m.Dst.As16(), m.Target.As16()
	copy(ip[8:24], s[:])
	copy(ip[24:40], d[:])
	icmp := ip[ipv6HdrLen:]
	icmp[0], icmp[1], icmp[2], icmp[3] = m.Type, 0, 0, 0
	binary.BigEndian.PutUint32(icmp[4:], 0)
	if m.Type == TypeNA {
		icmp[4] = m.Flags & (FlagRouter | FlagSolicited | FlagOverride)
	}
	copy(icmp[8:24], tg[:])
	if m.HasLL {
		icmp[24] = optSourceLL
		if m.Type == TypeNA {
			icmp[24] = optTargetLL
		}
		icmp[25] = 1
		copy(icmp[26:32], m.LL[:])
	}
	binary.BigEndian.PutUint16(icmp[2:], ^checksum.Checksum(icmp, pseudo6(m.Src, m.Dst, plen)))
	return n, nil
}

// SolicitedNode returns the solicited-node multicast address of ip
// (ff02::1:ffXX:XXXX, RFC 4291 §2.7.1) and its Ethernet group address
// (33:33 and the low 32 bits, RFC 2464 §7).
func SolicitedNode(ip netip.Addr) (netip.Addr, MAC) {
	a := ip.As16()
	m := [16]byte{0: 0xff, 1: 0x02, 11: 0x01, 12: 0xff, 13: a[13], 14: a[14], 15: a[15]}
	return netip.AddrFrom16(m), MulticastMAC(netip.AddrFrom16(m))
}

// MulticastMAC is the Ethernet group address of an IPv6 multicast address.
func MulticastMAC(ip netip.Addr) MAC {
	a := ip.As16()
	return MAC{0x33, 0x33, a[12], a[13], a[14], a[15]}
}

// allNodes is ff02::1, where an NA answering a DAD probe goes.
var allNodes = netip.AddrFrom16([16]byte{0: 0xff, 1: 0x02, 15: 0x01})
