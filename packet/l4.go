package packet

import "encoding/binary"

// ICMP echo types: their identifier acts as the port (as Linux ping sockets
// and gVisor's ICMP endpoints use it).
const (
	icmpEchoReply     = 0
	icmpEchoRequest   = 8
	icmpv6EchoRequest = 128
	icmpv6EchoReply   = 129
)

// parseL4 parses the L4 header at the start of l, the IP payload (bounded by
// the IP length), for the first or only fragment of a datagram. p.PayloadOff
// and p.PayloadLen cover l on entry.
func parseL4(l []byte, p *Parsed) error {
	switch p.Proto {
	case ProtoTCP:
		if len(l) < tcpMinLen {
			if p.cutPorts(l) {
				return nil
			}
			return ReasonTruncatedTCP
		}
		hl := int(l[12]>>4) * 4
		if hl >= tcpMinLen && hl > len(l) && p.cutPorts(l) {
			return nil
		}
		if hl < tcpMinLen || hl > len(l) {
			return ReasonBadTCPDataOffset
		}
		p.SrcPort = binary.BigEndian.Uint16(l[0:2])
		p.DstPort = binary.BigEndian.Uint16(l[2:4])
		p.Seq = binary.BigEndian.Uint32(l[4:8])
		p.Ack = binary.BigEndian.Uint32(l[8:12])
		p.Flags = TCPFlags(l[13])
		p.Window = binary.BigEndian.Uint16(l[14:16])
		p.TCPOptLen = hl - tcpMinLen
		return p.setL4(hl)
	case ProtoUDP:
		if len(l) < udpHdrLen {
			if p.cutPorts(l) {
				return nil
			}
			return ReasonTruncatedUDP
		}
		ul := int(binary.BigEndian.Uint16(l[4:6]))
		if ul < udpHdrLen {
			return ReasonBadUDPLength // includes 0, the jumbogram length (RFC 2675)
		}
		p.SrcPort = binary.BigEndian.Uint16(l[0:2])
		p.DstPort = binary.BigEndian.Uint16(l[2:4])
		p.UDPLen = ul
		if !p.MoreFrags {
			// Whole datagram: the UDP length must fit the IP payload. Like
			// Linux (udp_rcv trims the skb), a shorter UDP length is accepted
			// and the bytes past it are not payload.
			if ul > len(l) {
				return ReasonBadUDPLength
			}
			p.PayloadLen = ul
		}
		return p.setL4(udpHdrLen)
	case ProtoICMP, ProtoICMPv6:
		// ICMP belongs to IPv4 and ICMPv6 to IPv6; the other pairing is an
		// unknown protocol to the receiving stack, so it is left unparsed.
		if (p.Proto == ProtoICMP) != (p.IPVersion == 4) {
			return nil
		}
		if len(l) < icmpHdrLen {
			return ReasonTruncatedICMP
		}
		p.ICMPType = l[0]
		p.ICMPCode = l[1]
		if p.isEcho() {
			id := binary.BigEndian.Uint16(l[4:6])
			p.SrcPort, p.DstPort = id, id
		}
		return p.setL4(icmpHdrLen)
	}
	return nil // another protocol: accepted, no L4 fields
}

// cutPorts handles a first fragment l whose TCP or UDP header does not
// fit in it (a sender may cut anywhere past 8 bytes, RFC 791): with the
// ports there, it records them, leaves HasL4 false and reports true, so
// the packet is steered by its ports and the header is read once its
// datagram is reassembled. Anything else is a truncated packet.
func (p *Parsed) cutPorts(l []byte) bool {
	if !p.MoreFrags || len(l) < 4 {
		return false
	}
	p.SrcPort = binary.BigEndian.Uint16(l[0:2])
	p.DstPort = binary.BigEndian.Uint16(l[2:4])
	return true
}

// setL4 records an L4 header of hl bytes at L4Off.
func (p *Parsed) setL4(hl int) error {
	p.HasL4 = true
	p.L4HdrLen = hl
	p.PayloadOff += hl
	p.PayloadLen -= hl
	return nil
}

// isEcho reports whether p is an ICMP or ICMPv6 echo request or reply.
func (p *Parsed) isEcho() bool {
	if p.Proto == ProtoICMP {
		return p.ICMPType == icmpEchoRequest || p.ICMPType == icmpEchoReply
	}
	return p.ICMPType == icmpv6EchoRequest || p.ICMPType == icmpv6EchoReply
}
