package regulate

import (
	"fmt"

	"github.com/skylane/skylane/histogram"
	"github.com/skylane/skylane/packet"
)

// Queue is a netif's transmit queue (docs/design.md §7): fq_codel after RFC 8290.
// Enqueue copies each frame into the queue's slab and files it under its
// flow; Dequeue serves the flows by deficit round robin (a Quantum of bytes
// per turn, flows that just became active first) and runs CoDel on each
// flow. The advisory policy watches every flow: one it would hold back is
// suspended if it has an advisory (reported by Transitions; CoDel leaves
// it alone, so it loses nothing), and otherwise has its arrivals dropped
// at Enqueue (early drop) until it would be resumed. On overflow the
// fattest flow loses packets from its head, the oldest and so least useful
// ones.
//
// A Queue belongs to one goroutine (the nexus's transmit loop).
type Queue struct {
	// sojournHist: the sojourn of every packet dequeued, in seconds.
	sojournHist histogram.H

	// dropHook, if set, sees each packet the queue drops (SetDropHook).
	dropHook func(frame []byte, reason string)

	// Immutable after New.
	limit, quantum, dropBatch, batch, maxFrame int
	target, interval                           int64 // ns
	ecn                                        bool
	linkType                                   packet.LinkType
	seed                                       uint64
	policy                                     AdvisoryPolicy

	// The slab: packet b is mem[b*maxFrame:][:plen[b]], queued at pts[b],
	// followed in its flow by pnext[b] (-1 at the tail). A chain of slab
	// indices rather than a slice per flow: a ring per flow would need
	// Limit entries each to take a single-flow burst.
	mem   []byte
	plen  []int32
	pts   []int64
	pnext []int32
	alias []bool  // packet of a keyed flow that found no slot, in the shared flow
	free  []int32 // stack of free packet buffers
	lent  []int32 // buffers the last Dequeue handed out, freed by the next

	flows              []flowSlot // [0] is the shared flow
	index              []int32    // key -> slot, open addressing, -1 empty; len a power of two
	freeSlots          []int32
	idle               ring // idle slots, oldest first
	newFlows, oldFlows ring // DRR lists
	pending            ring // slots whose advisory changed since the last Transitions

	packets, bytes, active int // totals: packets, frame bytes, flows with packets
	aliased                int // packets with alias set
	stats                  Stats
	views                  [][]byte // DequeueCopy's scratch
}

// Tag is what the transmit path knows of a frame's flow.
type Tag struct {
	// Token is the flow's token (flow.Entry.Token), or 0 when the frame
	// belongs to no registered flow: the queue then hashes its 5-tuple.
	Token uint32
	// HasAdvisory says Advisory names the flow's advisory entry: the flow
	// can be paused, so it is suspended rather than dropped. A flow keeps
	// the first advisory it was given until it is forgotten. A flow that
	// finds every slot busy (Stats.Shared) is queued without it.
	HasAdvisory bool
	Advisory    AdvisoryRef
}

// Stats are a Queue's counters since New, and its current occupancy.
type Stats struct {
	Enqueued      uint64 // frames accepted by Enqueue
	Dequeued      uint64 // frames returned by Dequeue
	CoDelDrops    uint64 // dropped by CoDel at Dequeue
	OverflowDrops uint64 // dropped from the fattest flow's head on overflow
	EarlyDrops    uint64 // refused by Enqueue: flow without advisory held back by the policy
	Refused       uint64 // refused by Enqueue: empty, or longer than MaxFrame
	Forgotten     uint64 // discarded by Forget
	ECNMarks      uint64 // marked CE instead of dropped
	Suspends      uint64 // decisions on flows with advisory (before Transitions coalesces them)
	Resumes       uint64
	Shared        uint64 // frames filed in the shared flow because every slot was busy

	Packets, Bytes, ActiveFlows int // now
}

// FlowStats describe one flow of the queue.
type FlowStats struct {
	Packets, Bytes int
	Delay          int64 // ns the oldest queued packet has waited; 0 if none
	Sojourn        int64 // ns the last dequeued packet waited
	Suspended      bool  // held back by the policy: suspended, or early-dropping without advisory
	Dropping       bool  // CoDel's dropping state
	Count          uint32
	DropNext       int64 // when CoDel drops next, while Dropping

	CoDelDrops, OverflowDrops, ECNMarks uint64 // since the slot took this flow
}

