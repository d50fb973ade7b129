package regulate

import (
	"fmt"
	"testing"
)

// TestZeroAllocs: in steady state no path allocates — plain DRR, hashed
// flows, overflow drops, CoDel drops and ECN marks, early drops,
// advisories and their transitions, flow slot churn and Forget — nor do
// the per-channel helpers.
func TestZeroAllocs(t *testing.T) {
	frames := make([][]byte, 256)
	for i := range frames {
		frames[i] = build(frameSpec{size: 100 + i*5, sport: uint16(i % 7), tos: byte(i % 4), stream: uint32(i)})
	}
	out := make([][]byte, 64)
	tr := make([]Transition, 64)
	for _, c := range []struct {
		name string
		opts Options
		run  func(q *Queue, i int, now int64)
		hit  func(s Stats) bool // the path was taken
	}{
		{"drr", Options{Advisory: quiet}, func(q *Queue, i int, now int64) {
			for j := range 64 {
				q.Enqueue(frames[j], Tag{Token: uint32(1 + j%16)}, now)
			}
			q.Dequeue(out, now)
		}, func(s Stats) bool { return s.Enqueued > 0 && s.Dequeued == s.Enqueued }},
		{"hashed", Options{Advisory: quiet}, func(q *Queue, i int, now int64) {
			for j := range 64 {
				q.Enqueue(frames[j], Tag{}, now)
			}
			q.Dequeue(out, now)
		}, func(s Stats) bool { return s.Enqueued > 0 && s.Dequeued == s.Enqueued }},
		{"overflow", Options{Limit: 32, Advisory: quiet}, func(q *Queue, i int, now int64) {
			for j := range 64 {
				q.Enqueue(frames[j], Tag{Token: uint32(1 + j%3)}, now)
			}
			q.Dequeue(out[:16], now)
		}, func(s Stats) bool { return s.OverflowDrops > 0 }},
		{"codel-ecn", Options{ECN: true, Limit: 4096, Advisory: quiet}, func(q *Queue, i int, now int64) {
			for j := range 64 {
				q.Enqueue(frames[j], Tag{Token: uint32(1 + j%2)}, now-int64(i)*ms) // old packets: above target
			}
			q.Dequeue(out[:8], now)
		}, func(s Stats) bool { return s.CoDelDrops > 0 && s.ECNMarks > 0 }},
		{"advisory-early", Options{Limit: 256}, func(q *Queue, i int, now int64) {
			burst := i%8 < 4 // bursts of 4 steps, then 4 to drain
			for j := range 64 {
				if !burst {
					break
				}
				tag := Tag{Token: uint32(1 + j%8)}
				if j%2 == 0 {
					tag.HasAdvisory, tag.Advisory = true, AdvisoryRef{Port: 1, Index: tag.Token}
				}
				q.Enqueue(frames[j], tag, now)
			}
			if burst {
				q.Dequeue(out[:16], now)
			} else {
				q.Dequeue(out, now)
			}
			q.Transitions(tr)
		}, func(s Stats) bool { return s.Suspends > 0 && s.Resumes > 0 && s.EarlyDrops > 0 }},
		{"churn-forget", Options{Flows: 8, Advisory: quiet}, func(q *Queue, i int, now int64) {
			for j := range 32 {
				q.Enqueue(frames[j], Tag{Token: uint32(1 + (i*32+j)%1000)}, now)
			}
			q.Forget(uint32(1 + (i*32)%1000))
			q.Dequeue(out, now)
		}, func(s Stats) bool { return s.Forgotten > 0 }},
	} {
		q := newQueue(t, c.opts)
		i := 0
		now := int64(0)
		step := func() {
			c.run(q, i, now)
			i++
			now += ms
		}
		for range 300 { // warm up: every slot and list filled once
			step()
		}
		if a := testing.AllocsPerRun(200, step); a != 0 {
			t.Errorf("%s: %v allocs per run", c.name, a)
		}
		if !c.hit(q.Stats()) {
			t.Errorf("%s: path not taken: %+v", c.name, q.Stats())
		}
		checkInvariants(t, q)
	}

	m, _ := NewMitigation(MitigationOptions{})
	b, _ := NewTokenBucket(1e6, 1e4, 0)
	rr, _ := NewRoundRobin(64)
	sd, _ := NewStallDetector(0)
	ready := []bool{true, false, true, true}
	grants := make([]Grant, 4)
	shares := []float64{1, 2, 3}
	now := int64(0)
	if a := testing.AllocsPerRun(1000, func() {
		now += 100_000
		m.Count(10, now)
		m.Release(3, 32, now-1000, now)
		b.Allow(1500, now)
		b.Wait(1500, now)
		rr.Round(ready, 100, grants)
		sd.Check(3, uint64(now), now)
		Jain(shares)
	}); a != 0 {
		t.Errorf("helpers: %v allocs per run", a)
	}
}

