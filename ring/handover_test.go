package ring_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/skylane/skylane/ring"
)

// TestRestore: both ends handed over mid-stream (their private indices
// only) carry on exactly; a restored end republishes its own index over
// whatever the peer wrote there, and refuses indices that cannot be.
func TestRestore(t *testing.T) {
	mem, p, c := newRing(t, 8)
	for i := range 5 {
		if n, _ := p.Enqueue([]ring.Slot{{Index: uint32(i)}}); n != 1 {
			t.Fatal("enqueue")
		}
	}
	out := make([]ring.Slot, 2)
	if n, _ := c.Dequeue(out); n != 2 {
		t.Fatal("dequeue")
	}
	ps, cs := p.State(), c.State()
	// A peer scribbles both shared indices.
	binary.NativeEndian.PutUint32(mem[0x000:], 999)
	binary.NativeEndian.PutUint32(mem[0x040:], 777)
	p2, err := ring.RestoreProducer(mem, 8, ps)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := ring.RestoreConsumer(mem, 8, cs)
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.NativeEndian.Uint32(mem[0x000:]); got != ps.Prod {
		t.Errorf("shared prod %d after restore, want %d", got, ps.Prod)
	}
	if got := binary.NativeEndian.Uint32(mem[0x040:]); got != cs.Cons {
		t.Errorf("shared cons %d after restore, want %d", got, cs.Cons)
	}
	out = make([]ring.Slot, 8)
	n, err := c2.Dequeue(out)
	if err != nil || n != 3 || out[0].Index != 2 || out[2].Index != 4 {
		t.Fatalf("after restore: %d slots %v, %v; want 2..4", n, out[:n], err)
	}
	if n, err := p2.Enqueue(make([]ring.Slot, 8)); err != nil || n != 8 {
		t.Fatalf("after restore the producer has room for %d: %v", n, err)
	}
	if _, err := ring.RestoreProducer(mem, 8, ring.ProducerState{Prod: 20, CachedCons: 0}); !errors.Is(err, ring.ErrCorrupt) {
		t.Errorf("a producer 20 ahead on 8 slots: %v", err)
	}
	if _, err := ring.RestoreConsumer(mem, 8, ring.ConsumerState{Cons: 0, CachedProd: 9}); !errors.Is(err, ring.ErrCorrupt) {
		t.Errorf("a consumer 9 behind on 8 slots: %v", err)
	}
}
