package regulate

import (
	"errors"
	"testing"
)

// TestAdvisoryPolicy walks one flow's observations through suspend and
// resume, step by step: the delay rule needs Target for a whole Interval,
// the backlog rules act at once, resume needs both a low backlog and a
// delay under target, and a single packet's delay never counts.
func TestAdvisoryPolicy(t *testing.T) {
	p, err := AdvisoryPolicy{SuspendBacklog: 100, ResumeBacklog: 10, HighWater: 150}.Resolve(200, 1518)
	if err != nil {
		t.Fatal(err)
	}
	type step struct {
		at, delay int64 // ms
		pkts      int
		queue     int // QueueLen; ActiveFlows is 3 throughout
		want      bool
		note      string
	}
	var s AdvisoryState
	was := false
	for i, st := range []step{
		{0, 5, 50, 50, false, "under target"},
		{10, 12, 50, 50, false, "at target: the interval starts"},
		{109, 15, 50, 50, false, "99 ms above: not yet"},
		{110, 15, 50, 50, true, "an interval above target: SUSPEND, resume at min(10, 50/2)"},
		{120, 5, 20, 50, true, "delay fine but 20 > resume mark"},
		{130, 12, 11, 50, true, "11 > resume mark"},
		{140, 30, 10, 50, false, "drained to the mark: RESUME, whatever the delay"},
		{150, 20, 30, 50, false, "above target: the interval starts afresh"},
		{249, 20, 30, 50, false, "99 ms above since the resume"},
		{250, 20, 30, 50, true, "a fresh interval: SUSPEND"},
		{260, 20, 10, 50, false, "RESUME"},
		{270, 8, 30, 50, false, "below target"},
		{280, 20, 99, 100, false, "99 packets, 0 ms above"},
		{281, 20, 100, 100, true, "SuspendBacklog packets: SUSPEND at once"},
		{282, 0, 0, 0, false, "empty: RESUME"},
		{290, 20, 4, 4, false, "4 packets above target"},
		{390, 20, 4, 4, true, "an interval: SUSPEND, resume at 4/2 = 2"},
		{391, 20, 3, 4, true, "3 > 2"},
		{392, 20, 2, 4, false, "RESUME"},
		{393, 1, 49, 150, false, "high water, but under the fair share of 50"},
		{394, 1, 50, 150, true, "high water and the fair share: SUSPEND"},
		{395, 0, 0, 100, false, "empty: RESUME"},
	} {
		o := Observation{Now: st.at * ms, Delay: st.delay * ms, Packets: st.pkts, Bytes: st.pkts * 1000, QueueLen: st.queue, ActiveFlows: 3}
		changed := p.Observe(&s, o)
		if s.Suspended() != st.want || changed != (st.want != was) {
			t.Fatalf("step %d (%s): suspended %v changed %v, want %v", i, st.note, s.Suspended(), changed, st.want)
		}
		was = st.want
	}

	// One packet (bytes under MinBytes) waiting long is no standing queue.
	var one AdvisoryState
	for at := int64(0); at <= 500; at += 10 {
		if p.Observe(&one, Observation{Now: at * ms, Delay: at * ms, Packets: 1, Bytes: 1518, QueueLen: 1, ActiveFlows: 1}) {
			t.Fatalf("a single packet's delay suspended the flow at %d ms", at)
		}
	}

	if _, err := (AdvisoryPolicy{ResumeBacklog: 5, SuspendBacklog: 5}).Resolve(100, 1518); !errors.Is(err, ErrInvalid) {
		t.Fatalf("equal marks accepted: %v", err)
	}
}

// advised is the tag of a channel flow with an advisory entry.
var advised = Tag{Token: 7, HasAdvisory: true, Advisory: AdvisoryRef{Port: 3, Index: 42}}

