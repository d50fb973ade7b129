package regulate

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/skylane/skylane/packet"
)

// TestNewRejects: every option out of range is an error wrapping
// ErrInvalid, before any memory is taken.
func TestNewRejects(t *testing.T) {
	for _, o := range []Options{
		{MTU: 67},
		{MTU: 65536},
		{LinkType: 3},
		{Limit: -1},
		{Limit: maxLimit + 1},
		{Flows: -5},
		{Quantum: -1},
		{DropBatch: -1},
		{Batch: maxBatch + 1},
		{Target: time.Second},         // above the interval
		{Target: -time.Millisecond},   // negative
		{MTU: 65535, Limit: maxLimit}, // a 68 GB slab
		{Advisory: AdvisoryPolicy{SuspendBacklog: 10, ResumeBacklog: 10}}, // no hysteresis
	} {
		if _, err := New(o); !errors.Is(err, ErrInvalid) {
			t.Errorf("New(%+v) = %v, want ErrInvalid", o, err)
		}
	}
	q := newQueue(t, Options{})
	if q.MaxFrame() != 1518 { // 1500 + Ethernet with one VLAN tag
		t.Fatalf("MaxFrame %d", q.MaxFrame())
	}
}

// TestEnqueueRefuses: empty and oversize frames are refused and counted;
// the caller's frame is never modified or retained.
func TestEnqueueRefuses(t *testing.T) {
	q := newQueue(t, Options{})
	if q.Enqueue(nil, Tag{Token: 1}, 0) || q.Enqueue(make([]byte, 1519), Tag{Token: 1}, 0) {
		t.Fatal("accepted an empty or oversize frame")
	}
	f := build(frameSpec{size: 1518})
	orig := append([]byte(nil), f...)
	mustEnqueue(t, q, f, Tag{Token: 1}, 0)
	f[100] ^= 0xff // the caller reuses its buffer at once
	got, _ := dequeueOne(q, 0)
	if string(got) != string(orig) {
		t.Fatal("queue kept a reference to the caller's frame")
	}
	if s := q.Stats(); s.Refused != 2 || s.Enqueued != 1 || s.Dequeued != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// TestDRRFairness: backlogged flows with different packet sizes get the
// same bytes, to within one quantum plus one packet at any instant (a
// round may be half done), as DRR promises; packets would give the
// small-packet flow 20 times the bytes of the large one.
func TestDRRFairness(t *testing.T) {
	sizes := []int{76, 200, 512, 1000, 1514} // frame bytes, one flow each
	q := newQueue(t, Options{Advisory: quiet})
	served := make([]int, len(sizes))
	queued := make([]int, len(sizes)) // bytes
	seq := make([]uint64, len(sizes))
	var buf [16][]byte
	for round := 0; round < 2000; round++ {
		for i, sz := range sizes { // keep every flow backlogged: 3 quanta queued
			for ; queued[i] < 3*DefaultQuantum; queued[i] += sz {
				mustEnqueue(t, q, build(frameSpec{size: sz, stream: uint32(i), seq: seq[i]}), Tag{Token: uint32(i + 1)}, 0)
				seq[i]++
			}
		}
		n := q.Dequeue(buf[:], 0)
		for _, f := range buf[:n] {
			i, _ := trailer(f)
			served[i] += len(f)
			queued[i] -= len(f)
		}
		lo, hi := served[0], served[0]
		for _, b := range served {
			lo, hi = min(lo, b), max(hi, b)
		}
		if hi-lo >= DefaultQuantum+1514 {
			t.Fatalf("round %d: bytes served %v differ by %d", round, served, hi-lo)
		}
	}
	if j := Jain(served); j < 0.9999 {
		t.Fatalf("Jain index %v over %v", j, served)
	}
}

// TestSparseFlowFirst: a flow that was not waiting (a request, a pure ACK)
// goes on the new list and leaves before the backlogged bulk flows, even
// though they were there first.
func TestSparseFlowFirst(t *testing.T) {
	q := newQueue(t, Options{Advisory: quiet})
	for i := range 4 { // four bulk flows of 100 full frames
		for s := range 100 {
			mustEnqueue(t, q, build(frameSpec{size: 1514, stream: uint32(i), seq: uint64(s)}), Tag{Token: uint32(10 + i)}, 0)
		}
	}
	var buf [8][]byte
	q.Dequeue(buf[:], 0) // the bulk flows have had their first turn: old list
	mustEnqueue(t, q, build(frameSpec{size: 80, stream: 99}), Tag{Token: 99}, 0)
	f, _ := dequeueOne(q, 0)
	if s, _ := trailer(f); s != 99 {
		t.Fatalf("dequeued stream %d before the sparse flow", s)
	}
	// Once served it has used its quantum only in part; alone again it
	// rejoins the new list (the old list is not empty, so it went there
	// when found empty) — either way its next packet waits at most one
	// round of the 4 bulk flows.
	mustEnqueue(t, q, build(frameSpec{size: 80, stream: 99, seq: 1}), Tag{Token: 99}, 0)
	for i := range 5 {
		f, _ := dequeueOne(q, 0)
		if s, _ := trailer(f); s == 99 {
			return
		}
		_ = i
	}
	t.Fatal("sparse flow's second packet waited more than one round")
}

// TestOverflowHeadDrop: a full queue drops from the head of the flow with
// the most bytes — not the most packets, not the arriving packet's flow —
// and other flows lose nothing.
func TestOverflowHeadDrop(t *testing.T) {
	for _, c := range []struct {
		name      string
		dropBatch int
		wantDrops int
	}{
		{"one", 1, 1},
		// Default batch: stop once half the fat flow's bytes are gone:
		// 4 of its 8 frames of 1400 B.
		{"half", 0, 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			q := newQueue(t, Options{Limit: 20, DropBatch: c.dropBatch, Advisory: quiet})
			// The drop hook (a capture's view) sees exactly the packets
			// dropped, with their counter's name, before reuse.
			var hooked []string
			q.SetDropHook(func(f []byte, reason string) {
				s, seq := trailer(f)
				hooked = append(hooked, fmt.Sprintf("%s:%d/%d", reason, s, seq))
			})
			// Fat: 8 × 1400 B = 11200 B. Many: 11 × 100 B, more packets,
			// fewer bytes. New: 1 packet, then the one that overflows.
			for s := range 8 {
				mustEnqueue(t, q, build(frameSpec{size: 1400, stream: 1, seq: uint64(s)}), Tag{Token: 1}, 0)
			}
			for s := range 11 {
				mustEnqueue(t, q, build(frameSpec{size: 100, stream: 2, seq: uint64(s)}), Tag{Token: 2}, 0)
			}
			mustEnqueue(t, q, build(frameSpec{size: 200, stream: 3, seq: 0}), Tag{Token: 3}, 0)
			if q.Len() != 20 {
				t.Fatalf("len %d", q.Len())
			}
			mustEnqueue(t, q, build(frameSpec{size: 200, stream: 3, seq: 1}), Tag{Token: 3}, 0)
			if q.Len() != 21-c.wantDrops || q.Len() > 20 {
				t.Fatalf("len %d after overflow", q.Len())
			}
			fat, _ := q.Flow(1, 0)
			if fat.OverflowDrops != uint64(c.wantDrops) || q.Stats().OverflowDrops != uint64(c.wantDrops) {
				t.Fatalf("fat flow %+v, stats %+v", fat, q.Stats())
			}
			var want []string
			for i := range c.wantDrops {
				want = append(want, fmt.Sprintf("%s:1/%d", ReasonOverflow, i))
			}
			if fmt.Sprint(hooked) != fmt.Sprint(want) {
				t.Fatalf("drop hook saw %v, want %v", hooked, want)
			}
			q.SetDropHook(nil)
			// Everything else arrives whole, and the fat flow's survivors
			// are its newest packets, in order.
			got := map[uint32][]uint64{}
			var buf [64][]byte
			for n := q.Dequeue(buf[:], 0); n > 0; n = q.Dequeue(buf[:], 0) {
				for _, f := range buf[:n] {
					s, seq := trailer(f)
					got[s] = append(got[s], seq)
				}
			}
			if fmt.Sprint(got[1]) != fmt.Sprint(seqs(c.wantDrops, 8)) || len(got[2]) != 11 || len(got[3]) != 2 {
				t.Fatalf("dequeued %v", got)
			}
			conserved(t, q)
		})
	}
}

