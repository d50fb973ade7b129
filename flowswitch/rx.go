package flowswitch

import (
	"errors"
	"fmt"
	"io"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

// The receive path (see the package doc): read, parse, look up, queue per
// flow, release, deliver.

// RxOnce reads one input batch from the link and delivers it (see the package
// doc) and returns how many frames it read. With Regulation's adaptive
// batching, the frames may be held for a fuller batch and delivered by a
// later RxOnce or Service. It never blocks (but for the switch's lock). An error is the link's (netif.ErrClosed once closed) or
// the host link's; a frame too large for its buffer (io.ErrShortBuffer) is
// the link's drop, counted there, and not an error here.
func (s *Switch) RxOnce() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rxOnce()
}

func (s *Switch) rxOnce() (int, error) {
	if r := s.reg; r != nil && r.mit != nil {
		// Adaptive batching: read behind the frames held so far, and
		// deliver them all once the mitigation level says so.
		got := 0
		if r.rxHeld < s.batch {
			var err error
			got, err = s.link.Read(s.bufs[r.rxHeld:], s.sizes[r.rxHeld:])
			if err != nil && !errors.Is(err, io.ErrShortBuffer) {
				return got, fmt.Errorf("flowswitch rx: %w", err)
			}
			r.rxHeld += got
		}
		n, deliver := r.rxHold(got, s.now(), s.batch)
		if !deliver {
			return got, nil
		}
		return got, s.rxDeliver(n)
	}
	n, err := s.link.Read(s.bufs, s.sizes)
	if err != nil && !errors.Is(err, io.ErrShortBuffer) {
		return n, fmt.Errorf("flowswitch rx: %w", err)
	}
	return n, s.rxDeliver(n)
}

// rxDeliver processes the input batch s.bufs[:n]: parse, look up, queue
// per flow, release, deliver (see the package doc).
func (s *Switch) rxDeliver(n int) error {
	if n == 0 {
		return nil
	}
	s.stats.Packets += uint64(n)
	s.stats.Batches++
	s.hist.rxBatch.Observe(float64(n))
	s.gen++
	if s.capt.on {
		s.capRx(n)
	}

	// Parse every frame, then look all the keys up at once (LookupBatch
	// overlaps the flow table's cache misses), then queue each packet on
	// its flow. A key equal to the previous frame's is looked up once.
	m, c := 0, 0
	for i := range n {
		p := &s.rx[i]
		if err := packet.Parse(s.bufs[i][:s.sizes[i]], s.linkType, p); err != nil {
			r := packet.ReasonOf(err)
			if r == packet.ReasonUnsupportedEtherType && s.kernTap {
				s.kernelKeeps(i) // LLDP, 802.1X, ...: the kernel's protocols
				continue
			}
			s.stats.ParseDrops[r]++
			s.capParseDrop(i, err)
			continue
		}
		if p.IPVersion == 0 { // ARP: the resolver's, or the host port's business
			if s.l2.nb == nil || !s.neighFrame(i) {
				s.noFlow(i)
			}
			continue
		}
		if p.IPVersion == 6 && p.Proto == packet.ProtoICMPv6 && s.l2.nb != nil && s.neighFrame(i) {
			continue // NS or NA
		}
		if p.IsFragment() {
			s.frag.idx = append(s.frag.idx, int32(i)) // reassembled after the batch's lookups (frag.go)
			continue
		}
		s.start[i] = int32(p.L3Off)
		s.length[i] = int32(p.IPLen)
		s.flags[i] = p.Flags
		k := &s.keys[m]
		s.rxKey(i, p, k)
		if m == 0 || !k.Equal(&s.keys[m-1]) {
			m++
		}
		s.cand[c], s.keyOf[c] = int32(i), int32(m-1)
		c++
	}
	s.table.LookupBatch(s.keys[:m], s.ents)
	for x, i := range s.cand[:c] {
		q := s.queueFor(s.ents[s.keyOf[x]])
		if q < 0 {
			s.noFlow(int(i))
			continue
		}
		fq := &s.queues[q]
		fq.pkts = append(fq.pkts, i)
		if len(fq.pkts) == s.limit {
			s.release(fq)
		}
	}
	clear(s.ents[:m]) // keep no entry alive past the batch
	for i := range s.queues[:s.nq] {
		if fq := &s.queues[i]; len(fq.pkts) > 0 {
			s.release(fq)
		}
	}
	if len(s.frag.idx) > 0 {
		s.rxFragments()
	}
	if s.capt.on {
		s.capAppRx()
	}
	for _, p := range s.touchedPorts {
		if len(p.pending) > 0 { // nothing staged when every Alloc failed
			k := p.ch.Deliver(p.pending)
			s.stats.Deliveries++
			s.stats.Delivered += uint64(k)
			p.delivered += uint64(k)
		}
		clear(p.pending) // drop the references into shared memory
		p.pending = p.pending[:0]
		p.touched = false
	}
	clear(s.touchedPorts)
	s.touchedPorts = s.touchedPorts[:0]
	for i := range s.queues[:s.nq] {
		s.queues[i].e, s.queues[i].p = nil, nil
	}
	s.nq = 0
	if err := s.flushHost(); err != nil {
		return err
	}
	_, err := s.l2.flush(s)
	return err
}

