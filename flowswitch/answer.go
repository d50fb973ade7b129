package flowswitch

import (
	"encoding/binary"

	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/regulate"
)

// Answering as a host (docs/design.md §8b, Options.AnswerAsHost). Where no
// kernel stack owns the switch's addresses (a TUN device, an AF_PACKET tap
// on an interface without kernel addresses), a packet to one of them that
// no flow claims would otherwise vanish, and clients wait for their
// timeouts. The switch answers as RFC 1122 asks a host to:
//
//   - an ICMP or ICMPv6 echo request gets its echo reply;
//   - a TCP segment without RST gets a RST (RFC 9293 §3.10.7.1);
//   - a UDP datagram gets an ICMP port unreachable (ICMPv6: destination
//     unreachable, port unreachable), quoting as much of it as fits in 576
//     bytes (IPv6: 1280).
//
// Nothing else is answered: ICMP errors (never answered, RFC 1122
// 3.2.2), fragments, packets to an address that is not the switch's, or
// from a multicast, broadcast or unspecified source. The answers share a
// token bucket (answerRate per second, bursts of answerBurst), so the
// switch is no amplifier: past it, packets are only counted.

// answerRate and answerBurst bound the answers: Linux's default limit on
// the ICMP messages a host sends (net.ipv4.icmp_msgs_per_sec 1000,
// icmp_msgs_burst 50).
const (
	answerRate  = 1000
	answerBurst = 50
)

// AnswerStats count the answers of AnswerAsHost.
type AnswerStats struct {
	EchoReplies uint64 // echo replies sent
	Resets      uint64 // TCP resets sent
	Unreachable uint64 // ICMP port unreachables sent
	Limited     uint64 // packets not answered: over the rate
}

// answerState is the switch's answering state; nil bucket: not answering.
type answerState struct {
	on     bool // immutable: Options.AnswerAsHost
	bucket regulate.TokenBucket
	buf    []byte    // scratch: one frame
	out    [1][]byte // the write's batch
	stats  AnswerStats
}

func (a *answerState) init(on bool, frameLen int, now int64) {
	if !on {
		return
	}
	a.on = true
	a.buf = make([]byte, frameLen)
	// Counted in answers, not bytes: one token each.
	a.bucket, _ = regulate.NewTokenBucket(answerRate, answerBurst, now)
}

// answer answers frame i of the input batch, of no flow, if a host would
// (see above), and reports whether it did.
func (s *Switch) answer(i int) bool {
	p := &s.rx[i]
	a := &s.ans
	if !a.on || p.IPVersion == 0 || p.IsFragment() || !s.table.IsLocal(p.Dst()) {
		return false
	}
	src := p.Src()
	if !src.IsValid() || src.IsUnspecified() || src.IsMulticast() || src.IsLoopback() ||
		src.Is4() && src.As4()[3] == 255 { // a limited or directed broadcast, as far as we can tell
		return false
	}
	frame := s.bufs[i][:s.sizes[i]]
	ip := frame[p.L3Off : p.L3Off+p.IPLen]
	// What to answer, and its counter.
	var (
		build func(b, ip []byte, p *packet.Parsed) int
		sent  *uint64
	)
	switch {
	case p.HasL4 && (p.Proto == packet.ProtoICMP && p.ICMPType == 8 || p.Proto == packet.ProtoICMPv6 && p.ICMPType == 128):
		build, sent = echoReply, &a.stats.EchoReplies
	case p.HasL4 && p.Proto == packet.ProtoTCP && !p.Flags.Has(packet.TCPRst):
		build, sent = tcpReset, &a.stats.Resets
	case p.HasL4 && p.Proto == packet.ProtoUDP:
		build, sent = portUnreachable, &a.stats.Unreachable
	default:
		return false
	}
	now := s.now()
	if !a.bucket.Allow(1, now) {
		a.stats.Limited++
		return true // answered as far as the kernel is concerned: nobody else will
	}
	out := a.buf[:cap(a.buf)]
	l2 := p.L3Off
	if l2 > 0 { // Ethernet: back to the sender's MAC, from the one it wrote to
		copy(out[0:6], frame[6:12])
		copy(out[6:12], frame[0:6])
		copy(out[12:l2], frame[12:l2])
	}
	n := build(out[l2:], ip, p)
	if n == 0 {
		return false
	}
	a.out[0] = out[:l2+n]
	var w int
	if s.reg != nil {
		w = s.enqueueHost(a.out[:], now)
	} else {
		w, _ = s.writeDirect(a.out[:]) // a device error shows in the next read or write
	}
	if w == 1 {
		*sent++
	}
	a.out[0] = nil
	return true
}

