package regulate

import (
	"errors"
	"fmt"
	"math"
	"testing"
	"time"
)

// TestTokenBucket: exact credit arithmetic at 1000 B/s with a 1500 B burst
// (1 byte per ms), from a full bucket.
func TestTokenBucket(t *testing.T) {
	b, err := NewTokenBucket(1000, 1500, 0)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		at       int64 // ns
		op       string
		n        int
		want     bool
		wantWait int64
	}{
		{0, "allow", 1500, true, 0},      // the whole burst at once
		{0, "allow", 1, false, 0},        // then nothing
		{0, "wait", 1, true, 1_000_000},  // 1 byte takes 1 ms
		{999_999, "allow", 1, false, 0},  // 1 ns short
		{999_999, "wait", 1, true, 1},    // exactly 1 ns to go
		{1_000_000, "allow", 1, true, 0}, // there
		{1_000_000, "wait", 1500, true, 1_500_000_000},
		{1_000_000, "wait", 1501, false, 0},     // above the burst: never
		{1_000_000, "allow", 1501, false, 0},    //
		{501_000_000, "allow", 500, true, 0},    // 500 ms: 500 bytes
		{501_000_000, "allow", 0, true, 0},      // free
		{501_000_000, "allow", -3, true, 0},     // nonsense sizes cost nothing
		{400_000_000, "allow", 1, false, 0},     // the clock went back: no credit
		{501_000_500, "wait", 1, true, 999_500}, // nor lost: 500 ns earned
		{math.MaxInt64, "allow", 1500, true, 0}, // a huge gap fills, no overflow
		{math.MaxInt64, "allow", 1, false, 0},   //
	}
	for i, s := range steps {
		var got bool
		var w int64
		if s.op == "allow" {
			got = b.Allow(s.n, s.at)
		} else {
			w, got = b.Wait(s.n, s.at)
		}
		if got != s.want || w != s.wantWait {
			t.Fatalf("step %d %s(%d) at %d = %v, %d; want %v, %d", i, s.op, s.n, s.at, got, w, s.want, s.wantWait)
		}
	}
	if a := b.Available(math.MaxInt64); a != 0 {
		t.Fatalf("available %d", a)
	}
	// Fractions of a byte carry over: at 3 B/s, 1 byte takes 333333334 ns.
	c, _ := NewTokenBucket(3, 1, 0)
	c.Allow(1, 0)
	if w, _ := c.Wait(1, 0); w != 333_333_334 {
		t.Fatalf("wait %d", w)
	}
	if c.Allow(1, 333_333_333) || !c.Allow(1, 333_333_334) {
		t.Fatal("fractional credit wrong")
	}
	for _, bad := range [][2]int64{{0, 1}, {1, 0}, {-1, 5}, {1, MaxBurst + 1}} {
		if _, err := NewTokenBucket(bad[0], bad[1], 0); !errors.Is(err, ErrInvalid) {
			t.Fatalf("NewTokenBucket(%v) = %v", bad, err)
		}
	}
}

// TestTokenBucketRate: over a long run a greedy sender gets rate × time +
// burst bytes, exactly.
func TestTokenBucketRate(t *testing.T) {
	b, _ := NewTokenBucket(125_000, 3000, 0) // 1 Mbit/s
	sent := 0
	for now := int64(0); now <= int64(10*time.Second); now += int64(100 * time.Microsecond) {
		for b.Allow(100, now) {
			sent += 100
		}
	}
	if want := 125_000*10 + 3000; sent != want {
		t.Fatalf("sent %d bytes in 10 s, want %d", sent, want)
	}
}

// TestRoundRobin: grants rotate, a capped round is split evenly with the
// remainder rotating, and channels that did not fit come first next round.
func TestRoundRobin(t *testing.T) {
	r, err := NewRoundRobin(64)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]Grant, 8)
	round := func(ready []bool, total int) string {
		n := r.Round(ready, total, out)
		return fmt.Sprint(out[:n])
	}
	all := []bool{true, true, true, true}
	for i, c := range []struct {
		ready []bool
		total int
		want  string
	}{
		{all, 0, "[{0 64} {1 64} {2 64} {3 64}]"},
		{all, 0, "[{1 64} {2 64} {3 64} {0 64}]"},                // rotated by one
		{[]bool{true, false, true, false}, 0, "[{2 64} {0 64}]"}, // idle channels skipped
		{all, 10, "[{3 3} {0 3} {1 2} {2 2}]"},                   // 10 over 4: the first two get one more
		{all, 10, "[{1 3} {2 3} {3 2} {0 2}]"},                   // ... and go last next time
		{all, 2, "[{3 1} {0 1}]"},                                // under one each: the rest go first next
		{all, 2, "[{1 1} {2 1}]"},                                //
		{[]bool{}, 5, "[]"},                                      //
		{[]bool{false, false}, 5, "[]"},                          //
	} {
		if got := round(c.ready, c.total); got != c.want {
			t.Fatalf("round %d: %s, want %s", i, got, c.want)
		}
	}
	// More ready channels than out has room for.
	small := make([]Grant, 2)
	r2, _ := NewRoundRobin(8)
	for i, want := range []string{"[{0 8} {1 8}]", "[{2 8} {0 8}]", "[{1 8} {2 8}]"} {
		n := r2.Round([]bool{true, true, true}, 0, small)
		if got := fmt.Sprint(small[:n]); got != want {
			t.Fatalf("small round %d: %s, want %s", i, got, want)
		}
	}
	if _, err := NewRoundRobin(0); !errors.Is(err, ErrInvalid) {
		t.Fatal("budget 0 accepted")
	}
}

