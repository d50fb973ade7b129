package channel

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/skylane/skylane/pool"
)

// waitArmed returns once the app's waiter has armed the need-wakeup flags
// of rings, i.e. it is inside WaitFor, past the point where a change would
// go unnoticed without a signal. It fails the test if the wait ended first.
func waitArmed(t *testing.T, c *Channel, done <-chan waitResult, rx, events bool) {
	t.Helper()
	for (rx && !c.rx.NeedsWakeup()) || (events && !c.event.NeedsWakeup()) {
		select {
		case r := <-done:
			t.Fatalf("wait ended before it slept: %v %v", r.ready, r.err)
		default:
		}
		runtime.Gosched()
	}
}

type waitResult struct {
	ready WaitSet
	err   error
}

// waitAsync runs a.WaitFor on another goroutine, as the app's owner would.
// The test's cleanup ends and joins it before the channel is closed.
func waitAsync(t *testing.T, a *App, what WaitSet, timeout time.Duration) <-chan waitResult {
	done := make(chan waitResult, 1)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		r, err := a.WaitFor(what, timeout)
		done <- waitResult{r, err}
	}()
	t.Cleanup(func() {
		a.Interrupt()
		<-exited
	})
	return done
}

// TestWaitForIgnoresAlloc: an idle app always has buffers on its alloc
// ring, so Wait returns at once; WaitFor(RX|Events) sleeps through an alloc
// refill (the nexus does not even signal: the alloc ring's flag is not
// armed) and wakes for the first packet, with one notification.
func TestWaitForIgnoresAlloc(t *testing.T) {
	// Four segments: the refills below never grow the pool (whose
	// segment event would wake the app, rightly).
	c, a := newPair(t, Options{Name: "waitfor", Pool: pool.Options{MinSegments: 4}})
	c.Sync() // hands the working set ahead
	ev := make([]Event, 8)
	a.Events(ev) // the pool's growth, if the refill grew it
	if r, err := a.WaitFor(WaitAll, 0); err != nil || r&WaitAlloc == 0 {
		t.Fatalf("WaitFor(all) on an idle app: %v %v, want at once with the alloc ring", r, err)
	}
	// Take the alloc ring's buffers and give them back, so the next Sync
	// refills the ring while the app waits.
	bufs := make([]Buf, 64)
	n, _ := a.Alloc(bufs)
	if k, _ := a.Free(bufs[:n]); k != n || n == 0 {
		t.Fatalf("alloc %d, freed %d", n, k)
	}
	done := waitAsync(t, a, WaitRX|WaitEvents, 0)
	waitArmed(t, c, done, true, true)
	before := c.Counters()
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	after := c.Counters()
	if after.AllocHanded == before.AllocHanded {
		t.Fatal("Sync did not refill the alloc ring")
	}
	if after.Notifications != before.Notifications {
		t.Fatalf("the nexus signalled an app that waits for RX and events only (%d → %d)", before.Notifications, after.Notifications)
	}
	select {
	case r := <-done:
		t.Fatalf("WaitFor(RX|Events) returned %v %v for an alloc refill", r.ready, r.err)
	default:
	}
	k := c.Alloc(bufs[:1])
	if c.Deliver(bufs[:k]) != 1 {
		t.Fatal("deliver")
	}
	r := <-done
	if r.err != nil || r.ready != WaitRX {
		t.Fatalf("after a packet: %v %v, want WaitRX", r.ready, r.err)
	}
	if got := c.Counters().Notifications - before.Notifications; got != 1 {
		t.Fatalf("%d notifications for one packet", got)
	}
}

// TestWaitForEvents: an advisory change wakes an app waiting for events:
// SetAdvisory puts the event on the ring at once and the channel's Sync
// signals, once.
func TestWaitForEvents(t *testing.T) {
	c, a := newPair(t, Options{Name: "waitev", Advisories: 16})
	// The first Sync may grow the pool (a segment event): take that
	// first, so the wait below is for the advisory alone.
	c.Sync()
	ev := make([]Event, 8)
	a.Events(ev)
	base := c.Counters()
	done := waitAsync(t, a, WaitEvents, 0)
	waitArmed(t, c, done, false, true)
	if err := c.SetAdvisory(2, AdvisorySuspended); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err != nil || r.ready != WaitEvents {
		t.Fatalf("after an advisory: %v %v, want WaitEvents", r.ready, r.err)
	}
	n, err := a.Events(ev)
	if err != nil || n != 1 || ev[0] != (Event{Kind: EventAdvisory, Arg: 2}) {
		t.Fatalf("events %v %v", ev[:n], err)
	}
	if a.Admissible(2) {
		t.Fatal("suspended entry reads admissible")
	}
	c.SetAdvisory(2, AdvisoryNone)
	if !a.Admissible(2) {
		t.Fatal("resumed entry reads suspended")
	}
	c.Sync()
	cn := c.Counters()
	if cn.Events-base.Events != 2 || cn.Suspends != 1 || cn.Resumes != 1 || cn.Notifications-base.Notifications != 1 {
		t.Fatalf("counters %+v (before %+v): want 2 events, 1 suspend, 1 resume, 1 notification", cn, base)
	}
	if got := a.Counters(); got.Suspends != 1 || got.Resumes != 1 {
		t.Fatalf("app reads %+v", got)
	}
}

