package regulate

import (
	"math/rand/v2"
	"testing"
)

// checkInvariants walks the whole Queue and fails t on any inconsistency
// between its slab, flow slots, lists, rings and index: every buffer is in
// exactly one place, totals match the flows, every flow with packets is on
// a DRR list, every slot is free, idle or busy (none leaks), and the index
// maps exactly the mapped slots.
func checkInvariants(t testing.TB, q *Queue) {
	t.Helper()
	nbuf := len(q.plen)
	where := make([]int, nbuf) // 0 unseen, 1 free, 2 lent, 3 queued
	mark := func(b int32, w int) {
		if b < 0 || int(b) >= nbuf {
			t.Fatalf("buffer %d out of range", b)
		}
		if where[b] != 0 {
			t.Fatalf("buffer %d in two places (%d and %d)", b, where[b], w)
		}
		where[b] = w
	}
	for _, b := range q.free {
		mark(b, 1)
	}
	for _, b := range q.lent {
		mark(b, 2)
	}
	packets, bytes, active, aliased := 0, 0, 0, 0
	for id := range q.flows {
		f := &q.flows[id]
		n, sz, last := 0, 0, int32(-1)
		for b := f.head; b >= 0; b = q.pnext[b] {
			mark(b, 3)
			if q.alias[b] {
				if id != sharedFlow {
					t.Fatalf("aliased packet %d in flow %d", b, id)
				}
				aliased++
			}
			n++
			sz += int(q.plen[b])
			last = b
		}
		if n != f.packets || sz != f.bytes || last != f.tail {
			t.Fatalf("flow %d: chain %d packets %d bytes tail %d, slot says %d, %d, %d", id, n, sz, last, f.packets, f.bytes, f.tail)
		}
		if n > 0 {
			active++
			if f.list == onNoList {
				t.Fatalf("flow %d has %d packets and is on no list", id, n)
			}
		}
		if f.list == onNoList && f.adv.suspended {
			t.Fatalf("flow %d suspended off every list: it can never resume", id)
		}
		packets += n
		bytes += sz
	}
	for b, w := range where {
		if w == 0 {
			t.Fatalf("buffer %d leaked", b)
		}
	}
	if aliased != q.aliased {
		t.Fatalf("%d aliased packets, counter says %d", aliased, q.aliased)
	}
	if packets != q.packets || bytes != q.bytes || active != q.active {
		t.Fatalf("totals %d/%d/%d, flows sum to %d/%d/%d", q.packets, q.bytes, q.active, packets, bytes, active)
	}
	if q.packets > q.limit {
		t.Fatalf("%d packets over the limit %d", q.packets, q.limit)
	}

	// Rings: each slot at most once, agreeing with its flags.
	inRing := func(r *ring, name string, ok func(f *flowSlot) bool) map[int32]bool {
		seen := map[int32]bool{}
		for i := range r.n {
			id := r.at(i)
			if seen[id] {
				t.Fatalf("slot %d twice in %s", id, name)
			}
			seen[id] = true
			if !ok(&q.flows[id]) {
				t.Fatalf("slot %d in %s with flags %+v", id, name, q.flows[id])
			}
		}
		return seen
	}
	onNew := inRing(&q.newFlows, "new list", func(f *flowSlot) bool { return f.list == onNewList })
	onOld := inRing(&q.oldFlows, "old list", func(f *flowSlot) bool { return f.list == onOldList })
	inRing(&q.pending, "pending ring", func(f *flowSlot) bool { return f.pending })
	idle := inRing(&q.idle, "idle ring", func(f *flowSlot) bool { return f.inIdle })
	free := map[int32]bool{}
	for _, id := range q.freeSlots {
		f := &q.flows[id]
		if free[id] || f.mapped || f.list != onNoList || f.pending || f.inIdle || f.packets != 0 {
			t.Fatalf("free slot %d: %+v", id, *f)
		}
		free[id] = true
	}
	mapped := 0
	for id := range q.flows {
		f := &q.flows[id]
		if (f.list == onNewList) != onNew[int32(id)] || (f.list == onOldList) != onOld[int32(id)] {
			t.Fatalf("slot %d list %d disagrees with the rings", id, f.list)
		}
		if f.inIdle != idle[int32(id)] {
			t.Fatalf("slot %d inIdle %v disagrees with the ring", id, f.inIdle)
		}
		if id == sharedFlow {
			if f.mapped || f.hasAdv {
				t.Fatalf("shared slot mapped or advised: %+v", *f)
			}
			continue
		}
		busy := f.list != onNoList || f.pending || f.reported || f.adv.suspended
		if !free[int32(id)] && !f.inIdle && !busy {
			t.Fatalf("slot %d leaked: %+v", id, *f)
		}
		if f.mapped {
			mapped++
			if q.find(f.key) != int32(id) {
				t.Fatalf("slot %d key %#x not found in the index", id, f.key)
			}
		}
	}
	inIndex := 0
	for _, s := range q.index {
		if s >= 0 {
			inIndex++
			if !q.flows[s].mapped {
				t.Fatalf("index names unmapped slot %d", s)
			}
		}
	}
	if inIndex != mapped {
		t.Fatalf("index holds %d entries for %d mapped slots", inIndex, mapped)
	}
}

// TestFlowIndexChurn: thousands of flows come and go through 64 slots, so
// index probe runs collide and entries shift back on every removal; after
// each step the index maps exactly the mapped slots (checkInvariants) and
// every queued flow is found under its own token.
func TestFlowIndexChurn(t *testing.T) {
	q := newQueue(t, Options{Flows: 64, Limit: 256, Advisory: quiet})
	rng := rand.New(rand.NewPCG(1, 2))
	queued := map[uint32]int{}
	var buf [8][]byte
	for step := range 20_000 {
		switch rng.IntN(4) {
		case 0, 1:
			tok := 1 + rng.Uint32N(2000)
			if q.Enqueue(build(frameSpec{stream: tok}), Tag{Token: tok}, 0) {
				queued[tok]++
			}
		case 2:
			for _, f := range buf[:q.Dequeue(buf[:1+rng.IntN(8)], 0)] {
				s, _ := trailer(f)
				queued[s]--
			}
		case 3:
			tok := 1 + rng.Uint32N(2000)
			if fs, ok := q.Flow(tok, 0); ok {
				if n := q.Forget(tok); n != fs.Packets {
					t.Fatalf("Forget(%d) = %d, flow held %d", tok, n, fs.Packets)
				}
				queued[tok] -= fs.Packets
			}
		}
		if step%16 == 0 {
			checkInvariants(t, q)
		}
	}
	checkInvariants(t, q)
	for tok, n := range queued {
		if fs, ok := q.Flow(tok, 0); ok && fs.Packets > n {
			t.Fatalf("token %d: flow holds %d, %d queued", tok, fs.Packets, n)
		}
	}
}
