package pool_test

import (
	"slices"
	"testing"
	"time"

	"github.com/skylane/skylane/pool"
)

type segEvent struct {
	seg   int
	added bool
}

func recordSegments(p *pool.Pool) *[]segEvent {
	var ev []segEvent
	p.OnSegment(func(seg int, added bool) { ev = append(ev, segEvent{seg, added}) })
	return &ev
}

func TestGrowth(t *testing.T) {
	p := newPool(t, pool.Options{MinSegments: 2, MaxSegments: 4, LowWatermark: 4})
	ev := recordSegments(p)
	if s := p.Stats(); s.Segments != 2 || s.FreeBuffers != 2*bps || s.BuffersTotal != 2*bps || s.Grows != 2 {
		t.Fatalf("new pool: %+v; want MinSegments=2 active", s)
	}
	out := make([]uint32, 64)
	// Down to exactly the watermark: no growth yet.
	if n := p.Alloc(out[:2*bps-4], pool.Nexus); n != 2*bps-4 {
		t.Fatalf("Alloc = %d", n)
	}
	if s := p.Stats(); s.Segments != 2 || s.FreeBuffers != 4 {
		t.Fatalf("at the watermark: %+v", s)
	}
	// One below it: one whole segment more.
	if n := p.Alloc(out[:1], pool.Nexus); n != 1 {
		t.Fatalf("Alloc = %d", n)
	}
	if s := p.Stats(); s.Segments != 3 || s.FreeBuffers != 3+bps || s.BuffersTotal != 3*bps || s.Grows != 3 {
		t.Fatalf("under the watermark: %+v; want a third segment", s)
	}
	if !p.SegmentActive(2) || p.SegmentActive(3) {
		t.Fatal("the new segment is not segment 2")
	}
	// A batch bigger than what is free grows inside the call.
	if n := p.Alloc(out[:bps+10], pool.App); n != bps+10 {
		t.Fatalf("Alloc across a grow = %d", n)
	}
	if s := p.Stats(); s.Segments != 4 || s.FreeBuffers != 4*bps-(3*bps+7) || s.AllocFails != 0 {
		t.Fatalf("after growing to the maximum: %+v", s)
	}
	// At the maximum: fewer at once, the shortfall counted, no more segments.
	free := p.Stats().FreeBuffers
	if n := p.Alloc(out[:free+5], pool.Nexus); n != free {
		t.Fatalf("Alloc at max = %d, want the %d left", n, free)
	}
	if s := p.Stats(); s.Segments != 4 || s.FreeBuffers != 0 || s.AllocFails != 5 || s.Grows != 4 {
		t.Fatalf("exhausted: %+v; want 5 fails", s)
	}
	if n := p.Alloc(out[:7], pool.Nexus); n != 0 {
		t.Fatalf("Alloc on an exhausted pool = %d", n)
	}
	if s := p.Stats(); s.AllocFails != 12 || s.Allocs != 4*bps {
		t.Fatalf("exhausted: %+v; want 12 fails, %d allocs", s, 4*bps)
	}
	// Every buffer handed out once, none twice.
	if want := []segEvent{{2, true}, {3, true}}; !slices.Equal(*ev, want) {
		t.Fatalf("OnSegment told %v, want %v", *ev, want)
	}
}

func TestAllocNeverHandsOutTwice(t *testing.T) {
	p := newPool(t, pool.Options{MaxSegments: 3, LowWatermark: 2})
	seen := make(map[uint32]bool)
	out := make([]uint32, 7)
	for {
		n := p.Alloc(out, pool.Nexus)
		for _, idx := range out[:n] {
			if seen[idx] || idx >= p.MaxBuffers() {
				t.Fatalf("Alloc handed out %d twice or out of range", idx)
			}
			seen[idx] = true
		}
		if n < len(out) {
			break
		}
	}
	if len(seen) != 3*bps {
		t.Fatalf("handed out %d buffers, want %d", len(seen), 3*bps)
	}
}

