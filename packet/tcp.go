package packet

import "strings"

// TCPFlags holds the eight TCP flag bits of byte 13 of the TCP header.
type TCPFlags uint8

// TCP flags (RFC 9293 §3.1, RFC 3168 §6.1 for ECE and CWR).
const (
	TCPFin TCPFlags = 1 << iota
	TCPSyn
	TCPRst
	TCPPsh
	TCPAck
	TCPUrg
	TCPEce
	TCPCwr
)

var tcpFlagNames = [8]string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}

// Has reports whether all of g are set in f.
func (f TCPFlags) Has(g TCPFlags) bool { return f&g == g }

// String returns the set flags joined by "|", such as "SYN|ACK", or "0".
func (f TCPFlags) String() string {
	if f == 0 {
		return "0"
	}
	var sb strings.Builder
	for i, name := range tcpFlagNames {
		if f&(1<<i) != 0 {
			if sb.Len() > 0 {
				sb.WriteByte('|')
			}
			sb.WriteString(name)
		}
	}
	return sb.String()
}

// The helpers below serve the receive merge (docs/design.md §5.4): in-order TCP
// data segments of one flow are merged into a super packet that carries the
// first segment's headers, so every segment must have headers that the first
// one's stand for. The merger itself owns the size limit, the batch boundary
// and how the last segment's PSH flag and window are carried over.

// SeqEnd returns the sequence number just past p's segment: Seq plus the
// payload length, plus one each for SYN and FIN.
func (p *Parsed) SeqEnd() uint32 {
	n := p.Seq + uint32(p.PayloadLen)
	if p.Flags&TCPSyn != 0 {
		n++
	}
	if p.Flags&TCPFin != 0 {
		n++
	}
	return n
}

// TCPMergeable reports whether p may be part of a super packet: an
// unfragmented TCP segment with payload, ACK set and no flag but ACK and
// PSH. SYN, FIN, RST, URG, ECE and CWR all end a merge, as does a
// segment without data (a pure ACK is the stack's business, not payload).
func (p *Parsed) TCPMergeable() bool {
	return p.HasL4 && p.Proto == ProtoTCP && !p.IsFragment() &&
		p.PayloadLen > 0 && p.Flags&^TCPPsh == TCPAck
}

// SameIPHeader reports whether q's IP header equals p's for merge purposes:
// the same version, addresses, TOS/traffic class (ECN included, so a CE mark
// is never hidden), TTL/hop limit, DF flag and IPv6 flow label, and neither
// a fragment. IPv4 options and IPv6 extension headers are not compared byte
// for byte, so their presence in either packet ends a merge.
//
// TTL and hop limit are compared, as Linux GRO does: segments of one flow
// normally share them, and a change means a route change worth not hiding.
// The IPv4 identification, total length and checksum differ between
// segments by nature and are rebuilt for the super packet.
func (p *Parsed) SameIPHeader(q *Parsed) bool {
	return p.IPVersion == q.IPVersion && p.IPVersion != 0 &&
		p.TOS == q.TOS && p.TTL == q.TTL && p.DontFrag == q.DontFrag &&
		p.FlowLabel == q.FlowLabel &&
		!p.IPOptions && !q.IPOptions &&
		p.ExtHeaders == 0 && q.ExtHeaders == 0 &&
		!p.IsFragment() && !q.IsFragment() &&
		p.src == q.src && p.dst == q.dst
}

// CanAppend reports whether segment q may directly follow segment p (the
// last one merged so far) in one super packet: both TCPMergeable, the same
// IP header and ports, q starting exactly where p ends (no gap, no overlap),
// the same acknowledgement number and the same length of TCP options.
//
// The option bytes themselves are not compared (Parse keeps no reference to
// the buffer); a merger that wants to, as Linux GRO does for timestamps,
// compares [Parsed.TCPOptions] of both.
func (p *Parsed) CanAppend(q *Parsed) bool {
	return p.TCPMergeable() && q.TCPMergeable() && p.SameIPHeader(q) &&
		p.SrcPort == q.SrcPort && p.DstPort == q.DstPort &&
		q.Seq == p.SeqEnd() && q.Ack == p.Ack && q.TCPOptLen == p.TCPOptLen
}

// TCPOptions returns the TCP options of the segment Parse parsed from b,
// which must be that same buffer, or nil if p is not TCP or has no options.
func (p *Parsed) TCPOptions(b []byte) []byte {
	if !p.HasL4 || p.Proto != ProtoTCP || p.TCPOptLen == 0 {
		return nil
	}
	start := p.L4Off + tcpMinLen
	end := start + p.TCPOptLen
	if start < 0 || end > len(b) {
		return nil // not the buffer p was parsed from
	}
	return b[start:end:end]
}