// maxSlab bounds the slab so a configuration cannot ask for more memory
// than a nexus should hold for one queue.
const maxSlab = 1 << 31

// New returns an empty Queue. Every option is checked; errors wrap
// ErrInvalid.
func New(opts Options) (*Queue, error) {
	o, maxFrame, err := opts.resolve()
	if err != nil {
		return nil, fmt.Errorf("regulate.New: %w", err)
	}
	nbuf := o.Limit + o.Batch
	if nbuf*maxFrame > maxSlab {
		return nil, fmt.Errorf("regulate.New: %w: (limit %d + batch %d) × frame %d bytes exceeds %d", ErrInvalid, o.Limit, o.Batch, maxFrame, maxSlab)
	}
	slots := o.Flows + 1 // plus the shared flow
	q := &Queue{
		limit: o.Limit, quantum: o.Quantum, dropBatch: o.DropBatch, batch: o.Batch, maxFrame: maxFrame,
		target: int64(o.Target), interval: int64(o.Interval), ecn: o.ECN,
		linkType: o.LinkType, seed: o.HashSeed, policy: o.Advisory,

		mem:   make([]byte, nbuf*maxFrame),
		plen:  make([]int32, nbuf),
		pts:   make([]int64, nbuf),
		pnext: make([]int32, nbuf),
		alias: make([]bool, nbuf),
		free:  make([]int32, nbuf),
		lent:  make([]int32, 0, o.Batch),

		flows:     make([]flowSlot, slots),
		index:     make([]int32, indexSize(slots)),
		freeSlots: make([]int32, 0, slots),
		idle:      newRing(slots),
		newFlows:  newRing(slots),
		oldFlows:  newRing(slots),
		pending:   newRing(slots),
		views:     make([][]byte, o.Batch),
	}
	for i := range q.free {
		q.free[i] = int32(nbuf - 1 - i) // pop order 0, 1, 2...: deterministic
	}
	for i := range q.index {
		q.index[i] = -1
	}
	for i := range q.flows {
		q.flows[i].reset()
	}
	for i := slots - 1; i > sharedFlow; i-- {
		q.freeSlots = append(q.freeSlots, int32(i))
	}
	q.sojournHist = histogram.New(SojournBounds...)
	return q, nil
}

// indexSize is the power of two at least twice n: probe runs stay short
// at a load factor of at most one half.
func indexSize(n int) int {
	s := 1
	for s < 2*n {
		s <<= 1
	}
	return s
}

// MaxFrame is the longest frame Enqueue takes: netif.MaxFrameLen(MTU,
// LinkType). Immutable.
func (q *Queue) MaxFrame() int { return q.maxFrame }

// Len is the number of packets queued.
func (q *Queue) Len() int { return q.packets }

// Stats returns the counters.
// SojournBounds are the sojourn histogram's buckets, in seconds: from
// 50 µs, well under the default target, to a second.
var SojournBounds = []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1}

// Sojourn returns the histogram of the sojourn of every packet dequeued,
// in seconds (it allocates: a control path's call).
func (q *Queue) Sojourn() histogram.Snapshot { return q.sojournHist.Snapshot() }

func (q *Queue) Stats() Stats {
	s := q.stats
	s.Packets, s.Bytes, s.ActiveFlows = q.packets, q.bytes, q.active
	return s
}

// Drop reasons as the drop counters name them (the flowswitch's
// snapshot), passed to a drop hook.
const (
	ReasonCoDel    = "aqm_codel"
	ReasonOverflow = "aqm_overflow"
	ReasonEarly    = "aqm_early"
)

// SetDropHook makes the queue show h every packet it drops or refuses
// (CoDel, overflow, early drops and refusals), with its drop counter's
// name, before the packet's buffer is reused; frame is valid only during
// the call. A capture uses it to see what the AQM drops. nil (the default)
// turns it off, at the cost of one branch per dropped packet.
func (q *Queue) SetDropHook(h func(frame []byte, reason string)) { q.dropHook = h }

