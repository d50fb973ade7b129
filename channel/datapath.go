package channel

import (
	"fmt"
	"time"

	"github.com/skylane/skylane/pool"
	"github.com/skylane/skylane/ring"
)

// TakeTX takes up to len(out) packets from the TX ring. Each slot is copied,
// then checked: the buffer must be inside the pool and held by the app, the
// length within the buffer. The buffers are then held by the nexus, which
// must Release them. Any violation defuncts the channel.
//
// out[i].Data aliases shared memory the app can still write: copy before
// checking (the flowswitch does).
func (c *Channel) TakeTX(out []Buf) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.tx.Peek(len(out))
	if err != nil {
		return 0, c.Defunct(ReasonRingCorrupt, "tx ring: "+err.Error())
	}
	bs := c.pool.BufferSize()
	var bytes uint64
	for i := range n {
		s := c.tx.At(i)
		if int(s.Len) > bs {
			c.unwind(out[:i])
			return 0, c.Defunct(ReasonBadLength, fmt.Sprintf("tx slot length %d > buffer size %d", s.Len, bs))
		}
		if !c.pool.Transition(s.Index, pool.App, pool.Nexus) {
			c.unwind(out[:i])
			return 0, c.Defunct(c.badIndexReason(s.Index), fmt.Sprintf("tx slot buffer %d", s.Index))
		}
		out[i] = Buf{Index: s.Index, Flags: s.Flags, Data: c.pool.Buffer(s.Index)[:s.Len]}
		bytes += uint64(s.Len)
	}
	c.tx.Release(n)
	c.txTook = c.txTook || n > 0
	c.c.TxPackets += uint64(n)
	c.c.TxBytes += bytes
	return n, nil
}

// unwind gives back buffers taken in a batch that ended in a violation, so
// the channel's accounting stays exact until Defunct frees everything.
func (c *Channel) unwind(bufs []Buf) {
	for _, b := range bufs {
		c.pool.Transition(b.Index, pool.Nexus, pool.App)
	}
}

func (c *Channel) badIndexReason(idx uint32) DefunctReason {
	if _, ok := c.pool.StateOf(idx); !ok {
		return ReasonWildBuffer
	}
	return ReasonNotOwned
}

// Alloc takes up to len(out) buffers from the channel's pool for the nexus
// to fill (receive path). Data is the whole buffer. It never blocks: at the
// pool's maximum it returns fewer, counted.
func (c *Channel) Alloc(out []Buf) int {
	if c.err != nil {
		return 0
	}
	idx := c.idx[:min(len(out), len(c.idx))]
	n := c.pool.Alloc(idx, pool.Nexus)
	c.c.AllocFails += uint64(len(idx) - n)
	for i := range n {
		out[i] = Buf{Index: idx[i], Data: c.pool.Buffer(idx[i])}
	}
	return n
}

// Release returns buffers the nexus holds to the pool.
func (c *Channel) Release(bufs []Buf) {
	if c.err != nil {
		return
	}
	for _, b := range bufs {
		c.pool.Free(b.Index)
	}
}

// RxRoom returns how many of n packets the RX ring could take now. The
// flowswitch asks before it copies a batch, so that it spends no copy (and
// no pool buffer) on packets a full ring would drop anyway. A corrupt ring
// defuncts the channel, as Deliver does, and has no room.
func (c *Channel) RxRoom(n int) int {
	if c.err != nil {
		return 0
	}
	k, err := c.rx.Reserve(n)
	if err != nil {
		c.Defunct(ReasonRingCorrupt, "rx ring: "+err.Error())
		return 0
	}
	return k
}

// RxFree returns how many slots of the RX ring are free now, and its size.
// The flowswitch reads it to keep part of the ring for connected flows
// while listener flows are flooded. A corrupt ring defuncts the channel and
// has no room.
func (c *Channel) RxFree() (free, size int) {
	size = c.rx.Size()
	return c.RxRoom(size), size
}

// RefuseRx counts n packets dropped for a full RX ring before they were
// copied (see RxRoom): they are RxDrops, as Deliver's tail drops are, so the
// app and the stall check see one figure for "my ring was full".
func (c *Channel) RefuseRx(n int) {
	c.c.RxDrops += uint64(n)
}

// Deliver puts packets held by the nexus on the RX ring, in order, and
// signals the app at most once. It takes ownership of all of bufs: those
// that do not fit (ring full) are freed and counted as RxDrops (tail drop).
// It returns how many were delivered.
func (c *Channel) Deliver(bufs []Buf) int {
	if c.err != nil {
		return 0
	}
	k, err := c.rx.Reserve(len(bufs))
	if err != nil {
		c.Defunct(ReasonRingCorrupt, "rx ring: "+err.Error())
		return 0
	}
	var bytes uint64
	for i := range k {
		b := bufs[i]
		c.pool.Transition(b.Index, pool.Nexus, pool.App)
		c.rx.Set(i, ring.Slot{Index: b.Index, Len: uint16(len(b.Data)), Flags: b.Flags})
		bytes += uint64(len(b.Data))
	}
	for _, b := range bufs[k:] {
		c.pool.Free(b.Index)
	}
	c.c.RxDrops += uint64(len(bufs) - k)
	if k > 0 {
		c.rx.Commit(k)
		c.c.RxPackets += uint64(k)
		c.c.RxBytes += bytes
		c.notify(c.rx.NeedsWakeup())
	}
	return k
}

