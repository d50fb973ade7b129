package channel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/skylane/skylane/pool"
)

// ringWord points at a ring's shared header word (0: prod, 4: producer
// flags, 0x40: cons), to play a corrupt peer.
func (a *App) ringWord(r, off int) *uint32 {
	return (*uint32)(unsafe.Pointer(&a.maps[0].Bytes()[a.desc.Rings[r].Offset+off]))
}

func newPair(t *testing.T, opts Options) (*Channel, *App) {
	t.Helper()
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a, err := c.AttachLocal()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return c, a
}

// fill writes a recognisable payload: the sequence number, then its low byte.
func fill(b []byte, seq uint64, size int) []byte {
	b = b[:size]
	binary.LittleEndian.PutUint64(b, seq)
	for i := 8; i < size; i++ {
		b[i] = byte(seq)
	}
	return b
}

func check(t *testing.T, b []byte, seq uint64, size int) {
	t.Helper()
	if len(b) != size || binary.LittleEndian.Uint64(b) != seq || !bytes.Equal(b[8:], bytes.Repeat([]byte{byte(seq)}, size-8)) {
		t.Fatalf("packet %d: got %d bytes, seq %d", seq, len(b), binary.LittleEndian.Uint64(b))
	}
}

// TestBothWays moves packets app → nexus and nexus → app in batches and
// checks content, order and that every buffer comes back to the pool.
func TestBothWays(t *testing.T) {
	c, a := newPair(t, Options{Name: "both"})
	bufs := make([]Buf, 32)
	var sent, got, dsent, dgot uint64
	const total = 20000
	for sent < total || got < total || dgot < total {
		// app → nexus
		if err := c.Sync(); err != nil {
			t.Fatal(err)
		}
		n, err := a.Alloc(bufs[:min(32, int(total-sent))])
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			seq := sent + uint64(i)
			bufs[i].Data = fill(bufs[i].Data, seq, 64+int(seq%32))
		}
		if k, err := a.Send(bufs[:n]); err != nil || k != n {
			t.Fatalf("send %d of %d: %v", k, n, err)
		}
		sent += uint64(n)
		n, err = c.TakeTX(bufs)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			check(t, bufs[i].Data, got, 64+int(got%32))
			got++
		}
		c.Release(bufs[:n])
		// nexus → app
		n = c.Alloc(bufs[:min(32, int(total-dsent))])
		for i := range n {
			bufs[i].Data = fill(bufs[i].Data, dsent+uint64(i), 100)
		}
		dsent += uint64(c.Deliver(bufs[:n]))
		n, err = a.Receive(bufs)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			check(t, bufs[i].Data, dgot, 100)
			dgot++
		}
		if k, err := a.Free(bufs[:n]); err != nil || k != n {
			t.Fatalf("free %d of %d: %v", k, n, err)
		}
	}
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	cn := c.Counters()
	if cn.TxPackets != total || cn.RxPackets != total || cn.RxDrops != 0 {
		t.Fatalf("counters %+v", cn)
	}
	// Neither side ever waited, so no eventfd was signalled: a busy pair
	// makes no system call.
	if cn.Notifications != 0 || cn.Wakeups != 0 {
		t.Fatalf("busy pair signalled: %+v", cn)
	}
	// All buffers are back except those handed ahead on the alloc ring.
	st := c.Pool().Stats()
	if out := st.BuffersTotal - st.FreeBuffers; out != c.alloc.Pending() {
		t.Fatalf("%d buffers out, %d on the alloc ring", out, c.alloc.Pending())
	}
	if a.Counters().TxPackets != total {
		t.Fatalf("app sees %+v", a.Counters())
	}
}

