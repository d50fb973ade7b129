package flowswitch

import (
	"errors"
	"fmt"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/regulate"
)

// writeDirect writes frames to the device outside the AQM (neighbour
// answers and solicitations, packets the resolver held), charging the
// pacer so the link's rate is kept overall.
func (s *Switch) writeDirect(frames [][]byte) (int, error) {
	w, err := s.link.Write(frames)
	if r := s.reg; r != nil && r.paced && w > 0 {
		bytes := 0
		for _, f := range frames[:w] {
			bytes += len(f)
		}
		r.link.charge(bytes, s.now())
	}
	return w, err
}

// enqueue files the output batch of port p (t.out, its runs) in the AQM,
// and counts what the queue accepted per flow, port and switch. now is the
// enqueue time.
func (s *Switch) enqueue(p *port, now int64) {
	t, q := &s.tx, s.reg.q
	var total, pkts uint64
	j := 0
	for _, r := range t.runs {
		e := r.e
		tag := regulate.Tag{Token: e.Token(), HasAdvisory: p.reg.adv && e.AdvisoryIndex() != flow.NoAdvisory,
			Advisory: regulate.AdvisoryRef{Port: uint32(p.id), Index: e.AdvisoryIndex()}}
		var n, bytes uint64
		var last packet.TCPFlags
		for x := j; x < j+r.n; x++ {
			ok := false
			if seg := t.outSeg[x]; seg != 0 {
				ok = s.enqueueSuper(t.out[x], seg, tag, now) // cut into wire frames (txgso.go)
			} else {
				ok = q.Enqueue(t.out[x], tag, now)
			}
			if ok {
				n++
				bytes += uint64(len(t.out[x]) - t.l2Len)
				last = t.flags[x]
			}
		}
		if n > 0 {
			e.AddOut(n, bytes, last)
		}
		pkts += n
		total += bytes
		j += r.n
	}
	p.tx.packets += pkts
	p.tx.bytes += total
	s.stats.TxPackets += pkts
	s.stats.TxBytes += total
	if p.reg.bucket != nil {
		p.reg.bucket.charge(int(total), now)
	}
}

// enqueueHost files frames from the host port in the AQM: no token (the
// queue hashes the 5-tuple), no advisory (the kernel is not told).
func (s *Switch) enqueueHost(frames [][]byte, now int64) int {
	r := s.reg
	w := 0
	for _, f := range frames {
		if r.q.Enqueue(f, regulate.Tag{}, now) {
			w++
		}
	}
	r.stats.HostQueued += uint64(w)
	r.stats.HostDrops += uint64(len(frames) - w)
	return w
}

// regFlush drains the AQM into the device, as fast as the pacer allows
// (or until the device refuses, unpaced), then publishes the advisory
// changes. It returns the frames written.
func (s *Switch) regFlush(now int64) (int, error) {
	r := s.reg
	r.full = false
	total := 0
	var err error
	for r.q.Len() > 0 {
		k := len(r.views)
		if r.paced {
			c := r.link.credit(now)
			if c <= 0 {
				r.stats.Paced++
				break
			}
			// As many frames as the credit surely covers, at least one:
			// the debt is then at most one frame.
			k = int(min(int64(k), max(c/int64(r.maxFrame), 1)))
		}
		n := r.q.Dequeue(r.views[:k], now)
		if n == 0 {
			break
		}
		bytes := 0
		for _, f := range r.views[:n] {
			bytes += len(f)
		}
		if r.paced {
			r.link.charge(bytes, now)
		}
		var w int
		w, err = s.link.Write(r.views[:n])
		r.stats.LinkPackets += uint64(w)
		r.stats.LinkDrops += uint64(n - w)
		if w == n {
			r.stats.LinkBytes += uint64(bytes)
		} else {
			for _, f := range r.views[:w] {
				r.stats.LinkBytes += uint64(len(f))
			}
		}
		total += w
		if err != nil {
			err = fmt.Errorf("flowswitch tx: %w", err)
			break
		}
		if w < n {
			r.full = true // the device is full: give it time
			break
		}
	}
	s.publishTransitions()
	return total, err
}

// publishTransitions writes the queue's advisory changes into the owning
// channels' tables; each change posts an EventAdvisory to the app.
func (s *Switch) publishTransitions() {
	r := s.reg
	for {
		n := r.q.Transitions(r.trans)
		for _, tr := range r.trans[:n] {
			p := s.portOf(flow.PortID(tr.Ref.Port))
			if p == nil {
				continue // the port is gone, and its table with it
			}
			state := channel.AdvisoryNone
			if tr.Suspended {
				state = channel.AdvisorySuspended
			}
			if p.ch.SetAdvisory(int(tr.Ref.Index), state) != nil {
				r.stats.AdvisoryErrors++
				continue
			}
			if tr.Suspended {
				r.stats.Suspends++
				p.reg.st.Suspends++
			} else {
				r.stats.Resumes++
				p.reg.st.Resumes++
			}
		}
		if n < len(r.trans) {
			return
		}
	}
}