// queueFor returns the index of e's flow queue in this batch, creating it on
// the flow's first packet, or -1 if e is nil (no flow) or its port is gone.
func (s *Switch) queueFor(e *flow.Entry) int32 {
	if e == nil {
		return -1
	}
	m := e.Mark()
	if m.Gen == s.gen {
		return m.Slot
	}
	id := e.Port()
	if int(id) >= len(s.ports) || s.ports[id] == nil {
		return -1
	}
	q := int32(s.nq)
	s.nq++
	fq := &s.queues[q]
	fq.e, fq.p, fq.pkts = e, s.ports[id], fq.pkts[:0]
	m.Gen, m.Slot = s.gen, q
	return q
}

// release processes one flow batch: one Alloc on the owner's channel for all
// of it, a copy of each packet (or of each run of TCP segments merged into a
// super packet, merge.go) with the flow ID stamped in its metadata, and the
// buffers staged for the end-of-batch Deliver. The queue is emptied, so
// later packets of the flow in the same input batch form a new flow batch.
func (s *Switch) release(fq *flowQueue) {
	p := fq.p
	if isListener(fq.e) {
		if s.listenAdmit(fq); len(fq.pkts) == 0 {
			return
		}
	}
	s.stats.FlowBatches++
	runs := s.capAdmit(p, fq.pkts, s.planRuns(fq.pkts, p.bufSize)) // rxAdmit, captured
	out := s.allocBuf[:len(runs)]
	got := p.ch.Alloc(out)
	meta := p.ch.Pool()
	id := fq.e.ID()
	var (
		pkts, bytes uint64 // delivered, for the flow's counters
		last        packet.TCPFlags
	)
	at := 0 // fq.pkts[at] is the first packet of run j
	for j, rl := range runs {
		seg := fq.pkts[at : at+int(rl)]
		at += int(rl)
		if j >= got {
			s.stats.AllocFails += uint64(rl)
			s.capRxPkts(p, seg, "alloc_fail")
			continue
		}
		b := out[j]
		if rl > 1 {
			b.Data = b.Data[:s.merge(b.Data, seg)]
			s.stats.SuperPackets++
			s.hist.super.Observe(float64(len(b.Data)))
			s.stats.Merged += uint64(rl - 1)
		} else {
			i := seg[0]
			start, n := int(s.start[i]), int(s.length[i])
			if n > len(b.Data) {
				done, counted := s.rxSplit(p, b, i, &id) // a super packet, in pieces (rxgso.go)
				if done {
					bytes += uint64(n)
					pkts++
					last = s.flags[i]
					continue
				}
				if !counted {
					s.stats.Oversize++
					s.capRxPkts(p, seg, "oversize")
				}
				p.ch.Release(out[j : j+1])
				continue
			}
			copy(b.Data, s.bufs[i][start:start+n])
			b.Data = b.Data[:n]
			if n > s.tx.mtu { // read whole from the link (rxgso.go)
				s.stats.SuperPackets++
				s.hist.super.Observe(float64(n))
			}
		}
		b.Flags = s.rxFlags()
		m := meta.UserMeta(b.Index)
		copy(m[channel.RxMetaFlowIDOff:channel.RxMetaFlowIDOff+channel.RxMetaFlowIDLen], id[:])
		clear(m[channel.RxMetaFlowIDOff+channel.RxMetaFlowIDLen:])
		for _, i := range seg {
			bytes += uint64(s.length[i])
		}
		pkts += uint64(len(seg))
		last = s.flags[seg[len(seg)-1]]
		p.pending = append(p.pending, b)
	}
	if pkts > 0 {
		fq.e.AddIn(pkts, bytes, last)
	}
	clear(out)
	fq.pkts = fq.pkts[:0]
	if !p.touched {
		p.touched = true
		s.touchedPorts = append(s.touchedPorts, p)
	}
}