func seqs(from, to int) []uint64 {
	var s []uint64
	for i := from; i < to; i++ {
		s = append(s, uint64(i))
	}
	return s
}

// TestClassifyWithoutToken: frames with no token are hashed by 5-tuple
// (different source ports → different flows, served round robin), and
// frames with no IP header share one flow, in order.
func TestClassifyWithoutToken(t *testing.T) {
	q := newQueue(t, Options{Advisory: quiet})
	for s := range 3 { // two UDP flows of 3 packets, interleaved DRR-wise
		mustEnqueue(t, q, build(frameSpec{size: 1514, sport: 1000, stream: 1, seq: uint64(s)}), Tag{}, 0)
	}
	mustEnqueue(t, q, build(frameSpec{size: 1514, sport: 2000, stream: 2}), Tag{}, 0)
	arp := build(frameSpec{size: 64, stream: 3})
	arp[12], arp[13] = 0x08, 0x06 // ARP: no IP header
	mustEnqueue(t, q, arp, Tag{}, 0)
	if s := q.Stats(); s.ActiveFlows != 3 {
		t.Fatalf("%d flows, want 3 (two tuples and the shared flow)", s.ActiveFlows)
	}
	var order []uint32
	var buf [8][]byte
	n := q.Dequeue(buf[:], 0)
	for _, f := range buf[:n] {
		s, _ := trailer(f)
		order = append(order, s)
	}
	if fmt.Sprint(order) != "[1 2 3 1 1]" {
		t.Fatalf("order %v, want one quantum each in arrival order of the flows", order)
	}
}

