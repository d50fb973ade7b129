package ring_test

import (
	"errors"
	"testing"
	"unsafe"

	"github.com/skylane/skylane/ring"
)

// The tests here play the untrusted peer by writing its index word directly.

func TestConsumerDetectsBadProducer(t *testing.T) {
	const size = 8
	tests := []struct {
		name    string
		consume int    // slots consumed before the bad write (of 5 produced)
		prod    uint32 // what the peer writes as its index
		corrupt bool
	}{
		{"forward within bounds", 0, 7, false},
		{"exactly full", 0, 8, false},
		{"full after consuming", 3, 11, false},
		{"unchanged", 2, 5, false},
		{"laps the consumer by one", 0, 9, true},
		{"laps after consuming", 3, 12, true},
		{"far ahead", 0, 1 << 20, true},
		{"backwards, still ahead of consumer", 0, 4, true},
		{"backwards to the consumer", 3, 3, true},
		{"backwards behind the consumer", 3, 2, true},
		{"backwards by 2^31", 0, 5 + 1<<31, true},
		{"max uint32", 0, 0xFFFFFFFF, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem, p, c := newRing(t, size)
			for i := range 5 {
				p.Enqueue([]ring.Slot{seqSlot(uint32(i))})
			}
			// The consumer learns prod = 5, then takes some.
			if n, err := c.Peek(size); n != 5 || err != nil {
				t.Fatalf("Peek = %d, %v", n, err)
			}
			c.Release(tt.consume)
			putWord(mem, offProd, tt.prod)
			n, err := c.Peek(size) // asks for more than cached: must look
			if !tt.corrupt {
				want := int(tt.prod) - tt.consume
				if err != nil || n != want {
					t.Fatalf("Peek = %d, %v; want %d, nil", n, err, want)
				}
				return
			}
			if !errors.Is(err, ring.ErrCorrupt) || n != 0 {
				t.Fatalf("Peek = %d, %v; want 0, ErrCorrupt", n, err)
			}
			// Sticky, even after the peer puts a sane value back.
			putWord(mem, offProd, 5)
			out := make([]ring.Slot, 4)
			for _, call := range []func() (int, error){
				func() (int, error) { return c.Peek(1) },
				func() (int, error) { return c.Peek(0) },
				func() (int, error) { return c.Dequeue(out) },
			} {
				if n, err := call(); n != 0 || !errors.Is(err, ring.ErrCorrupt) {
					t.Errorf("call after ErrCorrupt = %d, %v", n, err)
				}
			}
			if !errors.Is(c.Err(), ring.ErrCorrupt) {
				t.Errorf("Err() = %v", c.Err())
			}
		})
	}
}

// TestConsumerReadsProducerOnlyWhenNeeded: a bad producer index is found the
// next time the consumer needs more than it already knows about, not before
// (the cached copy spares an atomic load per batch).
func TestConsumerReadsProducerOnlyWhenNeeded(t *testing.T) {
	mem, p, c := newRing(t, 8)
	p.Enqueue([]ring.Slot{seqSlot(0), seqSlot(1), seqSlot(2), seqSlot(3)})
	if n, _ := c.Peek(4); n != 4 {
		t.Fatalf("Peek(4) = %d", n)
	}
	putWord(mem, offProd, 1000)
	if n, err := c.Peek(2); n != 2 || err != nil {
		t.Fatalf("Peek(2) served from the cache = %d, %v", n, err)
	}
	if n, err := c.Peek(5); n != 0 || !errors.Is(err, ring.ErrCorrupt) {
		t.Fatalf("Peek(5) = %d, %v; want ErrCorrupt", n, err)
	}
}

func TestProducerDetectsBadConsumer(t *testing.T) {
	const size = 8
	tests := []struct {
		name    string
		seen    uint32 // consumer index the producer has validated (of 5 produced)
		cons    uint32 // what the peer writes
		corrupt bool
	}{
		{"unchanged", 2, 2, false},
		{"forward", 2, 4, false},
		{"caught up with the producer", 2, 5, false},
		{"beyond the producer", 2, 6, true},
		{"beyond from zero", 0, 6, true},
		{"far beyond", 0, 1 << 30, true},
		{"backwards by one", 2, 1, true},
		{"backwards below zero", 0, 0xFFFFFFFF, true},
		{"backwards by 2^31", 2, 2 + 1<<31, true},
	}
	for _, tt := range tests {
		for _, how := range []string{"Refresh", "Reserve", "Enqueue"} {
			t.Run(tt.name+"/"+how, func(t *testing.T) {
				mem, p, _ := newRing(t, size)
				for i := range 5 {
					p.Enqueue([]ring.Slot{seqSlot(uint32(i))})
				}
				putWord(mem, offCons, tt.seen)
				if err := p.Refresh(); err != nil || p.Pending() != int(5-tt.seen) {
					t.Fatalf("Refresh = %v, Pending %d", err, p.Pending())
				}
				putWord(mem, offCons, tt.cons)
				var err error
				var n int
				switch how {
				case "Refresh":
					err = p.Refresh()
				case "Reserve":
					n, err = p.Reserve(size) // more than cached: must look
				case "Enqueue":
					n, err = p.Enqueue(make([]ring.Slot, size))
				}
				if !tt.corrupt {
					wantPending := int(5 - tt.cons)
					if how == "Enqueue" {
						wantPending = size // it filled the room it found
					}
					if err != nil || p.Pending() != wantPending {
						t.Fatalf("%s = %v, Pending %d; want nil, %d", how, err, p.Pending(), wantPending)
					}
					if how != "Refresh" && n != size-int(5-tt.cons) {
						t.Fatalf("%s = %d, want %d", how, n, size-int(5-tt.cons))
					}
					return
				}
				if !errors.Is(err, ring.ErrCorrupt) || n != 0 {
					t.Fatalf("%s = %d, %v; want 0, ErrCorrupt", how, n, err)
				}
				if w := word(mem, offProd); w != 5 {
					t.Fatalf("prod word moved to %d on ErrCorrupt", w)
				}
				// Sticky, even after the peer puts a sane value back.
				putWord(mem, offCons, 5)
				if n, err := p.Reserve(1); n != 0 || !errors.Is(err, ring.ErrCorrupt) {
					t.Errorf("Reserve after ErrCorrupt = %d, %v", n, err)
				}
				if n, err := p.Enqueue([]ring.Slot{{}}); n != 0 || !errors.Is(err, ring.ErrCorrupt) {
					t.Errorf("Enqueue after ErrCorrupt = %d, %v", n, err)
				}
				if err := p.Refresh(); !errors.Is(err, ring.ErrCorrupt) {
					t.Errorf("Refresh after ErrCorrupt = %v", err)
				}
				if !errors.Is(p.Err(), ring.ErrCorrupt) {
					t.Errorf("Err() = %v", p.Err())
				}
				if w := word(mem, offProd); w != 5 {
					t.Errorf("prod word moved to %d after ErrCorrupt", w)
				}
			})
		}
	}
}