// dropped shows packet b to the drop hook, if any.
func (q *Queue) dropped(b int32, reason string) {
	if q.dropHook != nil {
		q.dropHook(q.frame(b), reason)
	}
}

// frame returns packet b's bytes in the slab.
func (q *Queue) frame(b int32) []byte {
	o := int(b) * q.maxFrame
	e := o + int(q.plen[b])
	return q.mem[o:e:e]
}

// Enqueue copies frame into the queue as the newest packet of its flow and
// reports whether it was accepted. It refuses an empty frame or one longer
// than MaxFrame (Refused), and a packet of a flow without advisory that the
// policy holds back (EarlyDrops: the flow's oldest packet waited Target for
// an Interval, or it overwhelms the queue) unless ECN is on and the packet
// is ECN-capable (then marked CE and accepted). A full queue first drops
// from the head of its fattest flow, so an accepted packet may cost
// another one. frame stays the caller's. now is the enqueue time in ns, on
// the clock Dequeue gets.
func (q *Queue) Enqueue(frame []byte, tag Tag, now int64) bool {
	n := len(frame)
	if n == 0 || n > q.maxFrame {
		q.stats.Refused++
		if q.dropHook != nil && n > 0 {
			q.dropHook(frame, ReasonEarly)
		}
		return false
	}
	id, keyed := int32(sharedFlow), true
	if tag.Token != 0 {
		id = q.lookup(uint64(tag.Token))
	} else if h, ok := flowHash(frame, q.linkType, q.seed); ok {
		id = q.lookup(hashedKey | uint64(h))
	} else {
		keyed = false
	}
	f := &q.flows[id]
	if tag.HasAdvisory && id != sharedFlow && !f.hasAdv {
		f.hasAdv, f.ref = true, tag.Advisory
		if f.adv.suspended {
			q.markPending(id) // held back before it had an advisory: tell the app now
		}
	}
	early := false
	if !f.hasAdv {
		// The policy holds back a flow without advisory as it would
		// suspend one with: its arrivals are dropped while it is held.
		q.observe(id, now)
		early = f.adv.suspended
		if early && (!q.ecn || !ecnCapable(frame, q.linkType)) {
			q.stats.EarlyDrops++
			if q.dropHook != nil {
				q.dropHook(frame, ReasonEarly)
			}
			q.settle(id) // a fresh slot the policy held at once stays reusable
			return false
		}
	}
	if q.packets >= q.limit {
		q.overflow()
	}

	b := q.free[len(q.free)-1]
	q.free = q.free[:len(q.free)-1]
	o := int(b) * q.maxFrame
	copy(q.mem[o:o+n], frame)
	q.plen[b], q.pts[b], q.pnext[b] = int32(n), now, -1
	if keyed && id == sharedFlow {
		q.alias[b] = true
		q.aliased++
	}
	if f.tail >= 0 {
		q.pnext[f.tail] = b
	} else {
		f.head = b
	}
	f.tail = b
	if f.packets == 0 {
		q.active++
	}
	f.packets++
	f.bytes += n
	q.packets++
	q.bytes += n
	if f.list == onNoList {
		// A flow that was not waiting joins the new list with a full
		// quantum: sparse flows are served ahead of the bulk.
		f.list, f.deficit = onNewList, q.quantum
		q.newFlows.push(id)
	}
	if early {
		markCE(q.frame(b), q.linkType)
		q.stats.ECNMarks++
		f.ecnMarks++
	}
	q.stats.Enqueued++
	if f.hasAdv {
		q.observe(id, now)
	}
	return true
}

// overflow drops packets from the head of the flow holding the most bytes:
// at least one, at most DropBatch, stopping once half its bytes are gone
// (Linux fq_codel_drop). A flow with an advisory is suspended too: it is
// overwhelming the queue.
func (q *Queue) overflow() {
	fat, most := int32(-1), 0
	for _, l := range [2]*ring{&q.newFlows, &q.oldFlows} {
		for i := range l.n {
			if id := l.at(i); q.flows[id].bytes > most {
				fat, most = id, q.flows[id].bytes
			}
		}
	}
	if fat < 0 {
		return // unreachable: a full queue has a flow with bytes on a list
	}
	f := &q.flows[fat]
	half, dropped := f.bytes/2, 0
	for i := 0; i < q.dropBatch && f.packets > 0 && (i == 0 || dropped < half); i++ {
		b := q.popHead(f)
		dropped += int(q.plen[b])
		q.dropped(b, ReasonOverflow)
		q.freeBuf(b)
		q.stats.OverflowDrops++
		f.overflowDrops++
	}
	if f.hasAdv && q.policy.Suspend(&f.adv, f.packets) {
		q.stats.Suspends++
		q.markPending(fat)
	}
}

