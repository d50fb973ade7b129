package regulate

import "math"

// CoDel per flow, as RFC 8289's pseudocode and Linux's codel_dequeue
// (include/net/codel_impl.h) have it, with two deliberate differences:
//   - the MAXPACKET guard compares the flow's own backlog, not the whole
//     queue's, because each flow queue is a CoDel queue of its own here
//     (RFC 8290 §4.2: "CoDel ... is applied to each queue");
//   - the control law divides by math.Sqrt instead of Linux's Newton step
//     on a 16-bit fixed-point reciprocal, so drop times are exact and
//     deterministic: the n-th drop of a run follows the previous one by
//     floor(Interval / sqrt(n-1)).
//
// A flow with an advisory bypasses all of it (the advisory policy regulates
// it without losses); its sojourn is still recorded.

// codelState is one flow's CoDel variables (RFC 8289 §5.1 names).
type codelState struct {
	dropping   bool
	aboveSet   bool  // firstAbove is meaningful
	firstAbove int64 // when the sojourn, above target since, may start drops
	dropNext   int64 // when the next drop is due while dropping
	count      uint32
	lastCount  uint32
}

// controlLaw returns t + interval/sqrt(count): the drop rate grows with
// the square root of the drops so far, which suits TCP's throughput
// response to loss (RFC 8289 §3.3).
func controlLaw(t int64, interval int64, count uint32) int64 {
	return t + int64(float64(interval)/math.Sqrt(float64(max(count, 1))))
}

// shouldDrop is RFC 8289's dodequeue verdict for packet b just taken from
// flow f (b < 0: the flow was empty).
func (q *Queue) shouldDrop(f *flowSlot, b int32, now int64) bool {
	c := &f.codel
	if b < 0 {
		c.aboveSet = false
		return false
	}
	if f.sojourn < q.target || f.bytes <= q.maxFrame {
		c.aboveSet = false
		return false
	}
	if !c.aboveSet {
		c.aboveSet, c.firstAbove = true, now+q.interval
		return false
	}
	return now >= c.firstAbove
}

// codelDequeue takes the next packet of flow id that CoDel lets through,
// dropping (or CE-marking) on the way, and returns its slab index or -1.
func (q *Queue) codelDequeue(id int32, now int64) int32 {
	f := &q.flows[id]
	b := q.take(f, now)
	if b < 0 {
		f.codel.dropping = false
		f.codel.aboveSet = false
		return -1
	}
	if f.hasAdv && id != sharedFlow {
		return b
	}
	c := &f.codel
	drop := q.shouldDrop(f, b, now)
	switch {
	case c.dropping && !drop:
		c.dropping = false // sojourn back under target: leave dropping state
	case c.dropping:
		for c.dropping && now >= c.dropNext {
			c.count++
			if q.ecn && markCE(q.frame(b), q.linkType) {
				q.stats.ECNMarks++
				f.ecnMarks++
				c.dropNext = controlLaw(c.dropNext, q.interval, c.count)
				return b
			}
			q.drop(f, b)
			b = q.take(f, now)
			if !q.shouldDrop(f, b, now) {
				c.dropping = false
			} else {
				c.dropNext = controlLaw(c.dropNext, q.interval, c.count)
			}
		}
	case drop:
		if q.ecn && markCE(q.frame(b), q.linkType) {
			q.stats.ECNMarks++
			f.ecnMarks++
		} else {
			q.drop(f, b)
			b = q.take(f, now)
			q.shouldDrop(f, b, now) // for its side effect on firstAbove
		}
		c.dropping = true
		// Re-entering soon after the last dropping state: start from the
		// drop rate that controlled the queue then, not from scratch.
		// (count >= lastCount always; the first test keeps the
		// subtraction from wrapping should that ever break.)
		if c.count > c.lastCount && c.count-c.lastCount > 1 && now-c.dropNext < 16*q.interval {
			c.count -= c.lastCount
		} else {
			c.count = 1
		}
		c.lastCount = c.count
		c.dropNext = controlLaw(now, q.interval, c.count)
	}
	return b
}

// drop frees packet b of flow f, counted as a CoDel drop.
func (q *Queue) drop(f *flowSlot, b int32) {
	q.dropped(b, ReasonCoDel)
	q.freeBuf(b)
	q.stats.CoDelDrops++
	f.codelDrops++
}
