package flowswitch

import (
	"github.com/skylane/skylane/regulate"
)

// Receive limits per channel (docs/design.md §7, "receive limited per channel").
//
// Unlike transmit, receive cannot defer: the link's buffers are reused by
// the next input batch, so a packet a channel may not take now is dropped.
// The limits therefore drop before the copy, so that what a channel cannot
// or may not take costs the nexus neither a copy nor a pool buffer, and the
// other channels of the batch are served exactly as before. Three limits,
// checked in this order on a flow batch's output packets (ring slots: a
// merged super packet is one), each admitting a prefix so that order within
// the flow is kept:
//
//   - the RX ring's room, always: what a full ring would tail-drop after
//     the copy is refused before it, counted as the channel's RxDrops (the
//     same figure Deliver's tail drops go to, which the stall check reads);
//   - RegulationOptions.RxBudget: the most ring slots one channel takes per
//     input batch (RxBudgetDrops);
//   - AddPortOptions.RxRate: a token bucket on the IP bytes delivered to the
//     channel (RxRateDrops), for an app that must not take more than its
//     share of the nexus's receive work whatever its peers send.

// portRx is a port's receive-limit state.
type portRx struct {
	gen    uint64 // the input batch room and used refer to
	room   int    // ring slots free at the port's first flow batch of gen
	used   int    // slots admitted in gen so far
	bucket *regulate.TokenBucket
	rate   int64 // bits/s; 0 without a bucket

	budgetDrops, rateDrops uint64 // packets

	// heavy caps the listener SYNs of heavy sources (rxlisten.go),
	// made on the port's first flow batch over its lines (heavyOn).
	heavy   regulate.TokenBucket
	heavyOn bool
	// synsOut counts the listener SYNs admitted whose SYN-ACK the app
	// did not send yet, halved at synsAt + listenDecay (rxlisten.go).
	synsOut int
	synsAt  int64
}

// rxAdmit trims runs (the output packets planned for the flow batch pkts
// of port p) to the prefix p may take now, counts what it refused, and
// returns the prefix.
func (s *Switch) rxAdmit(p *port, pkts []int32, runs []int32) []int32 {
	r := &p.rx
	if r.gen != s.gen {
		r.gen, r.used = s.gen, 0
		r.room = p.ch.RxRoom(s.batch)
	}
	n := min(len(runs), r.room-r.used)
	if n < len(runs) {
		p.ch.RefuseRx(len(runs) - n)
	}
	if b := s.rxBudget; b > 0 && r.used+n > b {
		k := max(b-r.used, 0)
		d := packetsIn(runs[k:n])
		r.budgetDrops += d
		s.stats.RxBudgetDrops += d
		n = k
	}
	if r.bucket != nil && n > 0 {
		now, at := s.now(), 0
		for j := range n {
			bytes := 0
			for _, i := range pkts[at : at+int(runs[j])] {
				bytes += int(s.length[i])
			}
			if !r.bucket.Allow(bytes, now) {
				d := packetsIn(runs[j:n])
				r.rateDrops += d
				s.stats.RxRateDrops += d
				n = j
				break
			}
			at += int(runs[j])
		}
	}
	r.used += n
	return runs[:n]
}

// packetsIn returns how many input packets runs stand for.
func packetsIn(runs []int32) uint64 {
	var n uint64
	for _, r := range runs {
		n += uint64(r)
	}
	return n
}
