package pool_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/pool"
)

// Small pools for tests: 32 KiB segments of 2 KiB buffers, 16 per segment.
const (
	segSize = 32 << 10
	bufSize = 2 << 10
	bps     = segSize / bufSize
)

func newPool(t testing.TB, o pool.Options) *pool.Pool {
	t.Helper()
	if o.BufferSize == 0 {
		o.BufferSize = bufSize
	}
	if o.SegmentSize == 0 {
		o.SegmentSize = segSize
	}
	if o.Name == "" {
		o.Name = "test"
	}
	p, err := pool.New(o)
	if err != nil {
		t.Fatalf("pool.New(%+v): %v", o, err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

func TestOptionsValidation(t *testing.T) {
	tests := []struct {
		name string
		o    pool.Options
		want string // substring of the error; "" means valid
	}{
		{"defaults", pool.Options{}, ""},
		{"smallest buffer", pool.Options{BufferSize: 512}, ""},
		{"largest buffer", pool.Options{BufferSize: 16384}, ""},
		{"smallest segment", pool.Options{SegmentSize: 16 << 10, BufferSize: 4096}, ""},
		{"non-power-of-two buffer count", pool.Options{SegmentSize: 24 << 10, BufferSize: 2048}, ""},
		{"buffer 511", pool.Options{BufferSize: 511}, "buffer size 511 outside [512, 16384]"},
		{"buffer 16385", pool.Options{BufferSize: 16385}, "buffer size 16385 outside [512, 16384]"},
		{"buffer negative", pool.Options{BufferSize: -2048}, "buffer size -2048 outside"},
		{"segment not a page multiple", pool.Options{SegmentSize: 20000}, "segment size 20000 must be a multiple of the page size"},
		{"segment below 16 KiB", pool.Options{SegmentSize: 8 << 10, BufferSize: 1024}, "segment size 8192 must be a multiple of the page size 4096 and at least 16384"},
		{"segment negative", pool.Options{SegmentSize: -32768}, "segment size -32768"},
		{"huge pages need 2 MiB segments", pool.Options{HugePages: true, SegmentSize: 32 << 10}, "multiple of the page size 2097152"},
		{"buffer not dividing segment", pool.Options{BufferSize: 3000, SegmentSize: 32 << 10}, "buffer size 3000 does not divide segment size 32768"},
		{"buffer larger than segment", pool.Options{BufferSize: 16384, SegmentSize: 20480}, "buffer size 16384 does not divide segment size 20480"},
		{"min > max", pool.Options{MinSegments: 5, MaxSegments: 4}, "min segments (5) ≤ max segments (4)"},
		{"min negative", pool.Options{MinSegments: -1, MaxSegments: 4}, "min segments (-1)"},
		{"max negative", pool.Options{MaxSegments: -1}, "max segments (-1)"},
		{"too many buffers", pool.Options{BufferSize: 512, MaxSegments: pool.MaxBuffers/64 + 1}, "exceed 16777216 buffers"},
		{"max segments overflowing int", pool.Options{BufferSize: 512, MaxSegments: math.MaxInt / 8}, "exceed 16777216 buffers"},
		{"max segments wrapping to 0 buffers", pool.Options{BufferSize: 2048, MaxSegments: 1 << 60}, "exceed 16777216 buffers"},
		{"negative watermark", pool.Options{LowWatermark: -1}, "negative watermark"},
		{"negative idle timeout", pool.Options{IdleTimeout: -time.Second}, "negative watermark or idle timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.o.Name = "opts"
			fds := nettest.OpenFDs(t)
			p, err := pool.New(tt.o)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				p.Close()
				return
			}
			if err == nil {
				p.Close()
				t.Fatalf("New accepted %+v", tt.o)
			}
			if p != nil {
				t.Errorf("New returned a pool with error %v", err)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `pool "opts"`) {
				t.Errorf("error %q does not say %q (and name the pool)", err, tt.want)
			}
			// Refused before any memfd was made.
			if n := nettest.OpenFDs(t); n != fds {
				t.Errorf("open fds went from %d to %d on a refused New", fds, n)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	p := newPool(t, pool.Options{}) // 2 KiB in 32 KiB, the defaults too
	o := p.Options()
	if o.BufferSize != pool.DefaultBufferSize || o.SegmentSize != pool.DefaultSegmentSize ||
		o.MinSegments != 1 || o.MaxSegments != pool.DefaultMaxSegments ||
		o.IdleTimeout != pool.DefaultIdleTimeout || o.LowWatermark != 32 {
		t.Fatalf("defaults: %+v", o)
	}
	if p.BuffersPerSegment() != 16 || p.MaxBuffers() != 16*pool.DefaultMaxSegments {
		t.Fatalf("BuffersPerSegment %d, MaxBuffers %d", p.BuffersPerSegment(), p.MaxBuffers())
	}
	if s := p.Stats(); s.Segments != 1 || s.FreeBuffers != 16 || s.BuffersTotal != 16 {
		t.Fatalf("a new pool: %+v", s)
	}
	if len(p.Mem()) != pool.DefaultMaxSegments*pool.DefaultSegmentSize {
		t.Fatalf("Mem() is %d bytes", len(p.Mem()))
	}
}

func TestCloseReleasesFDs(t *testing.T) {
	before := nettest.OpenFDs(t)
	for range 20 {
		p, err := pool.New(pool.Options{Name: "leak"})
		if err != nil {
			t.Fatal(err)
		}
		if nettest.OpenFDs(t) != before+3 {
			t.Fatalf("a pool holds %d fds, want 3 (buffers, user and nexus metadata)", nettest.OpenFDs(t)-before)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	if after := nettest.OpenFDs(t); after != before {
		t.Fatalf("open fds %d -> %d after 20 pools", before, after)
	}
}

func TestAllocFreeStates(t *testing.T) {
	p := newPool(t, pool.Options{MaxSegments: 4, LowWatermark: 1})
	out := make([]uint32, 4)
	if n := p.Alloc(out, pool.Nexus); n != 4 {
		t.Fatalf("Alloc = %d", n)
	}
	for i, idx := range out {
		if idx != uint32(i) {
			t.Errorf("Alloc handed out %v, want the lowest indices 0..3", out)
		}
		if st, ok := p.StateOf(idx); !ok || st != pool.Nexus {
			t.Errorf("StateOf(%d) = %v, %v; want Nexus", idx, st, ok)
		}
	}
	if s := p.Stats(); s.FreeBuffers != bps-4 || s.Allocs != 4 {
		t.Fatalf("after Alloc 4: %+v", s)
	}
	// Nexus -> Free.
	if !p.Free(out[0]) {
		t.Fatal("Free of a Nexus buffer refused")
	}
	if st, _ := p.StateOf(out[0]); st != pool.Free {
		t.Fatalf("state after Free = %v", st)
	}
	// Double free is refused and changes nothing.
	before := p.Stats()
	if p.Free(out[0]) {
		t.Fatal("double Free accepted")
	}
	if p.Reclaim(out[0], pool.App) {
		t.Fatal("Reclaim of a free buffer accepted")
	}
	if p.Stats() != before {
		t.Fatalf("a refused free changed the stats: %+v -> %+v", before, p.Stats())
	}
	// Nexus -> App -> Nexus -> App -> Free.
	if !p.Transition(out[1], pool.Nexus, pool.App) {
		t.Fatal("Transition Nexus->App refused")
	}
	if p.Free(out[1]) {
		t.Fatal("Free (from Nexus) of an App buffer accepted")
	}
	if p.Transition(out[1], pool.Nexus, pool.App) {
		t.Fatal("Transition from the wrong state accepted")
	}
	if !p.Transition(out[1], pool.App, pool.Nexus) || !p.Transition(out[1], pool.Nexus, pool.App) {
		t.Fatal("App<->Nexus transitions refused")
	}
	if !p.Reclaim(out[1], pool.App) {
		t.Fatal("Reclaim from App refused")
	}
	if st, _ := p.StateOf(out[1]); st != pool.Free {
		t.Fatalf("state after Reclaim = %v", st)
	}
	// Alloc straight to App (the alloc ring).
	if n := p.Alloc(out[:1], pool.App); n != 1 {
		t.Fatal("Alloc App failed")
	}
	if st, _ := p.StateOf(out[0]); st != pool.App {
		t.Fatalf("Alloc(App) gave state %v", st)
	}
	if s := p.Stats(); s.FreeBuffers != bps-3 {
		t.Fatalf("free buffers %d, want %d", s.FreeBuffers, bps-3)
	}
}

func TestTransitionRefusesBadIndices(t *testing.T) {
	p := newPool(t, pool.Options{MaxSegments: 4, LowWatermark: 1})
	out := make([]uint32, 1)
	p.Alloc(out, pool.Nexus)
	before := p.Stats()
	for _, tc := range []struct {
		name string
		idx  uint32
	}{
		{"just past the pool", p.MaxBuffers()},
		{"far past the pool", 1 << 30},
		{"max uint32", math.MaxUint32},
		{"inactive segment", 2 * bps},
		{"last buffer of an inactive segment", 4*bps - 1},
	} {
		for _, from := range []pool.State{pool.Free, pool.Nexus, pool.App} {
			for _, to := range []pool.State{pool.Free, pool.Nexus, pool.App} {
				if p.Transition(tc.idx, from, to) {
					t.Errorf("%s: Transition(%d, %v, %v) accepted", tc.name, tc.idx, from, to)
				}
			}
		}
		if p.Free(tc.idx) || p.Reclaim(tc.idx, pool.App) {
			t.Errorf("%s: Free/Reclaim(%d) accepted", tc.name, tc.idx)
		}
		if _, ok := p.StateOf(tc.idx); ok {
			t.Errorf("%s: StateOf(%d) ok", tc.name, tc.idx)
		}
	}
	if p.Stats() != before {
		t.Fatalf("refused calls changed the stats: %+v -> %+v", before, p.Stats())
	}
	if st, ok := p.StateOf(out[0]); !ok || st != pool.Nexus {
		t.Fatalf("the held buffer is now %v, %v", st, ok)
	}
	if !p.SegmentActive(0) || p.SegmentActive(1) || p.SegmentActive(-1) || p.SegmentActive(4) {
		t.Fatal("SegmentActive wrong")
	}
}

func TestAllocPrefersLowestSegment(t *testing.T) {
	p := newPool(t, pool.Options{MaxSegments: 3, LowWatermark: 1})
	all := make([]uint32, 2*bps)
	if n := p.Alloc(all, pool.Nexus); n != 2*bps {
		t.Fatalf("Alloc = %d", n)
	}
	// Give back two of segment 1 first, then two of segment 0.
	for _, idx := range []uint32{bps + 3, bps + 5, 7, 2} {
		if !p.Free(idx) {
			t.Fatalf("Free(%d) refused", idx)
		}
	}
	out := make([]uint32, 3)
	if n := p.Alloc(out, pool.Nexus); n != 3 {
		t.Fatalf("Alloc = %d", n)
	}
	if out[0]/bps != 0 || out[1]/bps != 0 || out[2]/bps != 1 {
		t.Fatalf("Alloc = %v; want both free buffers of segment 0 before segment 1", out)
	}
	if !(out[0] == 2 && out[1] == 7 || out[0] == 7 && out[1] == 2) {
		t.Fatalf("Alloc = %v; want 2 and 7 first", out)
	}
}

func TestAddrCache(t *testing.T) {
	p := newPool(t, pool.Options{MaxSegments: 4, LowWatermark: 1})
	all := make([]uint32, 3*bps)
	p.Alloc(all, pool.Nexus) // three active segments
	check := func(name string, idxs []uint32, lookups uint64) {
		t.Helper()
		c := p.NewAddrCache()
		before := p.Stats().AddrLookups
		for _, idx := range idxs {
			seg, i := idx/bps, idx%bps
			want := uint64(seg)*segSize + uint64(i)*bufSize
			if a := c.Addr(idx); a != want {
				t.Errorf("%s: Addr(%d) = %d, want %d", name, idx, a, want)
			}
			// The address names the buffer's bytes in the device region.
			if a := c.Addr(idx); &p.Mem()[a] != &p.Buffer(idx)[0] {
				t.Errorf("%s: Mem()[Addr(%d)] is not Buffer(%d)", name, idx, idx)
			}
		}
		if d := p.Stats().AddrLookups - before; d != lookups {
			t.Errorf("%s: %d lookups, want %d", name, d, lookups)
		}
	}
	check("one segment", []uint32{0, 1, 2, 3, 15, 7}, 1)
	check("one other segment", []uint32{bps + 4, bps + 5, bps + 15}, 1)
	check("two segments", []uint32{bps - 2, bps - 1, bps, bps + 1}, 2)
	check("whole pool in order", all, 3)
	check("empty batch", nil, 0)
	if len(p.Buffer(5)) != bufSize || cap(p.Buffer(5)) != bufSize {
		t.Fatalf("Buffer is %d bytes, cap %d", len(p.Buffer(5)), cap(p.Buffer(5)))
	}
	if len(p.UserMeta(5)) != pool.UserMetaLen || cap(p.UserMeta(5)) != pool.UserMetaLen {
		t.Fatalf("UserMeta is %d bytes", len(p.UserMeta(5)))
	}
}

func TestRegions(t *testing.T) {
	p := newPool(t, pool.Options{MaxSegments: 4})
	bufs, umeta, umetaSeg := p.Regions()
	if bufs.Size() != 4*segSize {
		t.Fatalf("buffer region %d bytes", bufs.Size())
	}
	if umetaSeg%shm.PageSize != 0 || umetaSeg < bps*pool.UserMetaLen || umeta.Size() != 4*umetaSeg {
		t.Fatalf("user metadata: %d bytes per segment, region %d", umetaSeg, umeta.Size())
	}
}

// TestFreeStateOnlyThroughAllocAndReclaim: the free lists and the Free state
// must agree, so a buffer enters or leaves Free only by Alloc and
// Reclaim/Free. A Transition or Reclaim that skipped the free list would let
// Alloc hand one buffer to two owners.
func TestFreeStateOnlyThroughAllocAndReclaim(t *testing.T) {
	for _, tc := range []struct {
		name string
		call func(p *pool.Pool) bool // buffer 0 is Nexus, 1 is App, 2.. are free
	}{
		{"Transition Free->Nexus", func(p *pool.Pool) bool { return p.Transition(5, pool.Free, pool.Nexus) }},
		{"Transition Free->App", func(p *pool.Pool) bool { return p.Transition(5, pool.Free, pool.App) }},
		{"Transition Free->Free", func(p *pool.Pool) bool { return p.Transition(5, pool.Free, pool.Free) }},
		{"Transition Nexus->Free", func(p *pool.Pool) bool { return p.Transition(0, pool.Nexus, pool.Free) }},
		{"Transition App->Free", func(p *pool.Pool) bool { return p.Transition(1, pool.App, pool.Free) }},
		{"Transition to an unknown state", func(p *pool.Pool) bool { return p.Transition(0, pool.Nexus, pool.State(7)) }},
		{"Reclaim from Free", func(p *pool.Pool) bool { return p.Reclaim(5, pool.Free) }},
		{"Reclaim from an unknown state", func(p *pool.Pool) bool { return p.Reclaim(0, pool.State(9)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t, pool.Options{MaxSegments: 1})
			out := make([]uint32, 2)
			p.Alloc(out, pool.Nexus)
			if !p.Transition(1, pool.Nexus, pool.App) {
				t.Fatal("Transition Nexus->App refused")
			}
			before := p.Stats()
			if tc.call(p) {
				t.Errorf("accepted")
			}
			if s0, _ := p.StateOf(0); s0 != pool.Nexus {
				t.Errorf("buffer 0 is %v, want Nexus", s0)
			}
			if s1, _ := p.StateOf(1); s1 != pool.App {
				t.Errorf("buffer 1 is %v, want App", s1)
			}
			if s5, _ := p.StateOf(5); s5 != pool.Free {
				t.Errorf("buffer 5 is %v, want Free", s5)
			}
			if p.Stats() != before {
				t.Errorf("a refused call changed the stats: %+v -> %+v", before, p.Stats())
			}
			// The rest of the pool is handed out, each buffer once.
			rest := make([]uint32, bps)
			n := p.Alloc(rest, pool.Nexus)
			seen := map[uint32]bool{0: true, 1: true}
			for _, idx := range rest[:n] {
				if seen[idx] {
					t.Fatalf("buffer %d handed out twice", idx)
				}
				seen[idx] = true
			}
			if n != bps-2 {
				t.Fatalf("Alloc of the rest = %d, want %d", n, bps-2)
			}
		})
	}
}

// TestAllocRefusesNonHolderStates: Alloc hands buffers out as Nexus or App
// only; as Free they would be out of the free lists yet look free.
func TestAllocRefusesNonHolderStates(t *testing.T) {
	p := newPool(t, pool.Options{MaxSegments: 1})
	out := make([]uint32, 4)
	for _, as := range []pool.State{pool.Free, pool.State(3), pool.State(255)} {
		if k := p.Alloc(out, as); k != 0 {
			t.Fatalf("Alloc(state %d) handed out %d", as, k)
		}
	}
	if s := p.Stats(); s.FreeBuffers != bps || s.Allocs != 0 {
		t.Fatalf("refused Allocs changed the pool: %+v", s)
	}
}

// TestHugePages: asking for huge pages either works (2 MiB segments) or
// fails at once with an error that says what to do; it never half-works.
func TestHugePages(t *testing.T) {
	p, err := pool.New(pool.Options{Name: "huge", HugePages: true, MaxSegments: 2})
	if err != nil {
		if !strings.Contains(err.Error(), "nr_hugepages") {
			t.Fatalf("error does not say what to do: %v", err)
		}
		return
	}
	defer p.Close()
	if p.SegmentSize() != pool.HugeSegmentSize {
		t.Fatalf("segment size %d with huge pages", p.SegmentSize())
	}
	idx := make([]uint32, 4)
	if n := p.Alloc(idx, pool.Nexus); n != 4 {
		t.Fatalf("alloc %d", n)
	}
	p.Buffer(idx[0])[0] = 1
}

// FreeSegments counts exactly the active segments whose buffers are all
// free: one buffer out keeps its segment out of the count.
func TestFreeSegments(t *testing.T) {
	p := newPool(t, pool.Options{MinSegments: 3})
	bps := p.Stats().BuffersTotal / 3
	if got := p.Stats().FreeSegments; got != 3 {
		t.Fatalf("fresh pool: %d free segments, want 3", got)
	}
	out := make([]uint32, bps+1) // all of the lowest segment, one of the next
	if n := p.Alloc(out, pool.Nexus); n != len(out) {
		t.Fatalf("Alloc = %d, want %d", n, len(out))
	}
	// The allocation may have grown the pool under its low watermark:
	// every segment but the two touched ones is free.
	if st := p.Stats(); st.FreeSegments != st.Segments-2 {
		t.Errorf("two segments touched: %d free of %d segments, want %d", st.FreeSegments, st.Segments, st.Segments-2)
	}
	for _, idx := range out[:bps] {
		p.Free(idx)
	}
	if st := p.Stats(); st.FreeSegments != st.Segments-1 {
		t.Errorf("one buffer still out: %d free of %d segments, want %d", st.FreeSegments, st.Segments, st.Segments-1)
	}
}
