package packet

import "encoding/binary"

// ICMP errors (docs/design.md §8b): an error message quotes the start of the
// packet that caused it, and that packet is one the local side sent, so the
// quote names the flow the error belongs to.

// IsICMPError reports whether p is an ICMP or ICMPv6 error message that
// quotes the packet that caused it: ICMP destination unreachable (which
// includes fragmentation needed), source quench, time exceeded and
// parameter problem (RFC 792); ICMPv6 destination unreachable, packet too
// big, time exceeded and parameter problem (RFC 4443).
func (p *Parsed) IsICMPError() bool {
	if !p.HasL4 || p.IsFragment() {
		return false
	}
	switch {
	case p.Proto == ProtoICMP && p.IPVersion == 4:
		switch p.ICMPType {
		case 3, 4, 11, 12:
			return true
		}
	case p.Proto == ProtoICMPv6 && p.IPVersion == 6:
		return p.ICMPType >= 1 && p.ICMPType <= 4
	}
	return false
}

// QuotedKey stores in *k the key of the flow that ICMP error p (parsed from
// b; p.IsICMPError()) is about, oriented to the local side: the quoted
// packet's source is local. It reports false, leaving *k unspecified, when
// the quote is too short to hold the quoted packet's addresses and ports,
// is not TCP or UDP of p's family (an IPv6 quote with extension headers
// included), is a later fragment, or was not sent from the address the
// error is addressed to (so it is no packet of ours). It never allocates.
func (p *Parsed) QuotedKey(b []byte, k *Key) bool {
	end := p.L3Off + p.IPLen
	at := p.L4Off + icmpHdrLen
	if at > end || end > len(b) {
		return false
	}
	q := b[at:end]
	var in Parsed
	switch p.IPVersion {
	case 4:
		if len(q) < ipv4MinLen || q[0]>>4 != 4 {
			return false
		}
		hl := int(q[0]&0x0f) * 4
		if hl < ipv4MinLen || len(q) < hl+4 || binary.BigEndian.Uint16(q[6:8])&0x1fff != 0 {
			return false
		}
		in.IPVersion, in.Proto = 4, q[9]
		in.src[10], in.src[11], in.dst[10], in.dst[11] = 0xff, 0xff, 0xff, 0xff
		copy(in.src[12:], q[12:16])
		copy(in.dst[12:], q[16:20])
		q = q[hl:]
	case 6:
		if len(q) < ipv6HdrLen+4 || q[0]>>4 != 6 {
			return false
		}
		in.IPVersion, in.Proto = 6, q[6]
		in.src, in.dst = [16]byte(q[8:24]), [16]byte(q[24:40])
		q = q[ipv6HdrLen:]
	default:
		return false
	}
	if in.Proto != ProtoTCP && in.Proto != ProtoUDP || in.src != p.dst {
		return false
	}
	in.SrcPort = binary.BigEndian.Uint16(q[0:2])
	in.DstPort = binary.BigEndian.Uint16(q[2:4])
	in.TxKeyTo(k)
	return true
}