// TestViolations: each kind of bad input from an app defuncts its channel
// only, with the named reason, and another channel goes on.
func TestViolations(t *testing.T) {
	cases := []struct {
		name   string
		reason DefunctReason
		act    func(c *Channel, a *App)
	}{
		{"wild buffer on tx", ReasonWildBuffer, func(c *Channel, a *App) {
			a.Send([]Buf{{Index: 1 << 30, Data: make([]byte, 10)}})
		}},
		{"free buffer on tx", ReasonNotOwned, func(c *Channel, a *App) {
			a.Send([]Buf{{Index: uint32(c.Pool().BuffersPerSegment() - 1), Data: make([]byte, 10)}})
		}},
		{"double free", ReasonNotOwned, func(c *Channel, a *App) {
			b := make([]Buf, 1)
			a.Alloc(b)
			a.Free(b)
			a.Free(b)
		}},
		{"length beyond buffer", ReasonBadLength, func(c *Channel, a *App) {
			b := make([]Buf, 1)
			a.Alloc(b)
			a.Send([]Buf{{Index: b[0].Index, Data: make([]byte, 4000)}})
		}},
		{"tx index backwards", ReasonRingCorrupt, func(c *Channel, a *App) {
			*a.ringWord(RingTX, 0) -= 5
		}},
		{"free index far ahead", ReasonRingCorrupt, func(c *Channel, a *App) {
			*a.ringWord(RingFree, 0) += 1 << 20
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			good, ga := newPair(t, Options{Name: "good"})
			c, a := newPair(t, Options{Name: "bad"})
			c.Sync()
			tc.act(c, a)
			buf := make([]Buf, 32)
			c.TakeTX(buf)
			c.Sync()
			var de *DefunctError
			if err := c.Err(); !errors.As(err, &de) || de.Reason != tc.reason {
				t.Fatalf("nexus side: got %v, want reason %s", err, tc.reason)
			}
			if err := a.Err(); !errors.Is(err, ErrDefunct) {
				t.Fatalf("app side: got %v, want defunct", err)
			}
			if _, err := a.Send(buf[:1]); !errors.Is(err, ErrDefunct) {
				t.Fatalf("app send after defunct: %v", err)
			}
			// The other channel is untouched.
			good.Sync()
			n, err := ga.Alloc(buf[:8])
			if err != nil || n == 0 {
				t.Fatalf("good channel alloc: %d, %v", n, err)
			}
			ga.Send(buf[:n])
			if k, err := good.TakeTX(buf); err != nil || k != n {
				t.Fatalf("good channel: took %d of %d: %v", k, n, err)
			}
		})
	}
}

// TestSegmentsGrowAndReturn: the pool grows under load, the app maps new
// segments as it meets them, and idle segments go back to the OS and are
// unmapped on the app side after the event.
func TestSegmentsGrowAndReturn(t *testing.T) {
	c, a := newPair(t, Options{Name: "grow", Pool: pool.Options{MaxSegments: 16, IdleTimeout: time.Second}})
	held := make([]Buf, 0, 200)
	buf := make([]Buf, 32)
	for len(held) < 150 {
		c.Sync()
		n, err := a.Alloc(buf)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			buf[i].Data[0] = 1 // touch: the segment must be mapped
		}
		held = append(held, buf[:n]...)
	}
	grown := c.Pool().Stats().Segments
	if grown < 150/c.Pool().BuffersPerSegment() {
		t.Fatalf("pool has %d segments for 150 buffers out", grown)
	}
	before, _ := c.Pool().AllocatedBytes()
	for len(held) > 0 {
		k, _ := a.Free(held[:min(32, len(held))])
		held = held[k:]
		c.Sync()
	}
	now := time.Now()
	c.Reap(now)
	c.Reap(now.Add(2 * time.Second))
	st := c.Pool().Stats()
	if st.Segments >= grown || st.Releases == 0 {
		t.Fatalf("segments %d (was %d), releases %d", st.Segments, grown, st.Releases)
	}
	after, _ := c.Pool().AllocatedBytes()
	if after >= before {
		t.Fatalf("allocated bytes %d -> %d: memory not returned", before, after)
	}
	c.Sync()
	ev := make([]Event, 64)
	var removed int
	for {
		n, err := a.Events(ev)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		for _, e := range ev[:n] {
			if e.Kind == EventSegmentRemoved {
				removed++
			}
		}
	}
	if removed == 0 || a.MappedSegments() != st.Segments {
		t.Fatalf("removed events %d; app maps %d segments, pool has %d", removed, a.MappedSegments(), st.Segments)
	}
}