// grownPool has segments 0..3 active and every buffer free.
func grownPool(t *testing.T, min int) (*pool.Pool, *[]segEvent) {
	t.Helper()
	p := newPool(t, pool.Options{MinSegments: min, MaxSegments: 4, LowWatermark: 1, IdleTimeout: 10 * time.Second})
	ev := recordSegments(p)
	all := make([]uint32, 4*bps)
	if n := p.Alloc(all, pool.Nexus); n != 4*bps {
		t.Fatalf("Alloc = %d", n)
	}
	for _, idx := range all {
		p.Free(idx)
	}
	if s := p.Stats(); s.Segments != 4 || s.FreeBuffers != 4*bps {
		t.Fatalf("grown pool: %+v", s)
	}
	return p, ev
}

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func TestReapAfterIdleTimeout(t *testing.T) {
	p, ev := grownPool(t, 2)
	*ev = nil
	if n := p.Reap(t0); n != 0 {
		t.Fatalf("Reap right after use released %d", n)
	}
	if n := p.Reap(t0.Add(10*time.Second - time.Nanosecond)); n != 0 {
		t.Fatalf("Reap before IdleTimeout released %d", n)
	}
	if n := p.Reap(t0.Add(10 * time.Second)); n != 2 {
		t.Fatalf("Reap at IdleTimeout released %d, want 2 (down to MinSegments)", n)
	}
	if s := p.Stats(); s.Segments != 2 || s.FreeBuffers != 2*bps || s.BuffersTotal != 2*bps || s.Releases != 2 {
		t.Fatalf("after Reap: %+v", s)
	}
	if !p.SegmentActive(0) || !p.SegmentActive(1) || p.SegmentActive(2) || p.SegmentActive(3) {
		t.Fatal("Reap did not release the highest segments")
	}
	if want := []segEvent{{3, false}, {2, false}}; !slices.Equal(*ev, want) {
		t.Fatalf("OnSegment told %v, want %v", *ev, want)
	}
	if n := p.Reap(t0.Add(time.Hour)); n != 0 || p.Stats().Segments != 2 {
		t.Fatalf("Reap went below MinSegments: released %d", n)
	}
	if _, ok := p.StateOf(2 * bps); ok {
		t.Fatal("a buffer of a released segment still has a state")
	}
	// The pool grows back into the released segments.
	out := make([]uint32, 2*bps+1)
	if n := p.Alloc(out, pool.Nexus); n != 2*bps+1 || p.Stats().Segments != 3 {
		t.Fatalf("regrow: Alloc = %d, %+v", n, p.Stats())
	}
	if want := []segEvent{{3, false}, {2, false}, {2, true}}; !slices.Equal(*ev, want) {
		t.Fatalf("OnSegment told %v, want %v", *ev, want)
	}
}

func TestReapNeverReleasesABufferOut(t *testing.T) {
	for _, as := range []pool.State{pool.Nexus, pool.App} {
		p, _ := grownPool(t, 1)
		// Take every buffer of segments 0..2 and one of segment 3, then give
		// back all but that one and one of segment 0 (so that segment 0,
		// busy, is not what keeps the count at MinSegments).
		all := make([]uint32, 3*bps+1)
		if n := p.Alloc(all, as); n != 3*bps+1 || all[0]/bps != 0 || all[3*bps]/bps != 3 {
			t.Fatalf("Alloc = %d, first %d, last %d", n, all[0], all[n-1])
		}
		held := all[3*bps]
		for _, idx := range all[1 : 3*bps] {
			if !p.Reclaim(idx, as) {
				t.Fatalf("Reclaim(%d, %v) refused", idx, as)
			}
		}
		p.Reap(t0)
		tBusy := t0.Add(time.Minute)
		if n := p.Reap(tBusy); n != 2 {
			t.Fatalf("%v: Reap released %d, want 2 (segments 1 and 2)", as, n)
		}
		if !p.SegmentActive(3) || !p.SegmentActive(0) {
			t.Fatalf("%v: segment 3 with buffer %d out was released", as, held)
		}
		if st, ok := p.StateOf(held); !ok || st != as {
			t.Fatalf("%v: held buffer is %v, %v", as, st, ok)
		}
		// Given back, it idles from the last Reap that saw it busy.
		if !p.Reclaim(held, as) {
			t.Fatal("Reclaim refused")
		}
		if n := p.Reap(tBusy.Add(10*time.Second - time.Nanosecond)); n != 0 {
			t.Fatalf("%v: released %d before IdleTimeout", as, n)
		}
		if n := p.Reap(tBusy.Add(10 * time.Second)); n != 1 || p.SegmentActive(3) {
			t.Fatalf("%v: Reap released %d, segment 3 active %v", as, n, p.SegmentActive(3))
		}
	}
}