// TestAdvisoryHoldsBackWithoutLoss: a sender that honours its advisory and
// offers twice the link's rate is suspended and resumed again and again,
// loses no packet at the queue, and keeps the link busy. Transitions
// alternate, name its table entry, and are counted.
func TestAdvisoryHoldsBackWithoutLoss(t *testing.T) {
	for _, lag := range []int{0, 2} { // ms before the sender sees a transition
		q := newQueue(t, Options{})
		const rate = 10 // link: packets per ms
		var (
			buf       [rate][]byte
			tr        [4]Transition
			seen      []Transition
			suspended bool
			delayed   []Transition // transitions the sender has not seen yet, with the ms they arrive
			arrive    []int
			seq       uint64
			sent      int
		)
		for now := 0; now < 3000; now++ {
			at := int64(now) * ms
			for len(arrive) > 0 && arrive[0] <= now {
				suspended = delayed[0].Suspended
				delayed, arrive = delayed[1:], arrive[1:]
			}
			if !suspended {
				for range 2 * rate {
					mustEnqueue(t, q, build(frameSpec{size: 1514, stream: 7, seq: seq}), advised, at)
					seq++
				}
			}
			for _, f := range buf[:q.Dequeue(buf[:], at)] {
				if _, s := trailer(f); s != uint64(sent) {
					t.Fatalf("lag %d: seq %d, want %d: lost or reordered", lag, s, sent)
				}
				sent++
			}
			for _, x := range tr[:q.Transitions(tr[:])] {
				if x.Ref != advised.Advisory {
					t.Fatalf("transition for %+v", x.Ref)
				}
				if len(seen) > 0 && seen[len(seen)-1].Suspended == x.Suspended {
					t.Fatalf("lag %d: two transitions in a row to suspended=%v", lag, x.Suspended)
				}
				seen = append(seen, x)
				delayed, arrive = append(delayed, x), append(arrive, now+lag)
			}
		}
		s := q.Stats()
		if s.CoDelDrops+s.OverflowDrops+s.EarlyDrops != 0 {
			t.Fatalf("lag %d: losses %+v", lag, s)
		}
		if len(seen) < 10 || !seen[0].Suspended {
			t.Fatalf("lag %d: transitions %v", lag, seen)
		}
		if s.Suspends != uint64((len(seen)+1)/2) || s.Resumes != uint64(len(seen)/2) {
			t.Fatalf("lag %d: %d transitions, stats %+v", lag, len(seen), s)
		}
		// The link idles only until the first packets arrive.
		if sent < 3000*rate-rate {
			t.Fatalf("lag %d: %d packets sent in 3 s, link capacity %d", lag, sent, 3000*rate)
		}
		conserved(t, q)
	}
}

// TestNoAdvisoryDropsEarly: a flow without advisory that the policy would
// suspend is dropped at Enqueue instead, until it drains; it reports no
// transition.
func TestNoAdvisoryDropsEarly(t *testing.T) {
	q := newQueue(t, Options{})
	plain := Tag{Token: 9}
	var buf [10][]byte
	accepted := 0
	for now := int64(0); now < 2000; now++ {
		for range 20 { // twice the link's 10 packets per ms
			if q.Enqueue(build(frameSpec{size: 1514}), plain, now*ms) {
				accepted++
			}
		}
		q.Dequeue(buf[:], now*ms)
		if fs, _ := q.Flow(9, now*ms); fs.Packets > DefaultLimit/4 {
			t.Fatalf("at %d ms the flow holds %d packets: not held back", now, fs.Packets)
		}
	}
	s := q.Stats()
	if s.EarlyDrops == 0 || s.Suspends != 0 || q.Transitions(make([]Transition, 4)) != 0 {
		t.Fatalf("stats %+v", s)
	}
	if uint64(accepted) != s.Enqueued || s.EarlyDrops+s.Enqueued != 2000*20 {
		t.Fatalf("accepted %d, stats %+v", accepted, s)
	}
	conserved(t, q)
}

// TestNoAdvisoryECN: with ECN on, a held-back flow's ECN-capable packets
// are marked CE and queued instead of dropped early; the limit still holds.
func TestNoAdvisoryECN(t *testing.T) {
	q := newQueue(t, Options{ECN: true})
	var buf [10][]byte
	for now := int64(0); now < 1000; now++ {
		for range 20 {
			q.Enqueue(build(frameSpec{size: 1514, tos: 0x02}), Tag{Token: 9}, now*ms)
		}
		for _, f := range buf[:q.Dequeue(buf[:], now*ms)] {
			if f[15]&ecnMask == ecnCE && ipv4Checksum(f[14:34]) != uint16(f[24])<<8|uint16(f[25]) {
				t.Fatal("checksum broken by marking")
			}
		}
	}
	s := q.Stats()
	if s.EarlyDrops != 0 || s.ECNMarks == 0 || q.Len() > DefaultLimit {
		t.Fatalf("stats %+v", s)
	}
	conserved(t, q)
}