// ipHeader writes an IP header of family v (4 or 6) from src to dst
// (16-byte forms, v4-mapped for IPv4) for proto and l4 bytes of payload at
// the start of b, and returns its length.
func ipHeader(b []byte, v uint8, src, dst []byte, proto uint8, l4 int) int {
	if v == 4 {
		h := b[:20]
		clear(h)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:4], uint16(20+l4))
		binary.BigEndian.PutUint16(h[6:8], 0x4000) // DF
		h[8], h[9] = 64, proto
		copy(h[12:16], src)
		copy(h[16:20], dst)
		binary.BigEndian.PutUint16(h[10:12], ^packet.Fold(packet.Sum(h, 0)))
		return 20
	}
	h := b[:40]
	clear(h)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:6], uint16(l4))
	h[6], h[7] = proto, 64
	copy(h[8:24], src)
	copy(h[24:40], dst)
	return 40
}

// addrs returns the source and destination addresses of packet ip, in its
// family's form.
func addrs(ip []byte, v uint8) (src, dst []byte) {
	if v == 4 {
		return ip[12:16], ip[16:20]
	}
	return ip[8:24], ip[24:40]
}

// l4Checksum fills the checksum at offset off of the L4 part of packet b
// (IP header of hl bytes): with the pseudo header, but for ICMPv4.
func l4Checksum(b []byte, v uint8, hl, off int, proto uint8) {
	l4 := b[hl:]
	l4[off], l4[off+1] = 0, 0
	var sum uint32
	if proto != packet.ProtoICMP {
		src, dst := addrs(b, v)
		sum = packet.Sum(src, packet.Sum(dst, uint32(proto)+uint32(len(l4))))
	}
	binary.BigEndian.PutUint16(l4[off:off+2], ^packet.Fold(packet.Sum(l4, sum)))
}

// echoReply writes into b the reply to echo request ip and returns its
// length: the request, addresses swapped, type changed, checksums new.
func echoReply(b, ip []byte, p *packet.Parsed) int {
	src, dst := addrs(ip, p.IPVersion)
	l4 := ip[p.IPHdrLen:]
	if len(b) < 40+len(l4) {
		return 0
	}
	hl := ipHeader(b, p.IPVersion, dst, src, p.Proto, len(l4))
	copy(b[hl:], l4)
	if p.IPVersion == 4 {
		b[hl] = 0 // echo reply
	} else {
		b[hl] = 129
	}
	l4Checksum(b[:hl+len(l4)], p.IPVersion, hl, 2, p.Proto)
	return hl + len(l4)
}

// tcpReset writes into b the RST that answers TCP segment ip and returns
// its length (RFC 9293 §3.10.7.1: with the segment's ACK as the sequence
// number, else acknowledging all it occupied).
func tcpReset(b, ip []byte, p *packet.Parsed) int {
	src, dst := addrs(ip, p.IPVersion)
	hl := ipHeader(b, p.IPVersion, dst, src, packet.ProtoTCP, 20)
	t := b[hl : hl+20]
	clear(t)
	binary.BigEndian.PutUint16(t[0:2], p.DstPort)
	binary.BigEndian.PutUint16(t[2:4], p.SrcPort)
	if p.Flags.Has(packet.TCPAck) {
		binary.BigEndian.PutUint32(t[4:8], p.Ack)
		t[13] = byte(packet.TCPRst)
	} else {
		binary.BigEndian.PutUint32(t[8:12], p.SeqEnd())
		t[13] = byte(packet.TCPRst | packet.TCPAck)
	}
	t[12] = 5 << 4
	l4Checksum(b[:hl+20], p.IPVersion, hl, 16, packet.ProtoTCP)
	return hl + 20
}

// portUnreachable writes into b the ICMP (ICMPv6) port unreachable that
// answers UDP datagram ip and returns its length.
func portUnreachable(b, ip []byte, p *packet.Parsed) int {
	src, dst := addrs(ip, p.IPVersion)
	limit, proto, typ, code := 576, packet.ProtoICMP, byte(3), byte(3)
	if p.IPVersion == 6 {
		limit, proto, typ, code = 1280, packet.ProtoICMPv6, 1, 4
	}
	ihl := 20
	if p.IPVersion == 6 {
		ihl = 40
	}
	quote := min(len(ip), limit-ihl-8, len(b)-ihl-8)
	hl := ipHeader(b, p.IPVersion, dst, src, proto, 8+quote)
	m := b[hl : hl+8+quote]
	clear(m[:8])
	m[0], m[1] = typ, code
	copy(m[8:], ip[:quote])
	l4Checksum(b[:hl+8+quote], p.IPVersion, hl, 2, proto)
	return hl + 8 + quote
}
