package flowswitch

import (
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/gso"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/regulate"
)

// Super packets on transmit (docs/design.md §6.3, §8).
//
// An app may send a TCP super packet: one buffer holding a packet longer
// than the MTU, with the MSS of its segments as the segmentation size in
// its metadata (channel.TxMetaSegSizeOff). The checks (txcheck.go) accept it like
// any packet of its flow, plus its own (TxDrops.SegProto, SegSize), and it
// travels whole as far as it can:
//
//   - to a netif.SuperPacketLink whose MaxSuperPacketLen holds it, it is
//     handed whole with its segmentation size (WriteGSO): the kernel cuts
//     it (tun, afpacket), or the wire carries it whole (memif);
//   - to any other link (AF_XDP, a plain Link), or one too short for it,
//     the switch cuts it into MTU segments right before the device write
//     (netif/gso: lengths, IPv4 IDs, sequence numbers, flags and
//     checksums fixed up in each);
//   - with Regulation it is cut as it enters the AQM, whose queue, drops,
//     quantum and pacing work on wire frames; a TxQueue gets the segments
//     too.
//
// A super packet's L4 checksum is its app's, or completed by the switch
// when the app left it to the wire and the link is not trusted (csum.go):
// a wire that carries it whole delivers it as it is, and the segments cut
// here or by a kernel get checksums of their own.
//
// Counting: a super packet is one packet of TxPackets (and of its flow's
// PacketsOut) and its IP length in bytes, as the app sent it; Stats.TxSuper
// says how many went whole, TxSegmented how many were cut and TxSegments
// into how many segments.

// txGSO is the transmit path's super packet state, allocated once by New.
type txGSO struct {
	link   netif.SuperPacketLink // the device link, if it takes super packets; immutable
	max    int                   // its MaxSuperPacketLen; immutable
	segs   [][]byte              // TxBatch frames of MaxFrameLen, where segments are cut; immutable
	wire   [][]byte              // the frames of one device write; cap TxBatch
	seg    []int                 // parallel to wire: a whole super packet's size, else 0
	owner  []int32               // parallel to wire: the index in out of its packet
	tokens []uint32              // parallel to wire, for a TxQueue
	adv    []uint32
	sp     gso.Super
}

func (g *txGSO) init(l netif.Link, lt packet.LinkType, mtu int) {
	frame := netif.MaxFrameLen(mtu, lt)
	if sl, ok := l.(netif.SuperPacketLink); ok && sl.MaxSuperPacketLen() > frame {
		g.link, g.max = sl, sl.MaxSuperPacketLen()
	}
	g.segs = frameBufs(TxBatch, frame)
	g.wire = make([][]byte, 0, TxBatch)
	g.seg = make([]int, 0, TxBatch)
	g.owner = make([]int32, 0, TxBatch)
	g.tokens = make([]uint32, 0, TxBatch)
	g.adv = make([]uint32, 0, TxBatch)
}

// hasSuper reports whether the output batch holds a super packet.
func (t *txState) hasSuper() bool {
	return t.supers > 0
}

// writeOut writes the output batch (t.out) to the device link: as it is
// when it holds no super packet; else each super packet whole (WriteGSO)
// when the link takes it, cut into segments when not (see above). It
// returns how many packets of t.out the link accepted, a prefix (a super
// packet counts once all its segments were accepted), and the link's
// error. A full device tail-drops as in Link.Write: the rest of the batch
// is still offered, and the device counts what it drops.
func (s *Switch) writeOut() (int, error) {
	t := &s.tx
	if !t.hasSuper() {
		return s.link.Write(t.out)
	}
	g := &t.gso
	return s.expand(func() (int, error) {
		if g.link != nil {
			return g.link.WriteGSO(g.wire, g.seg)
		}
		return s.link.Write(g.wire)
	})
}

