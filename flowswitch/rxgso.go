package flowswitch

import (
	"encoding/binary"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/gso"
	"github.com/skylane/skylane/packet"
)

// Super packets on receive (docs/design.md §5.4, §8).
//
// A link that moves super packets (netif.SuperPacketLink: tun with
// offloads, afpacket, memif with MaxSuperPacketLen) is read with buffers
// of its MaxSuperPacketLen (at most a 64 KiB IP packet behind its link
// header), one input batch of them, allocated once by New: a TCP super
// packet arrives whole, as GRO (or the sending app) built it, and goes
// through the flow lookup and batching like any packet.
//
//   - It is delivered whole when it fits the destination channel's
//     buffers; merging goes on around it as for MTU segments (merge.go):
//     an in-order segment or super packet after it may join it, within
//     the merge limit.
//   - When it does not fit, it is cut into pieces that do (rxSplit): each
//     a valid TCP packet carrying a whole number of wire MSS (the MTU less
//     its headers) of payload, headers fixed up as a NIC's TSO would, and
//     a checksum computed from its bytes. So that the cut launders no
//     corruption, the super packet's own checksum is verified, from the
//     pieces' fresh checksums (no second pass over the payload), and one
//     that fails is dropped whole (SplitCsumDrops).
//   - UDP super packets never come: the link cuts them into their
//     datagrams (the SuperPacketLink contract).

// rxFrameLen is the size of the switch's receive buffers on link l: the
// link's MaxSuperPacketLen if it moves super packets (capped at a 64 KiB
// IP packet), else MaxFrameLen.
func rxFrameLen(l netif.Link) int {
	n := netif.MaxFrameLen(l.MTU(), l.LinkType())
	if sl, ok := l.(netif.SuperPacketLink); ok {
		n = max(n, min(sl.MaxSuperPacketLen(), netif.HeaderLen(l.LinkType())+0xffff))
	}
	return n
}

// piecePayloadSum returns the folded one's complement sum of the payload
// of piece, a TCP packet rxSplit just cut with a complete checksum,
// without reading the payload: the checksum less the pseudo header and
// the TCP header. off is where its payload starts in the super packet's:
// at an odd offset the bytes pair the other way, so the sum is swapped.
func piecePayloadSum(piece []byte, q *packet.Parsed, off int) uint32 {
	th := piece[q.IPHdrLen : q.PayloadOff-q.L3Off]
	total := uint32(binary.BigEndian.Uint16(th[16:18])) ^ 0xffff // the sum the checksum complements
	hdr := packet.Fold(pseudoSum(piece, q.IPVersion, len(piece)-q.IPHdrLen) + packet.Sum(th[:16], 0) + packet.Sum(th[18:], 0))
	sum := packet.Fold(total + uint32(^hdr))
	if off&1 != 0 {
		sum = sum>>8 | sum<<8
	}
	return uint32(sum)
}

// rxSplit cuts packet i of the input batch, a TCP super packet too large
// for port p's buffers, into pieces that fit, writes the first into b (a
// buffer of p's already allocated for it) and the others into buffers it
// allocates, stamps each with flow ID id and stages them for p's Deliver,
// in order. It reports whether it did; if not, the caller still owns b
// and drops the packet, counting it as Oversize unless counted says
// rxSplit counted it already (a bad checksum, no buffers).
func (s *Switch) rxSplit(p *port, b channel.Buf, i int32, id *[16]byte) (done, counted bool) {
	q := &s.rx[i]
	pkt := s.bufs[i][q.L3Off : q.L3Off+q.IPLen]
	if q.Proto != packet.ProtoTCP || !q.HasL4 {
		return false, false
	}
	hdrs := q.PayloadOff - q.L3Off
	room := len(b.Data) - hdrs
	mss := s.link.MTU() - hdrs
	if room <= 0 || mss <= 0 {
		return false, false
	}
	piece := room
	if room >= mss {
		piece = room / mss * mss
	}
	var g gso.Super
	if g.Init(pkt, 0, piece) != nil {
		return false, false
	}
	k := g.Segments()
	if cap(s.splitBuf) < k-1 {
		s.splitBuf = make([]channel.Buf, 0, k-1) // grows to the largest cut once
	}
	more := s.splitBuf[:0]
	for len(more) < k-1 {
		n := len(more)
		more = more[:k-1]
		got := p.ch.Alloc(more[n:])
		if got == 0 {
			p.ch.Release(more[:n])
			clear(more)
			s.stats.AllocFails++
			return false, true
		}
		more = more[:n+got]
	}
	// Cut first, then verify the super packet's checksum from the pieces'
	// (each piece's payload sum falls out of its fresh checksum), rather
	// than read 64 KiB once more: a corrupt super packet is dropped whole.
	var paySum uint32
	for x := range k {
		buf := &b
		if x > 0 {
			buf = &more[x-1]
		}
		n, _ := g.Segment(x, buf.Data) // each piece fits: headers plus at most room
		buf.Data = buf.Data[:n]
		paySum += piecePayloadSum(buf.Data, q, x*piece)
	}
	th := pkt[q.IPHdrLen:hdrs]
	if !s.trusted && packet.Fold(pseudoSum(pkt, q.IPVersion, q.IPLen-q.IPHdrLen)+packet.Sum(th, 0)+paySum) != 0xffff {
		p.ch.Release(more)
		clear(more)
		s.stats.SplitCsumDrops++
		return false, true
	}
	meta := p.ch.Pool()
	for x := range k {
		buf := b
		if x > 0 {
			buf = more[x-1]
		}
		buf.Flags = s.rxFlags()
		m := meta.UserMeta(buf.Index)
		copy(m[channel.RxMetaFlowIDOff:channel.RxMetaFlowIDOff+channel.RxMetaFlowIDLen], id[:])
		clear(m[channel.RxMetaFlowIDOff+channel.RxMetaFlowIDLen:])
		p.pending = append(p.pending, buf)
	}
	clear(more)
	s.splitBuf = more[:0]
	p.rx.used += k - 1 // rxAdmit counted the super packet as one ring slot
	s.stats.Split++
	s.stats.SplitPieces += uint64(k)
	return true, true
}
