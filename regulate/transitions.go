package regulate

// The Queue's side of flow advisories and per-flow lookups.

// observe feeds the advisory policy what flow id looks like now. Every
// flow is observed; only those with an advisory have changes to report.
func (q *Queue) observe(id int32, now int64) {
	f := &q.flows[id]
	var delay int64
	if f.head >= 0 {
		delay = max(now-q.pts[f.head], 0)
	}
	o := Observation{Now: now, Delay: delay, Packets: f.packets, Bytes: f.bytes, QueueLen: q.packets, ActiveFlows: q.active}
	if !q.policy.Observe(&f.adv, o) || !f.hasAdv {
		return
	}
	if f.adv.suspended {
		q.stats.Suspends++
	} else {
		q.stats.Resumes++
	}
	q.markPending(id)
}

func (q *Queue) markPending(id int32) {
	if f := &q.flows[id]; !f.pending {
		f.pending = true
		q.pending.push(id)
	}
}

// Transitions fills dst with the advisory changes since the last call, at
// most len(dst), and returns how many. Changes coalesce: a flow appears at
// most once, with its state now, and not at all if it came back to the
// state last reported. Call it after each Enqueue or Dequeue batch and
// publish each change (channel.SetAdvisory); until a resume is reported the
// flow's slot stays reserved.
func (q *Queue) Transitions(dst []Transition) int {
	n := 0
	for n < len(dst) && q.pending.n > 0 {
		id := q.pending.pop()
		f := &q.flows[id]
		f.pending = false
		if f.mapped && f.hasAdv && f.adv.suspended != f.reported {
			f.reported = f.adv.suspended
			dst[n] = Transition{Ref: f.ref, Suspended: f.reported}
			n++
		}
		q.settle(id)
	}
	return n
}

// Forget discards the flow of token (its packets are counted as Forgotten)
// and its state, and returns how many packets it discarded. Call it when
// the flow is torn down, before its token can name another flow. No
// transition is reported: the owner of the advisory table clears the
// entry of a flow it tears down. Packets the flow queued in the shared
// flow, when it found every slot busy, are not discarded: they leave in
// their turn.
func (q *Queue) Forget(token uint32) int {
	id := q.find(uint64(token))
	if id < 0 {
		return 0
	}
	f := &q.flows[id]
	n := 0
	for b := q.popHead(f); b >= 0; b = q.popHead(f) {
		q.freeBuf(b)
		n++
	}
	q.stats.Forgotten += uint64(n)
	q.unindex(id)
	f.hasAdv, f.adv, f.reported = false, AdvisoryState{}, false
	q.settle(id)
	return n
}

// Flow describes the flow of token at now; ok is false when the queue
// holds no state for it. Flows with no token are not addressable.
func (q *Queue) Flow(token uint32, now int64) (s FlowStats, ok bool) {
	id := q.find(uint64(token))
	if id < 0 {
		return FlowStats{}, false
	}
	f := &q.flows[id]
	s = FlowStats{
		Packets: f.packets, Bytes: f.bytes, Sojourn: f.sojourn, Suspended: f.adv.suspended,
		Dropping: f.codel.dropping, Count: f.codel.count, DropNext: f.codel.dropNext,
		CoDelDrops: f.codelDrops, OverflowDrops: f.overflowDrops, ECNMarks: f.ecnMarks,
	}
	if f.head >= 0 {
		s.Delay = max(now-q.pts[f.head], 0)
	}
	return s, true
}

// find returns the slot mapped to key, or -1. Key 0 (no token) is never
// mapped.
func (q *Queue) find(key uint64) int32 {
	if key == 0 {
		return -1
	}
	mask := uint64(len(q.index) - 1)
	for h := Mix(key^q.seed) & mask; ; h = (h + 1) & mask {
		s := q.index[h]
		if s < 0 {
			return -1
		}
		if q.flows[s].key == key {
			return s
		}
	}
}
