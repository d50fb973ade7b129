package regulate

import (
	"testing"
	"time"
)

// codelRig is one flow without advisory under pure CoDel (quiet policy): a
// backlog enqueued at once, then drained one packet per tick, so every
// packet's sojourn is the time since the backlog arrived.
type codelRig struct {
	t     *testing.T
	q     *Queue
	now   int64
	drops []int64 // times of CoDel drops, as seen by the drop counter
	next  []int64 // DropNext after each of them
}

func newCoDelRig(t *testing.T, ecn bool) *codelRig {
	return &codelRig{t: t, q: newQueue(t, Options{Limit: 8192, Advisory: quiet, ECN: ecn})}
}

// backlog enqueues n 1000-byte frames of token 1 at the current time.
func (r *codelRig) backlog(n int, tos byte) {
	for i := range n {
		mustEnqueue(r.t, r.q, build(frameSpec{size: 1000, tos: tos, seq: uint64(i)}), Tag{Token: 1}, r.now)
	}
}

// drain dequeues one packet per tick until the clock reaches until,
// recording each CoDel drop.
func (r *codelRig) drain(until, tick int64) {
	for ; r.now < until; r.now += tick {
		before := r.q.Stats().CoDelDrops
		if _, ok := dequeueOne(r.q, r.now); !ok {
			r.t.Fatalf("queue ran dry at %v", time.Duration(r.now))
		}
		for range r.q.Stats().CoDelDrops - before {
			fs, _ := r.q.Flow(1, r.now)
			r.drops = append(r.drops, r.now)
			r.next = append(r.next, fs.DropNext)
		}
	}
}

// TestCoDelControlLaw: the first drop comes one interval after the sojourn
// first reached target, and the n-th drop follows the (n-1)-th by
// interval/sqrt(n-1) (RFC 8289 §3.3), to the nanosecond in the schedule and
// within one dequeue tick in the actual drop times.
func TestCoDelControlLaw(t *testing.T) {
	r := newCoDelRig(t, false)
	r.backlog(7000, 0)
	const tick = ms / 4 // 250 µs between dequeues
	r.drain(1500*ms, tick)

	// Sojourn = now; it reaches target (10 ms) at the dequeue at 10 ms, so
	// CoDel may drop from 10 + 100 ms on: the dequeue at 110 ms.
	if len(r.drops) < 12 {
		t.Fatalf("%d drops in 1.5 s, want at least 12", len(r.drops))
	}
	if r.drops[0] != 110*ms {
		t.Fatalf("first drop at %v, want 110ms", time.Duration(r.drops[0]))
	}
	// interval/sqrt(n) for n = 1..5, worked out by hand.
	spacing := []int64{100_000_000, 70_710_678, 57_735_026, 50_000_000, 44_721_359}
	want := r.drops[0] // scheduled time of the next drop
	for n := 1; n < len(r.drops); n++ {
		step := int64(float64(DefaultInterval) / sqrt(n))
		if n <= len(spacing) && step != spacing[n-1] {
			t.Fatalf("interval/sqrt(%d) = %d, want %d", n, step, spacing[n-1])
		}
		want += step
		// Drop n (0-based) is due at want; the rig sees it at the first
		// tick at or after it.
		if r.drops[n] < want || r.drops[n] >= want+tick {
			t.Fatalf("drop %d at %v, due at %v (tick %v)", n+1, time.Duration(r.drops[n]), time.Duration(want), time.Duration(tick))
		}
		if r.next[n-1] != want {
			t.Fatalf("after drop %d DropNext = %d, want %d", n, r.next[n-1], want)
		}
	}
	fs, _ := r.q.Flow(1, r.now)
	if !fs.Dropping || int(fs.Count) != len(r.drops) || fs.CoDelDrops != uint64(len(r.drops)) {
		t.Fatalf("flow %+v after %d drops", fs, len(r.drops))
	}
	conserved(t, r.q)
}

func sqrt(n int) float64 {
	// Newton's method, independent of the code under test's math.Sqrt.
	x := float64(n)
	for range 60 {
		x = (x + float64(n)/x) / 2
	}
	return x
}

// TestCoDelLeavesDroppingState: one packet below target ends the dropping
// state at once (RFC 8289: "sojourn time below target - leave dropping
// state"), and CoDel only drops again after the sojourn has stayed at or
// above target for a whole new interval.
func TestCoDelLeavesDroppingState(t *testing.T) {
	r := newCoDelRig(t, false)
	r.backlog(1000, 0)
	r.drain(300*ms, ms)
	if fs, _ := r.q.Flow(1, r.now); !fs.Dropping {
		t.Fatalf("not dropping at 300ms: %+v", fs)
	}
	// The old packets leave at once (a burst of link capacity); behind
	// them, a fresh backlog.
	var buf [64][]byte
	for r.q.Len() > 0 {
		r.q.Dequeue(buf[:], r.now)
	}
	drops := r.q.Stats().CoDelDrops
	r.backlog(1000, 0)
	if _, ok := dequeueOne(r.q, r.now); !ok { // sojourn 0
		t.Fatal("no packet")
	}
	if fs, _ := r.q.Flow(1, r.now); fs.Dropping {
		t.Fatalf("still dropping after a packet below target: %+v", fs)
	}
	// The new backlog reaches target 10 ms on; no drop for an interval.
	start := r.now
	r.drain(start+10*ms+DefaultInterval.Nanoseconds(), ms)
	if got := r.q.Stats().CoDelDrops; got != drops {
		t.Fatalf("%d drops within the interval after re-reaching target", got-drops)
	}
	r.drain(r.now+ms, ms)
	if got := r.q.Stats().CoDelDrops; got != drops+1 {
		t.Fatalf("%d drops at target + interval, want 1", got-drops)
	}
}