func (c *Channel) notify(needed bool) {
	if needed {
		c.c.Notifications++
		c.kickA.Signal()
	}
}

// Sync does the channel's housekeeping: it takes back buffers from the free
// ring, refills the alloc ring to the working set, flushes waiting events,
// publishes the counters, and signals the app once if it waits for any of
// that, or for the room TakeTX and the reclaim made on the TX and free
// rings. Call it once per loop of the nexus worker.
func (c *Channel) Sync() error {
	if c.err != nil {
		return c.err
	}
	freed, err := c.reclaim()
	if err != nil {
		return err
	}
	// The room flags are read after the releases that made the room (in
	// TakeTX, in reclaim): an app that armed its flag after them saw the
	// room when it re-checked, one that armed it before is seen here.
	wake := c.txTook && c.tx.NeedsRoom() || freed && c.free.NeedsRoom()
	c.txTook = false
	refilled, err := c.refill()
	if err != nil {
		return err
	}
	wake = wake || refilled
	if len(c.backlog) > 0 {
		n, err := c.event.Reserve(len(c.backlog))
		if err != nil {
			return c.Defunct(ReasonRingCorrupt, "event ring: "+err.Error())
		}
		for i := range n {
			c.event.Set(i, c.backlog[i].slot())
		}
		if n > 0 {
			c.event.Commit(n)
			c.backlog = append(c.backlog[:0], c.backlog[n:]...)
			c.c.Events += uint64(n)
			c.unsignalled = true
		}
	}
	// Events Post put on the ring directly count too: an app waiting
	// only for events (App.WaitFor) must hear of an advisory.
	if c.unsignalled {
		c.unsignalled = false
		wake = wake || c.event.NeedsWakeup()
	}
	c.notify(wake)
	c.publish()
	return nil
}

// reclaim takes back what the free ring holds and reports whether it took
// anything.
func (c *Channel) reclaim() (took bool, err error) {
	for {
		n, err := c.free.Dequeue(c.slots[:c.free.Size()])
		if err != nil {
			return took, c.Defunct(ReasonRingCorrupt, "free ring: "+err.Error())
		}
		for _, s := range c.slots[:n] {
			if !c.pool.Reclaim(s.Index, pool.App) {
				return took, c.Defunct(c.badIndexReason(s.Index), fmt.Sprintf("free ring buffer %d (double free or foreign)", s.Index))
			}
		}
		c.c.Reclaimed += uint64(n)
		took = took || n > 0
		if n < c.free.Size() {
			return took, nil
		}
	}
}

// refill tops the alloc ring up to the working set.
func (c *Channel) refill() (wake bool, err error) {
	if err := c.alloc.Refresh(); err != nil {
		return false, c.Defunct(ReasonRingCorrupt, "alloc ring: "+err.Error())
	}
	pending := c.alloc.Pending()
	if pending == 0 && c.c.AllocHanded > 0 {
		c.ws = min(c.ws+c.ws/2, c.alloc.Size()) // the app ran dry
	}
	c.wsLow = min(c.wsLow, pending)
	if c.idleLow < 0 || pending < c.idleLow {
		c.idleLow = pending
	}
	want := c.ws - pending
	if want <= 0 {
		return false, nil
	}
	k, _ := c.alloc.Reserve(want)
	n := c.pool.Alloc(c.idx[:k], pool.App)
	c.c.AllocFails += uint64(k - n)
	for i := range n {
		c.alloc.Set(i, ring.Slot{Index: c.idx[i]})
	}
	if n == 0 {
		return false, nil
	}
	c.alloc.Commit(n)
	c.c.AllocHanded += uint64(n)
	return c.alloc.NeedsWakeup(), nil
}

// Reap runs the periodic work: the pool's reaper (idle segments back to the
// OS) and the alloc working set's shrink. Call it about once a second.
func (c *Channel) Reap(now time.Time) {
	if c.err != nil {
		return
	}
	c.pool.Reap(now)
	if c.wsSince.IsZero() {
		c.wsSince, c.wsLow, c.idleLow = now, c.ws, -1
	}
	if c.recalling {
		if err := c.alloc.Refresh(); err != nil {
			c.Defunct(ReasonRingCorrupt, "alloc ring: "+err.Error())
			return
		}
		// Answered (or overtaken by the app's own Alloc) once the ring
		// holds less than when the recall went out.
		c.recalling = c.alloc.Pending() >= c.recallAt
	}
	if now.Sub(c.wsSince) >= workingSetShrink {
		if c.wsLow >= c.ws/4 {
			c.ws = max(workingSetMin, c.ws-c.ws/4)
		}
		// What stayed in the alloc ring the whole window beyond the new
		// working set is idle: ask for it back, one recall at a time, so
		// that an app that reads no events gets one event, not one per
		// window.
		if extra := c.idleLow - c.ws; extra > 0 && !c.recalling {
			c.Post(Event{Kind: EventRecall, Arg: uint32(extra)})
			c.recalling, c.recallAt = true, c.alloc.Pending()
		}
		c.wsSince, c.wsLow, c.idleLow = now, c.ws, -1
	}
}

// publish copies the counters into the stats region for the app to read.
// Plain stores: an aligned 8-byte store is atomic on every platform Go
// supports with mmap, the app reads with atomic loads, and the XCHG of an
// atomic store would cost more than the rest of Sync.
func (c *Channel) publish() {
	a := c.c.array()
	for i, v := range a {
		*c.counter(i) = v
	}
}