// Dequeue fills frames[:n] with the next packets to send, at most
// min(len(frames), Options.Batch), and returns n. The frames are views of
// the queue's slab, valid until the next Dequeue or DequeueCopy: pass them
// to Link.Write (which copies) before calling again. now is in ns.
func (q *Queue) Dequeue(frames [][]byte, now int64) int {
	for _, b := range q.lent {
		q.freeBuf(b)
	}
	q.lent = q.lent[:0]
	n := 0
	for n < len(frames) && n < q.batch {
		b := q.next(now)
		if b < 0 {
			break
		}
		frames[n] = q.frame(b)
		q.lent = append(q.lent, b)
		n++
	}
	return n
}

// DequeueCopy is Dequeue into caller-owned buffers, shaped like
// netif.Link.Read: it copies up to min(len(bufs), len(sizes), Batch)
// packets, packet i into bufs[i] with its length in sizes[i], stopping
// before the first buffer shorter than MaxFrame.
func (q *Queue) DequeueCopy(bufs [][]byte, sizes []int, now int64) int {
	m := min(len(bufs), len(sizes), q.batch)
	for i := range m {
		if len(bufs[i]) < q.maxFrame {
			m = i
			break
		}
	}
	n := q.Dequeue(q.views[:m], now)
	for i := range n {
		sizes[i] = copy(bufs[i], q.views[i])
	}
	clear(q.views[:n])
	return n
}

// next runs deficit round robin (RFC 8290 §4.2) and returns the slab index
// of the packet to send, or -1 when the queue is empty.
func (q *Queue) next(now int64) int32 {
	for {
		l := &q.newFlows
		if l.n == 0 {
			if q.oldFlows.n == 0 {
				return -1
			}
			l = &q.oldFlows
		}
		id := l.peek()
		f := &q.flows[id]
		if f.deficit <= 0 {
			// Turn over: a new quantum, and the back of the old list.
			f.deficit += q.quantum
			l.pop()
			f.list = onOldList
			q.oldFlows.push(id)
			continue
		}
		b := q.codelDequeue(id, now)
		q.observe(id, now)
		if b < 0 {
			l.pop()
			// An emptied new flow goes to the old list if any flow waits
			// there, so a flow cannot starve the old list by coming back
			// as "new" after every packet (RFC 8290 §4.2).
			if l == &q.newFlows && q.oldFlows.n > 0 {
				f.list = onOldList
				q.oldFlows.push(id)
			} else {
				f.list = onNoList
				q.settle(id)
			}
			continue
		}
		f.deficit -= int(q.plen[b])
		q.stats.Dequeued++
		return b
	}
}

// popHead unlinks the oldest packet of f and returns its slab index, or -1.
func (q *Queue) popHead(f *flowSlot) int32 {
	b := f.head
	if b < 0 {
		return -1
	}
	f.head = q.pnext[b]
	if f.head < 0 {
		f.tail = -1
	}
	if q.alias[b] {
		q.alias[b] = false
		q.aliased--
	}
	n := int(q.plen[b])
	f.packets--
	f.bytes -= n
	q.packets--
	q.bytes -= n
	if f.packets == 0 {
		q.active--
	}
	return b
}

// take is popHead for a packet on its way out: it records the sojourn.
func (q *Queue) take(f *flowSlot, now int64) int32 {
	b := q.popHead(f)
	if b >= 0 {
		f.sojourn = max(now-q.pts[b], 0) // a clock that went back counts as no wait
		q.sojournHist.Observe(float64(f.sojourn) / 1e9)
	}
	return b
}

func (q *Queue) freeBuf(b int32) { q.free = append(q.free, b) }