// TestReapIdleIsFromLastUse: a segment that was used between two reaps is
// not idle even if all its buffers are free when the reaper looks.
func TestReapIdleIsFromLastUse(t *testing.T) {
	p := newPool(t, pool.Options{MinSegments: 1, MaxSegments: 3, LowWatermark: 1})
	seg0 := make([]uint32, bps)
	p.Alloc(seg0, pool.Nexus) // segment 0 all out; segment 1 grows
	more := make([]uint32, bps)
	p.Alloc(more, pool.Nexus) // segment 1 all out; segment 2 grows
	for _, idx := range more {
		p.Free(idx)
	}
	p.Reap(t0)
	one := make([]uint32, 1)
	if p.Alloc(one, pool.Nexus); one[0]/bps != 1 {
		t.Fatalf("Alloc took %d, want one of segment 1", one[0])
	}
	p.Free(one[0])
	if n := p.Reap(t0.Add(10 * time.Second)); n != 1 || p.SegmentActive(2) || !p.SegmentActive(1) {
		t.Fatalf("released %d; want only the untouched segment 2", n)
	}
	if n := p.Reap(t0.Add(20 * time.Second)); n != 1 || p.SegmentActive(1) {
		t.Fatalf("released %d; want segment 1 ten seconds after its last use", n)
	}
	if !p.SegmentActive(0) {
		t.Fatal("segment 0 with all buffers out was released")
	}
}

// TestReapReturnsMemory: released segments' pages really go back to the OS
// (the memfd's st_blocks drop) and read back as zeros when regrown.
func TestReapReturnsMemory(t *testing.T) {
	p, _ := grownPool(t, 1)
	for idx := uint32(0); idx < 4*bps; idx++ {
		b := p.Buffer(idx)
		for i := range b {
			b[i] = 0xA5
		}
		copy(p.UserMeta(idx), "metadata")
	}
	before, err := p.AllocatedBytes()
	if err != nil {
		t.Fatal(err)
	}
	if before < 4*segSize {
		t.Fatalf("memfd holds %d bytes after writing 4 segments", before)
	}
	p.Reap(t0)
	n := p.Reap(t0.Add(time.Minute))
	if n != 3 {
		t.Fatalf("Reap released %d, want 3", n)
	}
	after, err := p.AllocatedBytes()
	if err != nil {
		t.Fatal(err)
	}
	if before-after < int64(n)*segSize {
		t.Fatalf("memfd went from %d to %d bytes: %d released segments are %d bytes", before, after, n, n*segSize)
	}
	if after < segSize {
		t.Fatalf("memfd holds %d bytes: segment 0, still active, was punched too", after)
	}
	if s := p.Stats(); s.PunchErrors != 0 {
		t.Fatalf("punch errors: %+v", s)
	}
	all := make([]uint32, 4*bps)
	if k := p.Alloc(all, pool.Nexus); k != 4*bps {
		t.Fatalf("regrow: Alloc = %d", k)
	}
	for _, idx := range all {
		b, um := p.Buffer(idx), p.UserMeta(idx)
		if idx < bps {
			if b[0] != 0xA5 || b[bufSize-1] != 0xA5 || string(um[:8]) != "metadata" {
				t.Fatalf("buffer %d of the kept segment lost its contents", idx)
			}
			continue
		}
		if !allZero(b) || !allZero(um) {
			t.Fatalf("buffer %d of a released segment was not cleared", idx)
		}
	}
}

func allZero(b []byte) bool {
	for _, v := range b {
		if v != 0 {
			return false
		}
	}
	return true
}