// TestWaitForTxRoom: an app that filled its TX ring sleeps in
// WaitFor(WaitTxRoom); a Sync that took nothing does not signal it, the one
// after TakeTX made room does, once, and the app then finds the room.
func TestWaitForTxRoom(t *testing.T) {
	c, a := newPair(t, Options{Name: "txroom", TxSize: 8, Pool: pool.Options{MinSegments: 4}})
	sent := 0
	bufs := make([]Buf, 8)
	for sent < 8 {
		c.Sync()
		n, err := a.Alloc(bufs[:8-sent])
		if err != nil {
			t.Fatal(err)
		}
		k, err := a.Send(bufs[:n])
		if err != nil || k != n {
			t.Fatalf("Send = %d of %d, %v", k, n, err)
		}
		sent += k
	}
	if k, _ := a.tx.Reserve(1); k != 0 {
		t.Fatal("TX ring not full")
	}
	ev := make([]Event, 8)
	a.Events(ev) // the pool's segment events, if any: not what this waits for
	done := waitAsync(t, a, WaitTxRoom, 0)
	for !c.tx.NeedsRoom() {
		select {
		case r := <-done:
			t.Fatalf("wait ended before it slept: %v %v", r.ready, r.err)
		default:
		}
		runtime.Gosched()
	}
	before := c.Counters()
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := c.Counters().Notifications; got != before.Notifications {
		t.Fatalf("a Sync that made no room signalled the app (%d → %d)", before.Notifications, got)
	}
	out := make([]Buf, 3)
	n, err := c.TakeTX(out)
	if err != nil || n != 3 {
		t.Fatalf("TakeTX = %d, %v", n, err)
	}
	c.Release(out[:n])
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err != nil || r.ready != WaitTxRoom {
		t.Fatalf("after TakeTX: %v %v, want WaitTxRoom", r.ready, r.err)
	}
	if got := c.Counters().Notifications - before.Notifications; got != 1 {
		t.Fatalf("%d notifications for one batch of room", got)
	}
	if c.tx.NeedsRoom() {
		t.Fatal("the app left its room flag armed after the wait")
	}
	if k, _ := a.tx.Reserve(8); k != 3 {
		t.Fatalf("room for %d after the nexus took 3", k)
	}
	// Nothing taken since: the next Sync stays silent.
	c.Sync()
	if got := c.Counters().Notifications - before.Notifications; got != 1 {
		t.Fatalf("%d notifications after a quiet Sync", got)
	}
}

// TestShort: Short names the rings whose last call came up short, and
// forgets one once a call on it gets all it asked for.
func TestShort(t *testing.T) {
	c, a := newPair(t, Options{Name: "short", TxSize: 4, FreeSize: 4, Pool: pool.Options{MinSegments: 4}})
	c.Sync()
	bufs := make([]Buf, 64)
	n, err := a.Alloc(bufs)
	if err != nil || n == 0 || n == len(bufs) {
		t.Fatalf("Alloc = %d, %v; want some of %d", n, err, len(bufs))
	}
	if a.Short() != WaitAlloc {
		t.Fatalf("after a short Alloc: %v", a.Short())
	}
	if k, _ := a.Send(bufs[:min(n, 6)]); k != 4 || a.Short() != WaitAlloc|WaitTxRoom {
		t.Fatalf("Send 6 on a ring of 4 = %d; Short %v", k, a.Short())
	}
	if k, _ := a.Free(bufs[4:min(n, 6)]); k != 2 || a.Short() != WaitAlloc|WaitTxRoom {
		t.Fatalf("Free = %d; Short %v", k, a.Short())
	}
	out := make([]Buf, 4)
	k, _ := c.TakeTX(out)
	c.Release(out[:k])
	c.Sync()
	if k, _ := a.Alloc(bufs[:1]); k != 1 {
		t.Fatal("no buffer after the refill")
	}
	if k, _ := a.Send(bufs[:1]); k != 1 || a.Short() != 0 {
		t.Fatalf("after calls that got all they asked: Send %d, Short %v", k, a.Short())
	}
}