// TestWaitWakes: a sleeping app is woken by one notification when packets
// arrive, and only then.
func TestWaitWakes(t *testing.T) {
	c, a := newPair(t, Options{Name: "wake"})
	done := make(chan error, 1)
	go func() {
		bufs := make([]Buf, 8)
		for {
			if err := a.Wait(5 * time.Second); err != nil {
				done <- err
				return
			}
			if n, err := a.Receive(bufs); err != nil || n > 0 {
				done <- err
				return
			}
		}
	}()
	// Let the app arm its flag; Deliver signals only an armed app.
	for !c.rx.NeedsWakeup() {
		runtime.Gosched()
	}
	bufs := make([]Buf, 4)
	n := c.Alloc(bufs)
	if c.Deliver(bufs[:n]) != n {
		t.Fatal("deliver")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := c.Counters().Notifications; got != 1 {
		t.Fatalf("%d notifications for one batch", got)
	}
}

// TestAllocWorkingSet: the alloc ring starts with 8 buffers handed ahead,
// grows by half each time the app runs it dry, and shrinks by a quarter
// after 2 s in which a quarter of it stayed unclaimed (docs/design.md §2).
func TestAllocWorkingSet(t *testing.T) {
	c, a := newPair(t, Options{Name: "ws"})
	c.Sync()
	if got := c.alloc.Pending(); got != workingSetMin {
		t.Fatalf("handed ahead %d, want %d", got, workingSetMin)
	}
	bufs := make([]Buf, 256)
	want := workingSetMin
	for range 4 {
		n, _ := a.Alloc(bufs) // run it dry
		if n != want {
			t.Fatalf("app got %d, want %d", n, want)
		}
		a.Free(bufs[:n])
		c.Sync()
		want += want / 2
		if got := c.alloc.Pending(); got != want {
			t.Fatalf("after running dry: %d handed ahead, want %d", got, want)
		}
	}
	t0 := time.Now()
	c.Reap(t0)
	c.Reap(t0.Add(time.Second)) // not yet 2 s
	if c.ws != want {
		t.Fatalf("shrank too early: %d", c.ws)
	}
	c.Reap(t0.Add(2 * time.Second))
	if c.ws != want-want/4 {
		t.Fatalf("after 2 s unclaimed: working set %d, want %d", c.ws, want-want/4)
	}
}

// TestAllocRecall: buffers an idle app leaves in its alloc ring come back
// as the working set shrinks (EventRecall, handled in App.Events), so the
// pool's reaper can return the segments they pinned; an app that reads no
// events gets one recall, not one per window.
func TestAllocRecall(t *testing.T) {
	c, a := newPair(t, Options{Name: "recall", Pool: pool.Options{BufferSize: 2048, SegmentSize: 16 << 10, IdleTimeout: time.Second}})
	c.Sync()
	bufs := make([]Buf, 256)
	for range 8 { // grow the working set: run the alloc ring dry, then give everything back
		n, _ := a.Alloc(bufs)
		a.Free(bufs[:n])
		c.Sync()
	}
	grown := c.alloc.Pending()
	if grown < 100 {
		t.Fatalf("working set grew to %d only", grown)
	}
	segs := c.Pool().Stats().Segments
	recalls := func() int {
		n := 0
		evs := make([]Event, 64)
		for {
			k, err := a.Events(evs)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range evs[:k] {
				if e.Kind == EventRecall {
					n++
				}
			}
			if k < len(evs) {
				return n
			}
		}
	}
	t0 := time.Now()
	c.Reap(t0)

	// An app that reads no events is asked once, however long it stays idle.
	for i := 1; i <= 3; i++ {
		c.Reap(t0.Add(time.Duration(i) * 2 * time.Second))
		c.Sync()
	}
	if got := recalls(); got != 1 {
		t.Fatalf("%d recalls to an app that did not answer, want 1", got)
	}
	// Reading its events returned the buffers; from then on it answers each
	// recall as it comes, and the ring shrinks to the minimum.
	c.Sync()
	for i := 4; i <= 40 && c.alloc.Pending() > workingSetMin; i++ {
		c.Reap(t0.Add(time.Duration(i) * 2 * time.Second))
		c.Sync()
		recalls()
		c.Sync()
	}
	if got := c.alloc.Pending(); got > workingSetMin {
		t.Fatalf("alloc ring holds %d buffers after recalls, want at most %d", got, workingSetMin)
	}
	if st := c.Pool().Stats(); st.Segments >= segs {
		t.Fatalf("pool kept %d segments (had %d): recalled buffers did not free any", st.Segments, segs)
	}
	if c.Err() != nil {
		t.Fatal(c.Err())
	}
	// The app still works with what it has.
	if n, err := a.Alloc(bufs[:4]); err != nil || n == 0 {
		t.Fatalf("alloc after recall: %d, %v", n, err)
	}
}

// TestAdvisories: the nexus's advisory writes reach the app's read-only
// table, each change announced once on the event ring.
func TestAdvisories(t *testing.T) {
	c, a := newPair(t, Options{Name: "adv", Advisories: 16})
	if err := c.SetAdvisory(3, AdvisorySuspended); err != nil {
		t.Fatal(err)
	}
	c.SetAdvisory(3, AdvisorySuspended) // no change, no event
	if err := c.SetAdvisory(16, AdvisorySuspended); err == nil {
		t.Fatal("advisory outside the table accepted")
	}
	c.Sync()
	st, gen, err := a.Advisory(3)
	if err != nil || st != AdvisorySuspended || gen != 1 {
		t.Fatalf("advisory 3: state %d gen %d err %v", st, gen, err)
	}
	evs := make([]Event, 8)
	n, _ := a.Events(evs)
	var adv int
	for _, e := range evs[:n] {
		if e.Kind == EventAdvisory && e.Arg == 3 {
			adv++
		}
	}
	if adv != 1 {
		t.Fatalf("%d advisory events for one change", adv)
	}
	if _, _, err := a.Advisory(-1); err == nil {
		t.Fatal("negative index accepted")
	}
}

// TestWaitSleepsWhenExhausted: with the pool at its maximum and every buffer
// with the app, the nexus worker sleeps in Wait instead of spinning on the
// empty alloc ring it cannot refill.
func TestWaitSleepsWhenExhausted(t *testing.T) {
	c, a := newPair(t, Options{Name: "exhausted", Pool: pool.Options{MaxSegments: 1}})
	bufs := make([]Buf, 64)
	for {
		c.Sync()
		n, _ := a.Alloc(bufs)
		if n == 0 {
			break
		}
	}
	if c.Pool().CanAlloc() {
		t.Fatal("pool not exhausted")
	}
	start := time.Now()
	if err := c.Wait(50 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) < 40*time.Millisecond {
		t.Fatalf("Wait returned after %v with nothing to do", time.Since(start))
	}
}

// TestMetaShared: what the app writes in a buffer's metadata is what the
// nexus reads for that buffer.
func TestMetaShared(t *testing.T) {
	c, a := newPair(t, Options{Name: "meta"})
	c.Sync()
	bufs := make([]Buf, 4)
	n, _ := a.Alloc(bufs)
	for i := range n {
		m, err := a.Meta(bufs[i].Index)
		if err != nil {
			t.Fatal(err)
		}
		m[0], m[31] = byte(i+1), 0xAA
	}
	for i := range n {
		m := c.Pool().UserMeta(bufs[i].Index)
		if m[0] != byte(i+1) || m[31] != 0xAA {
			t.Fatalf("buffer %d: nexus sees %x", bufs[i].Index, m)
		}
	}
	if _, err := a.Meta(1 << 30); err == nil {
		t.Fatal("metadata of a wild index")
	}
}