// BenchmarkQueue: one op is one packet through Enqueue and Dequeue (in
// batches of 64, as the transmit loop would), over flow counts and frame
// sizes, with the naive alternative alongside: a FIFO ring that copies in
// and out (the copy is the floor of any queue that owns its memory). aqm
// rows dequeue views (one copy per packet, in); aqm-copy rows copy out as
// well, like the baseline.
func BenchmarkQueue(b *testing.B) {
	const batch = 64
	for _, size := range []int{64, 1514} {
		for _, flows := range []int{1, 64, 1024} {
			frames := make([][]byte, batch)
			for i := range frames {
				frames[i] = build(frameSpec{size: size})
			}
			b.Run(fmt.Sprintf("aqm/flows=%d/size=%d", flows, size), func(b *testing.B) {
				q := newQueue(b, Options{})
				out := make([][]byte, batch)
				tr := make([]Transition, 16)
				tok := uint32(0)
				b.ReportAllocs()
				b.SetBytes(int64(size))
				b.ResetTimer()
				for i := 0; i < b.N; i += batch {
					now := int64(i) * 100 // 10 Mpps of clock: no standing queue
					for _, f := range frames {
						q.Enqueue(f, Tag{Token: 1 + tok%uint32(flows)}, now)
						tok++
					}
					q.Dequeue(out, now)
					q.Transitions(tr)
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
			})
			if flows != 1 {
				continue
			}
			// The same copies as the baseline: DequeueCopy into caller
			// buffers instead of views.
			b.Run(fmt.Sprintf("aqm-copy/flows=1/size=%d", size), func(b *testing.B) {
				q := newQueue(b, Options{})
				bufs := make([][]byte, batch)
				for i := range bufs {
					bufs[i] = make([]byte, q.MaxFrame())
				}
				sizes := make([]int, batch)
				b.ReportAllocs()
				b.SetBytes(int64(size))
				b.ResetTimer()
				for i := 0; i < b.N; i += batch {
					now := int64(i) * 100
					for _, f := range frames {
						q.Enqueue(f, Tag{Token: 1}, now)
					}
					q.DequeueCopy(bufs, sizes, now)
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
			})
			b.Run(fmt.Sprintf("fifo-baseline/size=%d", size), func(b *testing.B) {
				ring := make([][]byte, 2*batch)
				for i := range ring {
					ring[i] = make([]byte, 1518)
				}
				lens := make([]int, len(ring))
				dst := make([]byte, 1518)
				b.ReportAllocs()
				b.SetBytes(int64(size))
				b.ResetTimer()
				head, tail := 0, 0
				for i := 0; i < b.N; i += batch {
					for _, f := range frames {
						lens[tail%len(ring)] = copy(ring[tail%len(ring)], f)
						tail++
					}
					for head < tail {
						copy(dst, ring[head%len(ring)][:lens[head%len(ring)]])
						head++
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds()/1e6, "Mpps")
			})
		}
	}
}