// txRound is TxSync with Regulation: one round over the ports, round robin
// with per-port budgets (regulate.RoundRobin), then the queue is flushed.
// A port whose token bucket is empty sits the round out. The ports whose
// apps honour advisories share, evenly and in rotation (their own
// RoundRobin, whose total is the room), the room left under the queue's
// high-water mark (back-pressure, see the top of the file); the others
// are served first, each up to its budget: what they send beyond their
// share the AQM drops.
func (s *Switch) txRound() (int, error) {
	r := s.reg
	now := s.now()
	if len(r.ready) < len(s.ports) {
		// AddPort grew the port table (control plane): grow the scratch
		// once per new port, not per round.
		r.ready = make([]bool, len(s.ports))
		r.readyAdv = make([]bool, len(s.ports))
		r.grants = make([]regulate.Grant, len(s.ports))
	}
	// Flush first too: serving the ports can take a while (a full round
	// is hundreds of packets), and the link must not wait for it.
	if _, err := s.regFlush(now); err != nil {
		return 0, err
	}
	room := r.highWater - r.q.Len()
	for id, p := range s.ports {
		r.ready[id], r.readyAdv[id] = false, false
		switch {
		case p == nil:
		case p.reg.bucket != nil && p.reg.bucket.credit(now) <= 0:
			r.stats.RateLimited++
			p.reg.st.Limited++
		case p.reg.adv && room <= 0:
			r.stats.Backpressured++
			p.reg.st.Backpress++
		case p.reg.adv:
			r.readyAdv[id] = true
		default:
			r.ready[id] = true
		}
	}
	r.stats.Rounds++
	ports := len(s.ports)
	g := r.rr.Round(r.ready[:ports], r.roundLi, r.grants)
	total, err := s.serve(r.grants[:g], now)
	if err != nil {
		return total, err
	}
	if room = r.highWater - r.q.Len(); room > 0 {
		limit := room
		if r.roundLi > 0 {
			limit = min(limit, r.roundLi)
		}
		g = r.rrAdv.Round(r.readyAdv[:ports], limit, r.grants)
		n, err := s.serve(r.grants[:g], now)
		total += n
		if err != nil {
			return total, err
		}
	}
	_, err = s.regFlush(now)
	return total, err
}

// serve takes from each granted port's TX ring, in order, up to its grant
// (and its token bucket's credit), and files the packets in the AQM.
func (s *Switch) serve(grants []regulate.Grant, now int64) (int, error) {
	r := s.reg
	total := 0
	for _, gr := range grants {
		id := flow.PortID(gr.Channel)
		p := s.ports[id]
		if p.reg.bucket != nil {
			// No more packets than the credit surely covers (each is at
			// most an MTU), at least one: the overshoot is one packet.
			c := p.reg.bucket.credit(now) / int64(s.tx.mtu)
			gr.Budget = int(min(int64(gr.Budget), max(c, 1)))
		}
		if p.reg.adv && gr.Budget < r.budget {
			r.stats.Backpressured++ // its share of the room was less than its budget
			p.reg.st.Backpress++
		}
		taken := 0
		for taken < gr.Budget {
			p := s.portOf(id)
			if p == nil {
				break // removed: its channel turned defunct in this round
			}
			want := min(gr.Budget-taken, TxBatch)
			if p.reg.adv {
				// A super packet enters the AQM as its segments: size
				// the chunk by the segments per slot the port had last,
				// so the high-water mark is overshot by at most one
				// misjudged chunk, never by a ring of super packets.
				left := r.highWater - r.q.Len()
				if left <= 0 {
					break
				}
				want = min(want, max(1, left/p.reg.segsPerSlot))
			}
			before := r.q.Len()
			n, err := s.txTake(p, want, now)
			taken += n
			if p.reg.adv && n > 0 {
				p.reg.segsPerSlot = max(1, (r.q.Len()-before+n-1)/n)
			}
			// Tell the apps at once: a suspension seen now keeps the
			// next ports' (and rounds') packets out of the queue.
			s.publishTransitions()
			if err != nil {
				if errors.Is(err, channel.ErrDefunct) {
					break // fails only itself
				}
				return total + taken, err
			}
			if n < want {
				break // the ring is empty
			}
		}
		if p := s.portOf(id); p != nil {
			st := &p.reg.st
			st.Granted += uint64(gr.Budget)
			st.Taken += uint64(taken)
			st.Rounds++
			if taken >= gr.Budget {
				st.FullRounds++
			}
		}
		total += taken
	}
	return total, nil
}