// TestRoundRobinNoStarvation: channel 0 always has a huge backlog, the
// others get a few packets now and then; a round serves at most 96
// packets. Each light channel's packets are all sent within the round
// after they arrive, and over time every busy channel gets an equal share.
func TestRoundRobinNoStarvation(t *testing.T) {
	const n = 6
	r, _ := NewRoundRobin(32)
	backlog := make([]int, n)
	served := make([]int, n)
	out := make([]Grant, n)
	ready := make([]bool, n)
	for round := range 10_000 {
		backlog[0] = 1 << 30 // the bursting channel
		for c := 1; c < n; c++ {
			if round%c == 0 {
				backlog[c] += 5
			}
		}
		for c := range ready {
			ready[c] = backlog[c] > 0
		}
		for _, g := range out[:r.Round(ready, 96, out)] {
			take := min(g.Budget, backlog[g.Channel])
			backlog[g.Channel] -= take
			served[g.Channel] += take
		}
		for c := 1; c < n; c++ {
			if backlog[c] > 0 {
				t.Fatalf("round %d: channel %d still holds %d", round, c, backlog[c])
			}
		}
	}
	// Saturated: every channel always ready, the share is exact to 1.
	r, _ = NewRoundRobin(32)
	clear(served)
	for c := range ready {
		ready[c] = true
	}
	for range 9_999 {
		for _, g := range out[:r.Round(ready, 100, out)] {
			served[g.Channel] += g.Budget
		}
	}
	lo, hi := served[0], served[0]
	for _, s := range served {
		lo, hi = min(lo, s), max(hi, s)
	}
	if hi-lo > 1 || Jain(served) < 0.999999 {
		t.Fatalf("shares %v", served)
	}
}

// TestMitigation: quiet links deliver at once; a rising rate climbs one
// level per 10 ms sample once the EWMA passes each mark, up to 1000 µs;
// silence brings it back to 0.
func TestMitigation(t *testing.T) {
	m, err := NewMitigation(MitigationOptions{})
	if err != nil {
		t.Fatal(err)
	}
	now := int64(0)
	run := func(ppms int, d time.Duration) { // ppms packets every ms for d
		for end := now + int64(d); now < end; now += ms {
			m.Count(ppms, now)
		}
		m.Hold(now) // closes the last sample
	}
	run(1, time.Second) // 1 kpps
	if m.Hold(now) != 0 || m.Level() != 0 {
		t.Fatalf("1 kpps: hold %d level %d", m.Hold(now), m.Level())
	}
	if r := m.Rate(); r < 990 || r > 1010 {
		t.Fatalf("rate %v, want 1000 pps", r)
	}
	run(1000, 10*time.Millisecond) // 1 Mpps: 10000 per sample
	// One sample in: EWMA = 10 + (10000 - 10)/4 ≈ 2507, above the marks of
	// levels 0 to 2, but the level moves one step per sample: level 1.
	if m.Level() != 1 {
		t.Fatalf("after one busy sample: level %d", m.Level())
	}
	levels := []int{m.Level()}
	for range 10 {
		run(1000, 10*time.Millisecond)
		levels = append(levels, m.Level())
	}
	if fmt.Sprint(levels) != "[1 2 3 4 4 4 4 4 4 4 4]" {
		t.Fatalf("levels %v: one step per sample", levels)
	}
	if h := m.Hold(now); h != int64(MaxHold) {
		t.Fatalf("hold %d at 1 Mpps", h)
	}
	if !m.Release(32, 32, now, now) || m.Release(5, 32, now-int64(MaxHold)+1, now) || !m.Release(5, 32, now-int64(MaxHold), now) || m.Release(0, 32, 0, now) {
		t.Fatal("Release: full batch at once, else after the hold")
	}
	now += int64(time.Second) // silence
	if m.Hold(now) != 0 || m.Level() != 0 {
		t.Fatalf("after 1 s of silence: hold %d level %d", m.Hold(now), m.Level())
	}
	if !m.Release(1, 32, now, now) {
		t.Fatal("quiet: not delivered at once")
	}
}

