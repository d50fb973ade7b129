package memif_test

import (
	"encoding/binary"
	"math"
	"slices"
	"testing"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
)

// lostFrames writes total frames numbered 0.. on w in batches of batch
// (reading each batch off r, so the queue never fills) and returns the
// numbers of the frames that did not arrive, in order. It checks the
// arrivals are in order and the stats account for every frame.
func lostFrames(t *testing.T, w, r netif.Link, total, batch int) []int {
	t.Helper()
	bufs, sizes := bufsFor(r, batch)
	frames := make([][]byte, batch)
	var lost []int
	next := 0 // the next frame number expected to arrive
	for sent := 0; sent < total; {
		k := min(batch, total-sent)
		for i := range k {
			frames[i] = frame(uint64(sent+i), 64)
		}
		if n, err := w.Write(frames[:k]); n != k || err != nil {
			t.Fatalf("Write(%d) = %d, %v", k, n, err)
		}
		sent += k
		n, err := r.Read(bufs, sizes)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			seq := int(binary.LittleEndian.Uint64(bufs[i]))
			if seq < next || seq >= sent {
				t.Fatalf("frame %d arrived after %d, with %d sent", seq, next-1, sent)
			}
			for ; next < seq; next++ {
				lost = append(lost, next)
			}
			next++
		}
		for ; next < sent; next++ { // all written frames were readable
			lost = append(lost, next)
		}
	}
	ws, rs := w.Stats(), r.Stats()
	if ws.TxPackets != uint64(total) || ws.TxDrops != 0 {
		t.Errorf("writer: %d sent, %d tail drops; want %d, 0: a lost frame was sent", ws.TxPackets, ws.TxDrops, total)
	}
	if rs.RxDrops != uint64(len(lost)) || rs.RxPackets != uint64(total-len(lost)) {
		t.Errorf("reader: %d received, %d drops; want %d, %d", rs.RxPackets, rs.RxDrops, total-len(lost), len(lost))
	}
	return lost
}

// within fails unless got is within 6 standard deviations of a binomial
// count of n trials of probability p: a bound a correct generator misses
// about once in 10^9 runs.
func within(t *testing.T, what string, got, n int, p float64) {
	t.Helper()
	mean := float64(n) * p
	sd := math.Sqrt(float64(n) * p * (1 - p))
	if math.Abs(float64(got)-mean) > 6*sd {
		t.Errorf("%s: %d of %d, want %.0f ± %.0f", what, got, n, mean, 6*sd)
	}
}

// TestLossRate: random loss drops about Rate of the frames, counted as the
// reader's RxDrops; the same seed drops the same frames whatever the
// batches, another seed or the other direction other frames.
func TestLossRate(t *testing.T) {
	const total = 100_000
	o := memif.Options{Loss: memif.Loss{Rate: 0.05, Seed: 7}}
	a, b := newPair(t, o)
	lost := lostFrames(t, a, b, total, 32)
	within(t, "lost", len(lost), total, 0.05)

	a2, b2 := newPair(t, o)
	if again := lostFrames(t, a2, b2, total, 5); !slices.Equal(again, lost) {
		t.Errorf("same seed, other batches: %d frames lost, %d of them the same", len(again), common(again, lost))
	}
	if back := lostFrames(t, b2, a2, total, 32); common(back, lost) > len(lost)/5 {
		t.Errorf("other direction: %d of %d lost frames the same: not independent", common(back, lost), len(lost))
	}
	o.Loss.Seed = 8
	a3, b3 := newPair(t, o)
	if other := lostFrames(t, a3, b3, total, 32); common(other, lost) > len(lost)/5 {
		t.Errorf("other seed: %d of %d lost frames the same: not independent", common(other, lost), len(lost))
	}
}

// common counts the values x and y, both sorted, share.
func common(x, y []int) int {
	n := 0
	for i, j := 0, 0; i < len(x) && j < len(y); {
		switch {
		case x[i] < y[j]:
			i++
		case x[i] > y[j]:
			j++
		default:
			n++
			i++
			j++
		}
	}
	return n
}

// TestLossBurst: bursts drop runs of at least BurstLen consecutive frames
// (a burst may start right after another: one run), about BurstRate of the
// frames start one, and random loss adds drops on top of the same bursts.
func TestLossBurst(t *testing.T) {
	const total, burst, rate = 200_000, 16, 0.002
	a, b := newPair(t, memif.Options{Loss: memif.Loss{BurstRate: rate, BurstLen: burst, Seed: 1}})
	lost := lostFrames(t, a, b, total, 32)
	runs := 0
	for i := 0; i < len(lost); {
		j := i + 1
		for j < len(lost) && lost[j] == lost[j-1]+1 {
			j++
		}
		if j-i < burst && lost[j-1] != total-1 { // only the last run may be cut short
			t.Fatalf("a run of %d lost frames from frame %d: bursts drop %d", j-i, lost[i], burst)
		}
		runs++
		i = j
	}
	// Runs stand for bursts; adjacent bursts make that a slight
	// undercount, well within the bound at this rate.
	within(t, "bursts", runs, total, rate)
	if len(lost) < runs*burst || len(lost) > runs*2*burst {
		t.Errorf("%d frames lost in %d runs of %d", len(lost), runs, burst)
	}

	// Random loss on top, same seed: the bursts fall where they did (both
	// draws are made for every frame), and about Rate of the other frames
	// are lost too.
	a, b = newPair(t, memif.Options{Loss: memif.Loss{Rate: 0.01, BurstRate: rate, BurstLen: burst, Seed: 1}})
	mixed := lostFrames(t, a, b, total, 32)
	if c := common(mixed, lost); c != len(lost) {
		t.Errorf("with random loss added, %d of the %d burst losses remain", c, len(lost))
	}
	within(t, "random loss outside bursts", len(mixed)-len(lost), total-len(lost), 0.01)
}

// TestLossOptions: rates outside 0..1 and bursts without a length are
// refused; a rate of 1 drops every frame.
func TestLossOptions(t *testing.T) {
	for _, l := range []memif.Loss{
		{Rate: -0.1},
		{Rate: 1.5},
		{Rate: math.NaN()},
		{BurstRate: 2, BurstLen: 1},
		{BurstRate: 0.1},  // no length
		{BurstLen: -1},    // negative
		{BurstRate: -0.1}, // negative
	} {
		if _, _, err := memif.NewPair(memif.Options{Loss: l}); err == nil {
			t.Errorf("NewPair with loss %+v succeeded", l)
		}
	}
	a, b := newPair(t, memif.Options{Loss: memif.Loss{Rate: 1}})
	if lost := lostFrames(t, a, b, 1000, 32); len(lost) != 1000 {
		t.Errorf("rate 1: %d of 1000 lost", len(lost))
	}
}