// TestProducerIgnoresScribbledOwnIndex: each side keeps its index privately;
// a peer overwriting the producer's word hurts only itself, and the next
// commit restores it.
func TestProducerIgnoresScribbledOwnIndex(t *testing.T) {
	mem, p, c := newRing(t, 8)
	p.Enqueue([]ring.Slot{seqSlot(0), seqSlot(1)})
	putWord(mem, offProd, 0xDEAD)
	if n, err := p.Enqueue([]ring.Slot{seqSlot(2)}); n != 1 || err != nil {
		t.Fatalf("Enqueue = %d, %v", n, err)
	}
	if w := word(mem, offProd); w != 3 {
		t.Fatalf("prod word = %#x after commit, want 3", w)
	}
	out := make([]ring.Slot, 8)
	if n, err := c.Dequeue(out); n != 3 || err != nil || out[2] != seqSlot(2) {
		t.Fatalf("Dequeue = %d, %v, %+v", n, err, out[:n])
	}
}

func TestAttachInconsistentHeader(t *testing.T) {
	const size = 16
	tests := []struct {
		name       string
		prod, cons uint32
		corrupt    bool
	}{
		{"empty", 100, 100, false},
		{"full", 116, 100, false},
		{"full across 2^32", 8, 0xFFFFFFF8, false},
		{"one past full", 117, 100, true},
		{"consumer ahead of producer", 100, 101, true},
		{"far apart", 1 << 31, 0, true},
		{"one past full across 2^32", 9, 0xFFFFFFF8, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := alignedMem(ring.MemSize(size))
			if err := ring.Init(mem, size); err != nil {
				t.Fatal(err)
			}
			putWord(mem, offProd, tt.prod)
			putWord(mem, offCons, tt.cons)
			p, perr := ring.NewProducer(mem, size)
			c, cerr := ring.NewConsumer(mem, size)
			if tt.corrupt {
				if !errors.Is(perr, ring.ErrCorrupt) || p != nil {
					t.Errorf("NewProducer = %v, %v; want nil, ErrCorrupt", p, perr)
				}
				if !errors.Is(cerr, ring.ErrCorrupt) || c != nil {
					t.Errorf("NewConsumer = %v, %v; want nil, ErrCorrupt", c, cerr)
				}
				return
			}
			if perr != nil || cerr != nil {
				t.Fatalf("attach: %v, %v", perr, cerr)
			}
			want := int(tt.prod - tt.cons)
			if p.Pending() != want {
				t.Errorf("Pending = %d, want %d", p.Pending(), want)
			}
			if n, err := c.Peek(size); n != want || err != nil {
				t.Errorf("Peek = %d, %v; want %d", n, err, want)
			}
		})
	}
}

// TestAttachUninitialised: memory that was never Init'ed, or was Init'ed
// for another size, is refused at attach.
func TestAttachUninitialised(t *testing.T) {
	mem := alignedTestMem(ring.MemSize(64))
	if _, err := ring.NewConsumer(mem, 64); !errors.Is(err, ring.ErrNotRing) {
		t.Fatalf("zeroed memory: %v", err)
	}
	if err := ring.Init(mem, 32); err != nil {
		t.Fatal(err)
	}
	if _, err := ring.NewProducer(mem, 64); !errors.Is(err, ring.ErrNotRing) {
		t.Fatalf("size mismatch: %v", err)
	}
	if _, err := ring.NewProducer(mem, 32); err != nil {
		t.Fatal(err)
	}
}

func alignedTestMem(n int) []byte {
	b := make([]byte, n+64)
	off := (64 - int(uintptr(unsafe.Pointer(&b[0]))%64)) % 64
	return b[off : off+n]
}