// TestMitigationHysteresis: a rate between a level's marks keeps the level
// it has, whichever side it came from.
func TestMitigationHysteresis(t *testing.T) {
	levels := []MitigationLevel{{Hold: 0, Up: 100}, {Hold: 500 * time.Microsecond, Down: 50, Up: 1 << 30}}
	m, err := NewMitigation(MitigationOptions{Levels: levels, EWMAStep: 1})
	if err != nil {
		t.Fatal(err)
	}
	now := int64(0)
	sample := func(pkts int) {
		m.Count(pkts, now)
		now += 10 * ms
		m.Hold(now)
	}
	for range 20 {
		sample(75) // between the marks, from below
	}
	if m.Level() != 0 {
		t.Fatal("climbed at 75 per sample")
	}
	for range 20 {
		sample(200)
	}
	for range 20 {
		sample(75) // between the marks, from above
	}
	if m.Level() != 1 {
		t.Fatal("dropped at 75 per sample")
	}
	for _, bad := range []MitigationOptions{
		{Sample: -1},
		{EWMAStep: 17},
		{Levels: []MitigationLevel{}},
		{Levels: []MitigationLevel{{Hold: 2 * time.Millisecond}}},
		{Levels: []MitigationLevel{{Hold: 0, Up: 100}, {Hold: 0, Down: 100}}},                  // no gap
		{Levels: []MitigationLevel{{Hold: 100, Up: 100}, {Hold: 50, Down: 10}}},                // hold shrinks
		{Levels: []MitigationLevel{{Hold: 0, Down: 5, Up: 5}, {Hold: 100 * time.Microsecond}}}, // up <= down
	} {
		if _, err := NewMitigation(bad); !errors.Is(err, ErrInvalid) {
			t.Fatalf("%+v accepted", bad)
		}
	}
}

// TestStallDetector: stalled only when packets wait and the consumer has
// not moved for the whole timeout; any drain, or an empty ring, resets it.
func TestStallDetector(t *testing.T) {
	d, err := NewStallDetector(0)
	if err != nil {
		t.Fatal(err)
	}
	sec := int64(time.Second)
	for i, s := range []struct {
		at       int64
		waiting  int
		consumed uint64
		want     bool
	}{
		{0, 0, 0, false},        // nothing waiting
		{1 * sec, 5, 0, false},  // packets wait from 1 s
		{10 * sec, 5, 0, false}, // 9 s
		{11 * sec, 7, 0, true},  // 10 s undrained: stalled
		{12 * sec, 7, 3, false}, // the app drained some: progress
		{21 * sec, 4, 3, false}, // 9 s since
		{22 * sec, 0, 3, false}, // empty ring: the app is just idle
		{40 * sec, 1, 3, false}, // waiting again: a fresh 10 s
		{49 * sec, 1, 3, false}, //
		{50 * sec, 1, 3, true},  //
	} {
		if got := d.Check(s.waiting, s.consumed, s.at); got != s.want {
			t.Fatalf("step %d: stalled %v", i, got)
		}
	}
	if _, err := NewStallDetector(-time.Second); !errors.Is(err, ErrInvalid) {
		t.Fatal("negative timeout accepted")
	}
}

// TestJain: the index's known values and edge cases.
func TestJain(t *testing.T) {
	for _, c := range []struct {
		x    []float64
		want float64
	}{
		{[]float64{5, 5, 5, 5}, 1},
		{[]float64{1, 0, 0, 0}, 0.25}, // one takes all: 1/n
		{[]float64{1, 1, 0, 0}, 0.5},
		{[]float64{1, 2, 3}, 36.0 / 42},
		{[]float64{0, 0}, 1},
		{[]float64{1e300, 1e300}, 1}, // no overflow in the squares
	} {
		if got := Jain(c.x); math.Abs(got-c.want) > 1e-12 {
			t.Fatalf("Jain(%v) = %v, want %v", c.x, got, c.want)
		}
	}
	for _, x := range [][]float64{nil, {1, -1}, {math.NaN()}, {math.Inf(1)}} {
		if !math.IsNaN(Jain(x)) {
			t.Fatalf("Jain(%v) not NaN", x)
		}
	}
	if Jain([]uint64{3, 3, 3}) != 1 || Jain([]int{2, 0}) != 0.5 {
		t.Fatal("integer Jain")
	}
}