// TestTransitionsCoalesce: a suspend undone before the nexus asked is not
// reported at all, and the flow's slot is reusable afterwards.
func TestTransitionsCoalesce(t *testing.T) {
	q := newQueue(t, Options{Flows: 1, Limit: 64, Advisory: AdvisoryPolicy{SuspendBacklog: 4, ResumeBacklog: 1}})
	for s := range 4 {
		mustEnqueue(t, q, build(frameSpec{seq: uint64(s)}), advised, 0)
	}
	if fs, _ := q.Flow(7, 0); !fs.Suspended {
		t.Fatal("not suspended at the backlog mark")
	}
	var buf [8][]byte
	q.Dequeue(buf[:], 0)
	q.Dequeue(buf[:], 0)
	if n := q.Transitions(make([]Transition, 4)); n != 0 {
		t.Fatalf("%d transitions for a suspend already undone", n)
	}
	if s := q.Stats(); s.Suspends != 1 || s.Resumes != 1 {
		t.Fatalf("stats %+v", s)
	}
	checkInvariants(t, q)
	mustEnqueue(t, q, build(frameSpec{}), Tag{Token: 8}, 0) // the one slot is free again
	if _, ok := q.Flow(8, 0); !ok {
		t.Fatal("slot not reused")
	}
}

// TestOverflowSuspends: the flow that overflows the queue is suspended as
// well as head-dropped; the nexus hears of it.
func TestOverflowSuspends(t *testing.T) {
	q := newQueue(t, Options{Limit: 8, Advisory: AdvisoryPolicy{SuspendBacklog: 100, HighWater: 100}})
	for s := range 9 {
		mustEnqueue(t, q, build(frameSpec{seq: uint64(s)}), advised, 0)
	}
	var tr [2]Transition
	if n := q.Transitions(tr[:]); n != 1 || tr[0] != (Transition{Ref: advised.Advisory, Suspended: true}) {
		t.Fatalf("transitions %v", tr[:n])
	}
	if s := q.Stats(); s.OverflowDrops == 0 || q.Len() > 8 {
		t.Fatalf("stats %+v", s)
	}
}

// TestBurstIsolation: one sender bursts at ten times the link's rate with
// no advisory, another sends a small request every 5 ms. The small flow
// loses nothing and waits at most one dequeue round; the burst is dropped
// (early and on overflow) and never fills the queue past its limit.
func TestBurstIsolation(t *testing.T) {
	q := newQueue(t, Options{})
	const rate = 10 // link: packets per ms
	var buf [rate][]byte
	sent, got := 0, 0
	for now := int64(0); now < 2000; now++ {
		at := now * ms
		for range 10 * rate {
			q.Enqueue(build(frameSpec{size: 1514, sport: 4000, stream: 1}), Tag{}, at)
		}
		if now%5 == 0 {
			mustEnqueue(t, q, build(frameSpec{size: 100, stream: 2, seq: uint64(sent)}), Tag{Token: 2}, at)
			sent++
		}
		for _, f := range buf[:q.Dequeue(buf[:], at)] {
			if s, seq := trailer(f); s == 2 {
				if seq != uint64(got) {
					t.Fatalf("request %d arrived as %d", got, seq)
				}
				got++
			}
		}
		if got != sent {
			t.Fatalf("at %d ms a request waits: sent %d, dequeued %d", now, sent, got)
		}
		if fs, _ := q.Flow(2, at); fs.Sojourn != 0 {
			t.Fatalf("request waited %d ns", fs.Sojourn)
		}
	}
	s := q.Stats()
	if s.EarlyDrops == 0 || s.Dequeued < 2000*rate-rate {
		t.Fatalf("stats %+v", s)
	}
	conserved(t, q)
}
