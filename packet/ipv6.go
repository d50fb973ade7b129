package packet

import "encoding/binary"

// MaxExtHeaders bounds the IPv6 extension headers Parse walks before it gives
// up with ReasonTooManyExtHeaders. A real packet carries at most a handful
// (RFC 8200 §4.1 recommends one of each, destination options twice): eight
// leaves room for that and keeps the per-packet work bounded.
const MaxExtHeaders = 8

// IPv6 next-header values of the extension headers Parse walks. ESP (50) and
// No Next Header (59) end the walk like an upper-layer protocol: what follows
// is opaque.
const (
	nhHopByHop = 0
	nhRouting  = 43
	nhFragment = 44
	nhAH       = 51
	nhDestOpts = 60
)

// ipv6ExtMinLen is the size of the smallest extension header: every one is
// a multiple of 8 bytes (AH: of 4, and at least ahMinLen).
const ipv6ExtMinLen = 8

// ahMinLen is the fixed part of an AH header: next header, length, reserved,
// SPI and sequence number (RFC 4302 §2).
const ahMinLen = 12

// parseIPv6 parses the IPv6 header at b[off:], its extension headers and what
// follows them.
func parseIPv6(b []byte, off int, p *Parsed) error {
	h := b[off:]
	if len(h) < ipv6HdrLen {
		return ReasonTruncatedIPv6
	}
	vcf := binary.BigEndian.Uint32(h[0:4]) // version 4 bits, traffic class 8, flow label 20
	if vcf>>28 != 6 {
		return ReasonBadIPVersion
	}
	ipLen := ipv6HdrLen + int(binary.BigEndian.Uint16(h[4:6]))
	if ipLen > len(h) {
		return ReasonTruncatedIPv6
	}
	h = h[:ipLen]
	p.IPVersion = 6
	p.TOS = uint8(vcf >> 20)
	p.FlowLabel = vcf & 0xfffff
	p.TTL = h[7]
	p.src = [16]byte(h[8:24])
	p.dst = [16]byte(h[24:40])
	p.L3Off = off
	p.IPLen = ipLen

	nh := h[6]
	pos := ipv6HdrLen
walk:
	for {
		switch nh {
		case nhHopByHop, nhRouting, nhFragment, nhAH, nhDestOpts:
		default:
			break walk // upper-layer header, ESP or no next header
		}
		if p.ExtHeaders == MaxExtHeaders {
			return ReasonTooManyExtHeaders
		}
		if len(h)-pos < ipv6ExtMinLen {
			return ReasonTruncatedExtHeader
		}
		e := h[pos:]
		var n int
		switch nh {
		case nhHopByHop:
			if pos != ipv6HdrLen {
				return ReasonBadExtHeader // RFC 8200 §4.1: only right after the IPv6 header
			}
			n = (int(e[1]) + 1) * 8
		case nhFragment:
			if p.FragHeader {
				return ReasonBadExtHeader
			}
			// 13 bits of offset in units of 8 bytes (so already in
			// bytes once the low 3 bits are cleared), 2 reserved, M.
			fo := binary.BigEndian.Uint16(e[2:4])
			p.FragHeader = true
			p.FragOff = fo &^ 7
			p.MoreFrags = fo&1 != 0
			p.ID = binary.BigEndian.Uint32(e[4:8])
			n = ipv6ExtMinLen
		case nhAH:
			n = (int(e[1]) + 2) * 4 // RFC 4302 §2.2: in 4-byte units, minus 2
			if n < ahMinLen {
				return ReasonBadExtHeader
			}
		default: // routing, destination options
			n = (int(e[1]) + 1) * 8
		}
		if n > len(e) {
			return ReasonTruncatedExtHeader
		}
		cur := nh
		nh = e[0]
		pos += n
		p.ExtHeaders++
		if cur != nhFragment {
			continue
		}
		// Just past the fragment header: the reassembled datagram may not
		// exceed 65535 bytes of payload (RFC 8200 §4.5), and the data of a
		// later fragment is opaque.
		if int(p.FragOff)+ipLen-pos > maxIPLen {
			return ReasonBadFragment
		}
		if p.FragOff != 0 {
			break walk
		}
	}
	p.Proto = nh
	p.IPHdrLen = pos
	p.L4Off = off + pos
	p.PayloadOff = off + pos
	p.PayloadLen = ipLen - pos
	if p.FragOff != 0 {
		return nil // later fragment: no L4 header
	}
	return parseL4(h[pos:], p)
}