// enqueueTxq hands the output batch to the TxQueue, super packets cut into
// segments, each with its packet's token and advisory index (t.tokens,
// t.adv). It returns how many packets of t.out the queue accepted, a
// prefix.
func (s *Switch) enqueueTxq() int {
	t := &s.tx
	if !t.hasSuper() {
		return s.txq.Enqueue(t.out, t.tokens, t.adv)
	}
	g := &t.gso
	saved := g.link
	g.link = nil // the queue takes wire frames only
	w, _ := s.expand(func() (int, error) {
		g.tokens, g.adv = g.tokens[:0], g.adv[:0]
		for _, o := range g.owner {
			g.tokens = append(g.tokens, t.tokens[o])
			g.adv = append(g.adv, t.adv[o])
		}
		return s.txq.Enqueue(g.wire, g.tokens, g.adv), nil
	})
	g.link = saved
	return w
}

// expand turns the output batch into device writes of at most TxBatch
// frames (g.wire, with g.seg and g.owner), each made by emit, which
// returns how many of g.wire it accepted (a prefix) and an error that
// stops the batch. It returns how many packets of t.out were accepted,
// a prefix, and emit's error.
func (s *Switch) expand(emit func() (int, error)) (int, error) {
	t, g := &s.tx, &s.tx.gso
	failed := len(t.out) // the first packet of t.out not wholly accepted
	flush := func() error {
		if len(g.wire) == 0 {
			return nil
		}
		w, err := emit()
		if w < len(g.wire) {
			failed = min(failed, int(g.owner[w]))
		}
		g.wire, g.seg, g.owner = g.wire[:0], g.seg[:0], g.owner[:0]
		return err
	}
	var err error
	used := 0          // segment buffers used by g.wire
	stop := len(t.out) // the first packet not offered, after an error
	for x, f := range t.out {
		seg := t.outSeg[x]
		if seg == 0 || (g.link != nil && len(f) <= g.max) {
			if len(g.wire) == cap(g.wire) {
				if err = flush(); err != nil {
					stop = x
					break
				}
				used = 0
			}
			if seg != 0 {
				s.stats.TxSuper++
			}
			g.wire, g.seg, g.owner = append(g.wire, f), append(g.seg, seg), append(g.owner, int32(x))
			continue
		}
		// Cut here. The checks made sure it parses and its segments
		// fit the MTU: Init fails only on a bug, which costs the packet.
		if g.sp.Init(f, t.l2Len, seg) != nil {
			failed = min(failed, x)
			continue
		}
		s.stats.TxSegmented++
		for i := range g.sp.Segments() {
			if len(g.wire) == cap(g.wire) || used == len(g.segs) {
				if err = flush(); err != nil {
					stop = x
					break
				}
				used = 0
			}
			n, serr := g.sp.Segment(i, g.segs[used])
			if serr != nil {
				failed = min(failed, x)
				break
			}
			g.wire = append(g.wire, g.segs[used][:n])
			g.seg, g.owner = append(g.seg, 0), append(g.owner, int32(x))
			used++
			s.stats.TxSegments++
		}
		if err != nil {
			break
		}
	}
	g.sp = gso.Super{} // keep no reference to the copies
	if err == nil {
		err = flush()
	}
	clear(g.wire[:cap(g.wire)])
	g.wire, g.seg, g.owner = g.wire[:0], g.seg[:0], g.owner[:0]
	return min(failed, stop), err
}

// enqueueSuper cuts the super packet f (segmentation size seg) into the
// AQM under tag, at now. It reports whether the queue took its first
// segment: the packet counts as sent then, and the queue counts its
// drops of the others.
func (s *Switch) enqueueSuper(f []byte, seg int, tag regulate.Tag, now int64) bool {
	t, g := &s.tx, &s.tx.gso
	if g.sp.Init(f, t.l2Len, seg) != nil {
		return false // the checks make this a bug: it costs the packet
	}
	s.stats.TxSegmented++
	first := false
	buf := g.segs[0]
	for i := range g.sp.Segments() {
		n, err := g.sp.Segment(i, buf)
		if err != nil {
			break
		}
		s.stats.TxSegments++
		if s.reg.q.Enqueue(buf[:n], tag, now) && i == 0 {
			first = true
		}
	}
	g.sp = gso.Super{}
	return first
}