// TestWaitForFreeRoom: the same for the free ring, whose room the nexus
// makes in Sync itself (reclaim).
func TestWaitForFreeRoom(t *testing.T) {
	c, a := newPair(t, Options{Name: "freeroom", FreeSize: 4, Pool: pool.Options{MinSegments: 4}})
	var held []Buf
	bufs := make([]Buf, 8)
	for len(held) < 5 {
		c.Sync()
		n, err := a.Alloc(bufs)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, bufs[:n]...)
	}
	if k, err := a.Free(held[:5]); err != nil || k != 4 {
		t.Fatalf("Free = %d, %v; want 4 (ring of 4)", k, err)
	}
	ev := make([]Event, 8)
	a.Events(ev)
	done := waitAsync(t, a, WaitFreeRoom, 0)
	for !c.free.NeedsRoom() {
		select {
		case r := <-done:
			t.Fatalf("wait ended before it slept: %v %v", r.ready, r.err)
		default:
		}
		runtime.Gosched()
	}
	before := c.Counters()
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err != nil || r.ready != WaitFreeRoom {
		t.Fatalf("after the reclaim: %v %v, want WaitFreeRoom", r.ready, r.err)
	}
	if got := c.Counters().Notifications - before.Notifications; got != 1 {
		t.Fatalf("%d notifications for one reclaim", got)
	}
	if k, err := a.Free(held[4:5]); err != nil || k != 1 {
		t.Fatalf("Free after the wait = %d, %v", k, err)
	}
}

// TestAdmissible: only the SUSPENDED bit holds a flow back; reserved bits
// are ignored, and an index outside the table reads as admissible rather than stalling a flow no event could resume.
func TestAdmissible(t *testing.T) {
	c, a := newPair(t, Options{Name: "admissible", Advisories: 16})
	for i := range uint32(16) {
		if !a.Admissible(i) {
			t.Fatalf("fresh entry %d suspended", i)
		}
	}
	for _, tc := range []struct {
		state uint32
		want  bool
	}{
		{AdvisorySuspended, false},
		{AdvisorySuspended | 0x80000000, false}, // reserved bits beside SUSPENDED
		{0xFFFFFFFE, true},                      // every reserved bit, SUSPENDED clear
		{AdvisoryNone, true},
	} {
		c.SetAdvisory(15, tc.state)
		if got := a.Admissible(15); got != tc.want {
			t.Fatalf("state %#x: admissible %v, want %v", tc.state, got, tc.want)
		}
	}
	c.SetAdvisory(15, AdvisorySuspended)
	for _, i := range []uint32{16, 1 << 20, 1<<32 - 1} {
		if !a.Admissible(i) {
			t.Fatalf("index %d outside the table reads suspended", i)
		}
	}
}

// TestInterrupt: Interrupt ends a wait in progress, or the next one; its
// signal, once taken, does not end a later wait early; and interruptions
// racing a waiting owner from many goroutines never leave it stuck.
func TestInterrupt(t *testing.T) {
	c, a := newPair(t, Options{Name: "interrupt"})
	a.Interrupt()
	if r, err := a.WaitFor(WaitRX, 0); err != nil || r != WaitInterrupted {
		t.Fatalf("interrupted before: %v %v", r, err)
	}
	// The eventfd still counts that signal: the next wait must see it
	// as stale and sleep out its timeout.
	const d = 30 * time.Millisecond
	start := time.Now()
	if r, err := a.WaitFor(WaitRX, d); err != nil || r != 0 {
		t.Fatalf("after the interruption was taken: %v %v", r, err)
	}
	if el := time.Since(start); el < d {
		t.Fatalf("wait ended after %v, before its %v timeout", el, d)
	}

	done := waitAsync(t, a, WaitRX|WaitEvents, 0)
	waitArmed(t, c, done, true, true)
	go a.Interrupt()
	if r := <-done; r.err != nil || r.ready != WaitInterrupted {
		t.Fatalf("interrupted while waiting: %v %v", r.ready, r.err)
	}

	var stop atomic.Bool
	owner := make(chan int)
	go func() {
		waits := 0
		for !stop.Load() {
			if _, err := a.WaitFor(WaitRX|WaitEvents, 0); err != nil {
				t.Error(err)
				break
			}
			waits++
		}
		owner <- waits
	}()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				a.Interrupt()
			}
		}()
	}
	wg.Wait()
	stop.Store(true)
	a.Interrupt() // after stop: the owner's wait, or its next one, ends
	t.Logf("%d waits ended by 1601 interruptions", <-owner)
}

// TestWaitForDefunct: a waiting app learns of the channel's closing.
func TestWaitForDefunct(t *testing.T) {
	c, a := newPair(t, Options{Name: "waitdefunct"})
	done := waitAsync(t, a, WaitRX, 0)
	waitArmed(t, c, done, true, false)
	c.Close()
	if r := <-done; !errors.Is(r.err, ErrDefunct) {
		t.Fatalf("after close: %v %v", r.ready, r.err)
	}
}