// TestFlowSlotReuse: with more flows over time than slots, idle slots are
// reused (oldest idle first) and nothing leaks: after the churn every slot
// is back, free or idle. With every slot busy, a new flow shares one queue.
func TestFlowSlotReuse(t *testing.T) {
	q := newQueue(t, Options{Flows: 4, Advisory: quiet})
	var buf [8][]byte
	for tok := uint32(1); tok <= 100; tok++ {
		mustEnqueue(t, q, build(frameSpec{stream: tok}), Tag{Token: tok}, 0)
		if n := q.Dequeue(buf[:], 0); n != 1 {
			t.Fatalf("token %d: %d dequeued", tok, n)
		}
	}
	// 4 slots, 5 busy flows: the fifth shares the shared flow.
	for tok := uint32(200); tok < 205; tok++ {
		mustEnqueue(t, q, build(frameSpec{stream: tok}), Tag{Token: tok}, 0)
	}
	if s := q.Stats(); s.Shared != 1 || s.ActiveFlows != 5 {
		t.Fatalf("stats %+v", s)
	}
	if _, ok := q.Flow(204, 0); ok {
		t.Fatal("the flow in the shared slot is addressable")
	}
	for q.Len() > 0 {
		q.Dequeue(buf[:], 0)
	}
	q.Dequeue(buf[:], 0)
	checkInvariants(t, q)
}

// TestForget: Forget discards a flow's packets (counted), frees its slot
// and leaves other flows alone.
func TestForget(t *testing.T) {
	q := newQueue(t, Options{Flows: 2, Advisory: quiet})
	for s := range 5 {
		mustEnqueue(t, q, build(frameSpec{stream: 1, seq: uint64(s)}), Tag{Token: 1}, 0)
		mustEnqueue(t, q, build(frameSpec{stream: 2, seq: uint64(s)}), Tag{Token: 2}, 0)
	}
	if n := q.Forget(1); n != 5 {
		t.Fatalf("Forget = %d", n)
	}
	if q.Forget(1) != 0 || q.Forget(0) != 0 {
		t.Fatal("forgot twice")
	}
	if _, ok := q.Flow(1, 0); ok {
		t.Fatal("forgotten flow still there")
	}
	var buf [16][]byte
	n := q.Dequeue(buf[:], 0)
	for _, f := range buf[:n] {
		if s, _ := trailer(f); s != 2 {
			t.Fatalf("stream %d after Forget(1)", s)
		}
	}
	if n != 5 || q.Stats().Forgotten != 5 {
		t.Fatalf("dequeued %d, stats %+v", n, q.Stats())
	}
	conserved(t, q)
	q.Dequeue(buf[:], 0)
	checkInvariants(t, q)
}

// TestDequeueCopyAndViews: views stay valid until the next Dequeue, even
// if frames are enqueued meanwhile; DequeueCopy fills caller buffers and
// stops before one too short.
func TestDequeueCopyAndViews(t *testing.T) {
	q := newQueue(t, Options{Limit: 2, Batch: 2, Advisory: quiet})
	mustEnqueue(t, q, build(frameSpec{stream: 1, seq: 1}), Tag{Token: 1}, 0)
	mustEnqueue(t, q, build(frameSpec{stream: 1, seq: 2}), Tag{Token: 1}, 0)
	var views [2][]byte
	if q.Dequeue(views[:], 0) != 2 {
		t.Fatal("dequeue")
	}
	// The slab has Limit + Batch frames: these two cannot reuse the views.
	mustEnqueue(t, q, build(frameSpec{stream: 2, seq: 3}), Tag{Token: 2}, 0)
	mustEnqueue(t, q, build(frameSpec{stream: 2, seq: 4}), Tag{Token: 2}, 0)
	for i, v := range views {
		if _, seq := trailer(v); seq != uint64(i+1) {
			t.Fatalf("view %d overwritten: seq %d", i, seq)
		}
	}
	bufs := [][]byte{make([]byte, q.MaxFrame()), make([]byte, 10)}
	sizes := make([]int, 2)
	if n := q.DequeueCopy(bufs, sizes, 0); n != 1 || sizes[0] != minFrame {
		t.Fatalf("DequeueCopy = %d, sizes %v", n, sizes)
	}
	if _, seq := trailer(bufs[0][:sizes[0]]); seq != 3 {
		t.Fatalf("copied seq %d", seq)
	}
	if q.Len() != 1 {
		t.Fatalf("len %d: the short buffer cost a packet", q.Len())
	}
}

// TestRawIPLink: on a raw IP link (TUN) frames start with the IP header:
// classification and marking find it there.
func TestRawIPLink(t *testing.T) {
	q := newQueue(t, Options{LinkType: packet.RawIP, MTU: 1500, Advisory: quiet})
	if q.MaxFrame() != 1500 {
		t.Fatalf("MaxFrame %d", q.MaxFrame())
	}
	mustEnqueue(t, q, build(frameSpec{raw: true, sport: 1}), Tag{}, 0)
	mustEnqueue(t, q, build(frameSpec{raw: true, sport: 2, v6: true}), Tag{}, 0)
	if s := q.Stats(); s.ActiveFlows != 2 {
		t.Fatalf("%d flows, want 2 hashed ones", s.ActiveFlows)
	}
}
