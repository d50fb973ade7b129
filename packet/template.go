package packet

import "encoding/binary"

// Template remembers the headers of one raw IP packet that [Parse] accepted
// as unfragmented TCP or UDP with no IPv4 options and no IPv6 extension
// headers, so that the next packets of the same flow can be recognised with
// a bounded header read instead of a full parse: three to six masked word
// compares and the length fields Parse checks.
//
// Contract, checked by FuzzTemplate: if Match(b) reports ok, then
// Parse(b[:ipLen], RawIP, p) succeeds with p.IPLen == ipLen, no IPv4
// options, p.Flags == flags, and p.TxKey() and p.RxKey() equal those of the
// template's packet. Match may refuse packets Parse would accept (the
// caller then parses them); it never accepts one Parse would refuse or key
// differently.
//
// The zero Template matches nothing.
type Template struct {
	nw    int       // words compared; 0 when the template is unset
	mask  [6]uint64 // which bits of each little-endian header word must match
	want  [6]uint64 // their values
	v6    bool
	proto uint8
	hdr   int // IP header length: 20 or 40
	min   int // shortest packet the template can match: IP and minimal L4 header
}

// Word masks: bit 8k covers byte k of a little-endian word.
const (
	// IPv4 bytes 0..7: version and IHL must be 0x45 (no options); MF and the
	// fragment offset (bytes 6..7 but the DF and reserved bits) must be 0,
	// so the packet is whole. TOS, total length, ID and DF are free.
	tmplV4Mask0 = 0xff | 0x3f<<48 | 0xff<<56
	// IPv4 bytes 8..15: the protocol and the source address; TTL and the
	// header checksum are free.
	tmplV4Mask1 = 0xff<<8 | 0xffffffff<<32
	// IPv6 bytes 0..7: the version nibble and the next header (a transport
	// protocol, so no extension headers); the rest is free.
	tmplV6Mask0 = 0xf0 | 0xff<<48
	// The ports: the first four bytes of the L4 header.
	tmplPorts = 0xffffffff
	tmplAll   = ^uint64(0)
)

// Set makes t the template of b, a raw IP packet that Parse accepted into p
// (b starting at the IP header, as Parse was given it with RawIP). It
// reports whether b can be a template: unfragmented TCP or UDP, no IPv4
// options, no IPv6 extension headers. Otherwise t is reset and matches
// nothing.
func (t *Template) Set(b []byte, p *Parsed) bool {
	*t = Template{}
	if p.L3Off != 0 || !p.HasL4 || p.IsFragment() || p.IPOptions || p.ExtHeaders != 0 {
		return false
	}
	var l4min int
	switch p.Proto {
	case ProtoTCP:
		l4min = tcpMinLen
	case ProtoUDP:
		l4min = udpHdrLen
	default:
		return false
	}
	le := binary.LittleEndian
	switch p.IPVersion {
	case 4:
		if len(b) < ipv4MinLen+8 { // the 24 bytes compared
			return false
		}
		t.nw, t.hdr = 3, ipv4MinLen
		t.mask[0], t.mask[1], t.mask[2] = tmplV4Mask0, tmplV4Mask1, tmplAll
	case 6:
		if len(b) < ipv6HdrLen+8 {
			return false
		}
		t.nw, t.hdr, t.v6 = 6, ipv6HdrLen, true
		t.mask = [6]uint64{tmplV6Mask0, tmplAll, tmplAll, tmplAll, tmplAll, tmplPorts}
	default:
		return false
	}
	for i := range t.nw {
		t.want[i] = le.Uint64(b[8*i:]) & t.mask[i]
	}
	t.proto = p.Proto
	t.min = t.hdr + l4min
	return true
}

