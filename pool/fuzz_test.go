package pool_test

import (
	"github.com/skylane/skylane/internal/fuzzbytes"
	"testing"
	"time"

	"github.com/skylane/skylane/pool"
)

// Operations of FuzzTransition.
const (
	opAlloc      = iota // Alloc(k, Nexus or App)
	opAllocAny          // Alloc(k, any state byte)
	opFree              // Free(idx)
	opReclaim           // Reclaim(idx, any state)
	opTransition        // Transition(idx, any state, any state)
	opReap              // Reap(now += up to 25.5 s)
	numOps
)

// fuzzIndex picks an index: mostly one the model holds or a small one, at
// times anything at all.
func fuzzIndex(r *fuzzbytes.Reader, held []uint32) uint32 {
	b := r.Byte()
	switch {
	case b < 0x80 && len(held) > 0:
		return held[int(b)%len(held)]
	case b < 0xF0:
		return uint32(b) // inside or just past a small pool
	default:
		return r.U32()
	}
}

// FuzzTransition runs arbitrary sequences of Alloc, Free, Reclaim,
// Transition and Reap with arbitrary indices and states, and checks after
// every step that nothing panicked and that the pool's books agree with the
// per-buffer states: the buffers in state Free over the active segments are
// exactly Stats().FreeBuffers, Alloc hands out only buffers that were Free,
// a refused call changes nothing, and Reap releases only segments whose
// buffers are all Free, never going below MinSegments.
func FuzzTransition(f *testing.F) {
	f.Add(uint8(1), uint8(3), []byte{opAlloc, 5, 0, opFree, 0, opFree, 0, opTransition, 1, 1, 2})
	f.Add(uint8(2), uint8(1), []byte{opAlloc, 40, 1, opAlloc, 40, 0, opReclaim, 3, 2, opReap, 200, opReap, 200})
	f.Add(uint8(0), uint8(0), []byte{opAllocAny, 3, 0, opReclaim, 1, 0, opAlloc, 20, 0})
	f.Add(uint8(1), uint8(2), []byte{opTransition, 0, 0, 1, opAlloc, 1, 0, opTransition, 0xFF, 1, 2, 3, 4, 1, 2})
	f.Add(uint8(3), uint8(4), []byte{opAlloc, 60, 0, opReap, 1, opReap, 250, opAlloc, 60, 1, opReap, 250})
	f.Fuzz(func(t *testing.T, minSeg, maxExtra uint8, ops []byte) {
		opts := pool.Options{
			Name:         "fuzz",
			BufferSize:   4096,
			SegmentSize:  16 << 10, // 4 buffers a segment: segments come and go often
			MinSegments:  1 + int(minSeg%2),
			LowWatermark: 1 + int(maxExtra>>4)%6,
			IdleTimeout:  5 * time.Second,
		}
		opts.MaxSegments = opts.MinSegments + int(maxExtra%4)
		p, err := pool.New(opts)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		bps := uint32(p.BuffersPerSegment())
		maxBufs := p.MaxBuffers()
		now := time.Unix(1e9, 0)
		out := make([]uint32, 64)
		r := fuzzbytes.New(ops)

		// held is the model of the buffers out of the pool.
		held := map[uint32]pool.State{}
		heldList := func() []uint32 {
			l := make([]uint32, 0, len(held))
			for idx := range held {
				l = append(l, idx)
			}
			return l
		}
		stateOf := func(idx uint32) (pool.State, bool) { return p.StateOf(idx) }
		snapshot := func() []int16 { // -1: inactive segment
			s := make([]int16, maxBufs)
			for idx := range maxBufs {
				st, ok := stateOf(idx)
				s[idx] = int16(st)
				if !ok {
					s[idx] = -1
				}
			}
			return s
		}
		check := func(step int, what string) {
			st := p.Stats()
			free, active := 0, 0
			for seg := range int(maxBufs / bps) {
				if p.SegmentActive(seg) {
					active++
				}
			}
			for idx := range maxBufs {
				s, ok := stateOf(idx)
				if !ok {
					continue
				}
				if s == pool.Free {
					free++
				}
				if hs, isOut := held[idx]; isOut != (s != pool.Free) || isOut && hs != s {
					t.Fatalf("step %d (%s): buffer %d is %v, model: out %v as %v", step, what, idx, s, isOut, hs)
				}
			}
			if free != st.FreeBuffers {
				t.Fatalf("step %d (%s): %d buffers in state Free, Stats().FreeBuffers %d", step, what, free, st.FreeBuffers)
			}
			if active != st.Segments || st.BuffersTotal != active*int(bps) || st.Segments < opts.MinSegments || st.Segments > opts.MaxSegments {
				t.Fatalf("step %d (%s): %d active segments, stats %+v", step, what, active, st)
			}
		}
		check(-1, "New")
		for step := 0; !r.Done() && step < 500; step++ {
			var what string
			switch op := r.Byte() % numOps; op {
			case opAlloc, opAllocAny:
				k := int(r.Byte()) % (len(out) + 1)
				as := pool.Nexus + pool.State(r.Byte()%2)
				if op == opAllocAny {
					as = pool.State(r.Byte())
				}
				what = "Alloc"
				before := p.Stats()
				n := p.Alloc(out[:k], as)
				if n < 0 || n > k {
					t.Fatalf("Alloc(%d) = %d", k, n)
				}
				for _, idx := range out[:n] {
					if _, dup := held[idx]; dup || idx >= maxBufs {
						t.Fatalf("Alloc handed out %d, already out or out of range", idx)
					}
					held[idx] = as
				}
				if as != pool.Nexus && as != pool.App && n != 0 {
					t.Fatalf("Alloc(%d, state %d) handed out %d buffers in a state that is not Nexus or App", k, as, n)
				}
				if st := p.Stats(); as == pool.Nexus || as == pool.App {
					if st.Allocs-before.Allocs != uint64(n) || st.AllocFails-before.AllocFails != uint64(k-n) {
						t.Fatalf("Alloc(%d) = %d: stats %+v -> %+v", k, n, before, st)
					}
				}
			case opFree, opReclaim, opTransition:
				idx := fuzzIndex(r, heldList())
				from, to := pool.Nexus, pool.Free
				if op != opFree {
					from = pool.State(r.Byte() % 4)
				}
				if op == opTransition {
					to = pool.State(r.Byte() % 4)
				}
				before, snap := p.Stats(), snapshot()
				var ok bool
				switch op {
				case opFree:
					what, ok = "Free", p.Free(idx)
				case opReclaim:
					what, ok = "Reclaim", p.Reclaim(idx, from)
				default:
					what, ok = "Transition", p.Transition(idx, from, to)
				}
				if !ok {
					if p.Stats() != before || !equal(snap, snapshot()) {
						t.Fatalf("%s(%d, %v, %v) refused but changed the pool", what, idx, from, to)
					}
					break
				}
				if hs, out := held[idx]; !out || hs != from {
					t.Fatalf("%s(%d, %v, %v) accepted; the model has it out %v as %v", what, idx, from, to, out, hs)
				}
				if to == pool.Free {
					delete(held, idx)
				} else {
					held[idx] = to
				}
			case opReap:
				what = "Reap"
				now = now.Add(time.Duration(r.Byte()) * 100 * time.Millisecond)
				snap, before := snapshot(), p.Stats()
				n := p.Reap(now)
				after := p.Stats()
				if before.Segments-after.Segments != n || int(after.Releases-before.Releases) != n {
					t.Fatalf("Reap = %d, stats %+v -> %+v", n, before, after)
				}
				for idx := range maxBufs {
					if snap[idx] >= 0 && !p.SegmentActive(int(idx/bps)) && snap[idx] != int16(pool.Free) {
						t.Fatalf("Reap released segment %d with buffer %d in state %d", idx/bps, idx, snap[idx])
					}
				}
			}
			check(step, what)
		}
	})
}

func equal(a, b []int16) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
