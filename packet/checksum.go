package packet

// Sum adds b's big-endian 16-bit words (a last odd byte padded with zero) to
// acc, unfolded: the Internet checksum's sum (RFC 1071). Unfolded sums of
// pieces add up, which is how the flowswitch derives a super packet's
// checksum from its segments'. It does not overflow for b up to 128 KiB.
func Sum(b []byte, acc uint32) uint32 {
	for len(b) >= 2 {
		acc += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint32(b[0]) << 8
	}
	return acc
}

// Fold folds an unfolded sum into 16 bits, one's complement; the checksum
// field holds its complement.
func Fold(s uint32) uint16 {
	s = s>>16 + s&0xffff
	s = s>>16 + s&0xffff
	return uint16(s)
}

// l4Span finds the TCP or UDP header of the raw IP packet b: an IPv4
// packet that is not a fragment, or an IPv6 packet whose first next header
// is TCP or UDP. It returns the L4 offset, the end of the IP packet (its
// length field, which must fit b) and the protocol; ok is false for
// anything else, or lengths that do not hold together.
func l4Span(b []byte) (l4, end int, proto uint8, ok bool) {
	if len(b) < 1 {
		return 0, 0, 0, false
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < ipv4MinLen {
			return 0, 0, 0, false
		}
		l4 = int(b[0]&0x0f) * 4
		end = int(b[2])<<8 | int(b[3])
		if b[6]&0x3f != 0 || b[7] != 0 { // MF or a fragment offset
			return 0, 0, 0, false
		}
		proto = b[9]
	case 6:
		if len(b) < ipv6HdrLen {
			return 0, 0, 0, false
		}
		l4, end, proto = ipv6HdrLen, ipv6HdrLen+(int(b[4])<<8|int(b[5])), b[6]
	default:
		return 0, 0, 0, false
	}
	switch {
	case proto != ProtoTCP && proto != ProtoUDP,
		l4 < ipv4MinLen, end > len(b),
		proto == ProtoTCP && end-l4 < tcpMinLen,
		proto == ProtoUDP && end-l4 < udpHdrLen:
		return 0, 0, 0, false
	}
	return l4, end, proto, true
}

// l4Sum returns the unfolded sum of the pseudo header and the whole TCP or
// UDP segment b[l4:end] of the IP packet b, checksum field included.
func l4Sum(b []byte, l4, end int, proto uint8) uint32 {
	var acc uint32
	if b[0]>>4 == 4 {
		acc = Sum(b[12:20], 0)
	} else {
		acc = Sum(b[8:40], 0)
	}
	acc += uint32(proto) + uint32(end-l4)
	return Sum(b[l4:end], acc)
}

// csumAt is the offset of the checksum field in a TCP or UDP header.
func csumAt(proto uint8) int {
	if proto == ProtoTCP {
		return 16
	}
	return 6
}

// CompleteChecksum writes the full TCP or UDP checksum of the raw IP packet
// b, whatever its checksum field held (zero, or the pseudo-header sum a
// stack leaves with CHECKSUM_PARTIAL): one pass over the segment, done
// where a packet whose sender left its checksum to the wire leaves for a
// device that needs it. It reports false, changing nothing, for a packet
// it cannot complete (see l4Span): not TCP or UDP, a fragment, IPv6
// extension headers, lengths that do not fit b.
func CompleteChecksum(b []byte) bool {
	l4, end, proto, ok := l4Span(b)
	if !ok {
		return false
	}
	at := l4 + csumAt(proto)
	b[at], b[at+1] = 0, 0
	c := ^Fold(l4Sum(b, l4, end, proto))
	if proto == ProtoUDP && c == 0 {
		c = 0xffff // RFC 768: a computed zero is sent as all ones
	}
	b[at], b[at+1] = byte(c>>8), byte(c)
	return true
}

// ChecksumsValid reports whether the raw IP packet b verifies: its IPv4
// header checksum, and its TCP or UDP checksum when l4Span finds one (a
// zero UDP checksum over IPv4 means none was sent and passes; over IPv6
// it fails, RFC 8200 §8.1). A packet that is not IPv4 or IPv6, or whose
// IPv4 header is truncated, fails; the L4 checksum of other protocols,
// fragments and IPv6 packets with extension headers is not looked at.
func ChecksumsValid(b []byte) bool {
	if len(b) < 1 {
		return false
	}
	switch b[0] >> 4 {
	case 4:
		hl := int(b[0]&0x0f) * 4
		if hl < ipv4MinLen || len(b) < hl || Fold(Sum(b[:hl], 0)) != 0xffff {
			return false
		}
	case 6:
	default:
		return false
	}
	l4, end, proto, ok := l4Span(b)
	if !ok {
		return true
	}
	if proto == ProtoUDP && b[l4+6] == 0 && b[l4+7] == 0 {
		return b[0]>>4 == 4
	}
	return Fold(l4Sum(b, l4, end, proto)) == 0xffff
}
