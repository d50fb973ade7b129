package pool

import (
	"testing"

	"github.com/skylane/skylane/internal/shm"
)

// TestAdopt: a pool adopted from another's descriptors has the same
// buffers in the same states (the app's stay the app's, the nexus's in
// flight go back), the same active segments and free counts; an adopted
// pool with a region of the wrong size, or a segment outside it, is
// refused and leaves the descriptors to the caller.
func TestAdopt(t *testing.T) {
	p, err := New(Options{Name: "adopt", BufferSize: 2048, SegmentSize: 64 << 10, MaxSegments: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	app := make([]uint32, 40) // more than one segment
	if p.Alloc(app, App) != 40 {
		t.Fatal("alloc")
	}
	nx := make([]uint32, 3)
	if p.Alloc(nx, Nexus) != 3 {
		t.Fatal("alloc")
	}
	h, fds, err := p.Export()
	if err != nil {
		t.Fatal(err)
	}
	q, err := Adopt(h, fds)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if q.Reclaimed != 3 {
		t.Errorf("reclaimed %d buffers in flight, want 3", q.Reclaimed)
	}
	for _, i := range app {
		if s, ok := q.StateOf(i); !ok || s != App {
			t.Fatalf("buffer %d: %v %v after adopt, want App", i, s, ok)
		}
	}
	ps, qs := p.Stats(), q.Stats()
	if qs.Segments != ps.Segments || qs.FreeBuffers != ps.FreeBuffers+3 {
		t.Errorf("adopted stats %+v, exported %+v", qs, ps)
	}
	// The app's buffers come back through the adopted pool.
	for _, i := range app {
		if !q.Reclaim(i, App) {
			t.Fatalf("reclaim %d", i)
		}
	}
	if got := q.Alloc(make([]uint32, qs.BuffersTotal), Nexus); got != qs.BuffersTotal {
		t.Errorf("allocated %d of %d buffers after adopt", got, qs.BuffersTotal)
	}

	for _, bad := range []func(*Handover){
		func(h *Handover) { h.Options.MaxSegments = 8 }, // regions of another size
		func(h *Handover) { h.Active = append(h.Active, 9) },
		func(h *Handover) { h.Active = append(h.Active, h.Active[0]) },
	} {
		h2, fds, err := p.Export()
		if err != nil {
			t.Fatal(err)
		}
		bad(&h2)
		if r, err := Adopt(h2, fds); err == nil {
			r.Close()
			t.Errorf("adopted a bad state %+v", h2)
		}
		for _, fd := range fds {
			if err := shm.CloseFD(fd); err != nil {
				t.Errorf("descriptor %d not left to the caller: %v", fd, err)
			}
		}
	}
}
