package regulate

// Flow slots. A slot holds one flow: its FIFO of packets (a chain of slab
// indices), its DRR deficit, its CoDel state and its advisory state. Slots
// are found by key through an open-addressing index (linear probing,
// backward-shift deletion: no tombstones, so lookups never degrade).
//
// A slot's life, which settle maintains:
//   - free: unmapped, on the free stack;
//   - busy: on the new or old list (every flow with packets is on one), or
//     waiting in the pending ring for its advisory to be reported, or
//     suspended as last reported;
//   - idle: mapped, empty and none of the above. It keeps its CoDel state,
//     so a flow that comes back soon resumes its drop rate (RFC 8289's
//     count decay); the oldest idle slot is reused when no slot is free.
//
// The shared slot (sharedFlow) is never mapped, freed or reused: it holds
// frames that carry no token and no IP header, and flows that found every
// slot busy. Until the last packet of such a flow has left it, no flow gets
// a new slot (see lookup): that keeps every flow's packets in order.

const sharedFlow = 0

// List membership of a slot.
const (
	onNoList uint8 = iota
	onNewList
	onOldList
)

// Key spaces: a token is its own key; a hashed 5-tuple is tagged above the
// 32 bits of a token so the two never collide.
const hashedKey = 1 << 32

type flowSlot struct {
	key        uint64
	head, tail int32 // slab indices, -1 when empty
	packets    int
	bytes      int
	deficit    int
	list       uint8
	mapped     bool // in the index under key
	inIdle     bool // in the idle ring
	pending    bool // in the pending ring
	reported   bool // Suspended as last returned by Transitions
	hasAdv     bool
	ref        AdvisoryRef
	adv        AdvisoryState
	codel      codelState
	sojourn    int64 // ns the last packet dequeued from this flow waited

	codelDrops, overflowDrops, ecnMarks uint64
}

func (f *flowSlot) reset() {
	*f = flowSlot{head: -1, tail: -1}
}

// ring is a FIFO of slot indices with room for every slot: a slot is in a
// given ring at most once (its list, inIdle or pending field says so).
type ring struct {
	buf     []int32
	head, n int
}

func newRing(n int) ring { return ring{buf: make([]int32, n)} }

func (r *ring) push(v int32) {
	i := r.head + r.n
	if i >= len(r.buf) {
		i -= len(r.buf)
	}
	r.buf[i] = v
	r.n++
}

func (r *ring) peek() int32 { return r.buf[r.head] }

func (r *ring) pop() int32 {
	v := r.buf[r.head]
	r.head++
	if r.head == len(r.buf) {
		r.head = 0
	}
	r.n--
	return v
}

// at returns the i-th element from the head.
func (r *ring) at(i int) int32 {
	i += r.head
	if i >= len(r.buf) {
		i -= len(r.buf)
	}
	return r.buf[i]
}

// lookup returns the slot of key, mapping a slot to it if needed, or the
// shared slot when every slot is busy.
func (q *Queue) lookup(key uint64) int32 {
	if s := q.find(key); s >= 0 {
		return s
	}
	// While the shared flow holds packets of keyed flows, every flow
	// without a slot joins it: a flow whose older packets wait there must
	// not overtake them from a slot of its own.
	id := int32(-1)
	if q.aliased == 0 {
		id = q.allocSlot()
	}
	if id < 0 {
		q.stats.Shared++
		return sharedFlow
	}
	f := &q.flows[id]
	f.key, f.mapped = key, true
	// allocSlot may have unmapped an idle slot, moving index entries:
	// probe again for the insertion point.
	mask := uint64(len(q.index) - 1)
	h := Mix(key^q.seed) & mask
	for q.index[h] >= 0 {
		h = (h + 1) & mask
	}
	q.index[h] = id
	return id
}

// allocSlot returns a reset slot: a free one, else the oldest idle one
// (unmapped first), else -1.
func (q *Queue) allocSlot() int32 {
	if n := len(q.freeSlots); n > 0 {
		id := q.freeSlots[n-1]
		q.freeSlots = q.freeSlots[:n-1]
		return id
	}
	for q.idle.n > 0 {
		id := q.idle.pop()
		f := &q.flows[id]
		f.inIdle = false
		if !q.isIdle(f) {
			continue // busy again since it was queued; settle re-queues it later
		}
		if f.mapped {
			q.unindex(id)
		}
		f.reset()
		return id
	}
	return -1
}

// isIdle reports whether a slot may be reused: off every list and ring,
// empty, and not suspended as far as the nexus knows.
func (q *Queue) isIdle(f *flowSlot) bool {
	return f.list == onNoList && !f.pending && f.packets == 0 && !f.adv.suspended && !f.reported
}

// settle files slot id as free or idle when it has become so. It is called
// whenever a slot leaves a list or the pending ring, or is unmapped.
func (q *Queue) settle(id int32) {
	f := &q.flows[id]
	if id == sharedFlow || f.inIdle || f.list != onNoList || f.pending {
		return
	}
	if !f.mapped {
		f.reset()
		q.freeSlots = append(q.freeSlots, id)
		return
	}
	if q.isIdle(f) {
		f.inIdle = true
		q.idle.push(id)
	}
}

// unindex removes slot id's key from the index by backward-shift deletion:
// each later entry of the probe run moves back into the hole unless its
// home position lies cyclically after the hole.
func (q *Queue) unindex(id int32) {
	mask := uint64(len(q.index) - 1)
	key := q.flows[id].key
	q.flows[id].mapped = false
	h := Mix(key^q.seed) & mask
	for q.index[h] != id {
		if q.index[h] < 0 {
			return // not indexed: nothing to remove
		}
		h = (h + 1) & mask
	}
	hole := h
	for j := (hole + 1) & mask; q.index[j] >= 0; j = (j + 1) & mask {
		home := Mix(q.flows[q.index[j]].key^q.seed) & mask
		// Entry j may fill the hole when its home is not in (hole, j].
		if (j-home)&mask >= (j-hole)&mask {
			q.index[hole] = q.index[j]
			hole = j
		}
	}
	q.index[hole] = -1
}