// TestCoDelCountDecay: re-entering the dropping state soon after leaving
// it (within 16 intervals of the last scheduled drop) starts from the drop
// count that controlled the queue last time less the count it started
// from (RFC 8289 §5.5); re-entering later starts from 1.
func TestCoDelCountDecay(t *testing.T) {
	r := newCoDelRig(t, false)
	var buf [64][]byte
	flush := func() {
		for r.q.Len() > 0 {
			r.q.Dequeue(buf[:], r.now)
		}
		r.q.Dequeue(buf[:], r.now) // the empty queue ends the dropping state
	}

	// First dropping run: 10 drops, entered with count 1.
	r.backlog(2000, 0)
	for len(r.drops) < 10 {
		r.drain(r.now+ms, ms)
	}
	fs, _ := r.q.Flow(1, r.now)
	if fs.Count != 10 {
		t.Fatalf("count %d after 10 drops", fs.Count)
	}
	lastNext := fs.DropNext
	flush()
	if fs, _ = r.q.Flow(1, r.now); fs.Dropping {
		t.Fatal("still dropping with an empty queue")
	}

	// Soon after: a backlog again, at target after 10 ms, dropping at
	// +110 ms with count 10 - 1 = 9 and the next drop interval/3 later.
	r.backlog(2000, 0)
	start, n := r.now, len(r.drops)
	r.drain(start+111*ms, ms)
	if len(r.drops) != n+1 || r.drops[n] != start+110*ms {
		t.Fatalf("re-entry drops %v, want one at %v", r.drops[n:], time.Duration(start+110*ms))
	}
	if start+110*ms-lastNext >= 16*DefaultInterval.Nanoseconds() {
		t.Fatal("rig error: re-entry not within 16 intervals")
	}
	fs, _ = r.q.Flow(1, r.now)
	if fs.Count != 9 || fs.DropNext != start+110*ms+int64(DefaultInterval)/3 {
		t.Fatalf("re-entry count %d, next drop %d; want 9, %d", fs.Count, fs.DropNext, start+110*ms+int64(DefaultInterval)/3)
	}

	// Long after (more than 16 intervals): back to count 1.
	flush()
	r.now += 17 * DefaultInterval.Nanoseconds()
	r.backlog(2000, 0)
	start, n = r.now, len(r.drops)
	r.drain(start+111*ms, ms)
	fs, _ = r.q.Flow(1, r.now)
	if len(r.drops) != n+1 || fs.Count != 1 || fs.DropNext != start+110*ms+int64(DefaultInterval) {
		t.Fatalf("late re-entry: drops %d, flow %+v", len(r.drops)-n, fs)
	}
	conserved(t, r.q)
}

// TestCoDelECN: with ECN on, an ECN-capable flow is marked CE where CoDel
// would drop, on the same schedule, and loses nothing; a Not-ECT flow is
// still dropped.
func TestCoDelECN(t *testing.T) {
	for _, c := range []struct {
		name      string
		tos       byte
		wantMarks bool
	}{
		{"ect0", 0x02, true},
		{"ect1", 0x01, true},
		{"not-ect", 0x00, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newCoDelRig(t, true)
			r.backlog(4000, c.tos)
			marked, ce := 0, 0
			for ; r.now < 600*ms; r.now += ms {
				f, ok := dequeueOne(r.q, r.now)
				if !ok {
					t.Fatal("queue ran dry")
				}
				if f[15]&ecnMask == ecnCE {
					ce++
					if ipv4Checksum(f[14:34]) != uint16(f[24])<<8|uint16(f[25]) {
						t.Fatal("checksum wrong after marking")
					}
				}
			}
			s := r.q.Stats()
			marked = int(s.ECNMarks)
			if c.wantMarks {
				if s.CoDelDrops != 0 || marked == 0 || marked != ce {
					t.Fatalf("drops %d, marks %d, CE frames seen %d", s.CoDelDrops, marked, ce)
				}
				// Same schedule as drops.
				if marked != scheduled(600*ms) {
					t.Fatalf("%d marks by 600ms, want %d", marked, scheduled(600*ms))
				}
			} else if int(s.CoDelDrops) != scheduled(600*ms) || marked != 0 || ce != 0 {
				t.Fatalf("drops %d, marks %d, CE %d; want %d, 0, 0", s.CoDelDrops, marked, ce, scheduled(600*ms))
			}
			conserved(t, r.q)
		})
	}
}

// scheduled counts the drops the control law schedules before until for a
// sojourn above target from 10 ms on: 110 ms, then interval/sqrt(n) apart.
func scheduled(until int64) int {
	n, at := 0, float64(110*ms)
	for at < float64(until) {
		n++
		at += float64(DefaultInterval) / sqrt(n)
	}
	return n
}