// Match reports whether b, a raw IP packet (possibly with bytes past its IP
// length), is a packet of the template's flow that Parse would accept with
// the template's keys, and returns its IP length and, for TCP, its flags.
// See the type's contract.
func (t *Template) Match(b []byte) (ipLen int, flags TCPFlags, ok bool) {
	if t.v6 {
		return t.match6(b)
	}
	// IPv4, the transmit fast path: written so that the compiler checks
	// bounds once (len(b) >= 28, the smallest template) and the template
	// fields are read in order.
	if len(b) < ipv4MinLen+udpHdrLen || len(b) < t.min || t.nw == 0 {
		return 0, 0, false
	}
	le := binary.LittleEndian
	if le.Uint64(b[0:8])&t.mask[0] != t.want[0] || le.Uint64(b[8:16])&t.mask[1] != t.want[1] ||
		le.Uint64(b[16:24]) != t.want[2] {
		return 0, 0, false
	}
	ipLen = int(binary.BigEndian.Uint16(b[2:4]))
	if ipLen < t.min || ipLen > len(b) {
		return 0, 0, false
	}
	if t.proto == ProtoUDP {
		// The UDP length, within the IP payload (b[24:26], the header at 20).
		if ul := int(binary.BigEndian.Uint16(b[24:26])); ul < udpHdrLen || ul > ipLen-ipv4MinLen {
			return 0, 0, false
		}
		return ipLen, 0, true
	}
	// TCP: ipLen >= t.min = 40 here, so b[32] and b[33] exist.
	if len(b) < ipv4MinLen+tcpMinLen {
		return 0, 0, false
	}
	if hl := int(b[32]>>4) * 4; hl < tcpMinLen || hl > ipLen-ipv4MinLen {
		return 0, 0, false
	}
	return ipLen, TCPFlags(b[33]), true
}

// MatchEach runs Match on many packets without a call per packet (the
// transmit path checks a whole TX batch this way). Packet i is
// bufs[i][:sizes[i]], the convention of netif.Link.Read; MatchEach sets
// ipLens[i] and flags[i] to Match's IP length and flags for it, and
// ipLens[i] to 0 where Match refuses it. sizes, ipLens and flags must be at
// least as long as bufs.
func (t *Template) MatchEach(bufs [][]byte, sizes []int, ipLens []int, flags []TCPFlags) {
	sizes, ipLens, flags = sizes[:len(bufs)], ipLens[:len(bufs)], flags[:len(bufs)]
	if t.v6 || t.nw == 0 {
		for i, b := range bufs {
			n, f, ok := t.Match(b[:sizes[i]])
			if !ok {
				n, f = 0, 0
			}
			ipLens[i], flags[i] = n, f
		}
		return
	}
	// IPv4: Match's body, with the template's words in registers.
	le, be := binary.LittleEndian, binary.BigEndian
	m0, w0, m1, w1, w2 := t.mask[0], t.want[0], t.mask[1], t.want[1], t.want[2]
	need, udp := t.min, t.proto == ProtoUDP
	for i, b := range bufs {
		b = b[:sizes[i]]
		ipLens[i], flags[i] = 0, 0
		if len(b) < ipv4MinLen+udpHdrLen || len(b) < need ||
			le.Uint64(b[0:8])&m0 != w0 || le.Uint64(b[8:16])&m1 != w1 || le.Uint64(b[16:24]) != w2 {
			continue
		}
		n := int(be.Uint16(b[2:4]))
		if n < need || n > len(b) {
			continue
		}
		if udp {
			if ul := int(be.Uint16(b[24:26])); ul < udpHdrLen || ul > n-ipv4MinLen {
				continue
			}
			ipLens[i] = n
			continue
		}
		if len(b) < ipv4MinLen+tcpMinLen {
			continue
		}
		if hl := int(b[32]>>4) * 4; hl < tcpMinLen || hl > n-ipv4MinLen {
			continue
		}
		ipLens[i], flags[i] = n, TCPFlags(b[33])
	}
}

// match6 is Match for an IPv6 template.
func (t *Template) match6(b []byte) (ipLen int, flags TCPFlags, ok bool) {
	if len(b) < t.min || len(b) < 8*t.nw {
		return 0, 0, false
	}
	le := binary.LittleEndian
	for i := range t.nw {
		if le.Uint64(b[8*i:])&t.mask[i] != t.want[i] {
			return 0, 0, false
		}
	}
	ipLen = ipv6HdrLen + int(binary.BigEndian.Uint16(b[4:6]))
	if ipLen < t.min || ipLen > len(b) {
		return 0, 0, false
	}
	l := b[t.hdr:ipLen]
	if t.proto == ProtoUDP {
		if ul := int(binary.BigEndian.Uint16(l[4:6])); ul < udpHdrLen || ul > len(l) {
			return 0, 0, false
		}
		return ipLen, 0, true
	}
	if hl := int(l[12]>>4) * 4; hl < tcpMinLen || hl > len(l) {
		return 0, 0, false
	}
	return ipLen, TCPFlags(l[13]), true
}
