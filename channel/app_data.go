package channel

import (
	"fmt"

	"github.com/skylane/skylane/pool"
	"github.com/skylane/skylane/ring"
)

func (a *App) seg(idx uint32) uint32 {
	if a.pow2 {
		return idx >> a.shift
	}
	return idx / a.bps
}

// buffer returns buffer idx, mapping its segment if this is its first
// sight. It refuses indices outside the pool.
func (a *App) buffer(idx uint32) ([]byte, error) {
	if idx >= a.maxBufs {
		return nil, fmt.Errorf("%w: buffer %d of %d", ErrBadSlot, idx, a.maxBufs)
	}
	if seg := a.seg(idx); !a.mapped[seg] {
		if err := a.mapSegment(int(seg)); err != nil {
			return nil, err
		}
	}
	bs := a.desc.BufferSize
	off := int(idx) * bs
	return a.bufs[off : off+bs : off+bs], nil
}

func (a *App) fail(err error) error {
	if e := a.Err(); e != nil {
		return e
	}
	return fmt.Errorf("channel %q: %w", a.desc.Name, err)
}

// Alloc takes up to len(out) empty buffers the nexus handed ahead; Data is
// the whole buffer. The app owns them until it sends or frees them. When it
// gets fewer than asked, it kicks the nexus to refill (if the nexus sleeps).
func (a *App) Alloc(out []Buf) (int, error) {
	if err := a.Err(); err != nil {
		return 0, err
	}
	n, err := a.alloc.Peek(len(out))
	if err != nil {
		return 0, a.fail(err)
	}
	for i := range n {
		s := a.alloc.At(i)
		b, err := a.buffer(s.Index)
		if err != nil {
			return 0, a.fail(err)
		}
		out[i] = Buf{Index: s.Index, Data: b}
	}
	a.alloc.Release(n)
	a.noteShort(WaitAlloc, n < len(out))
	if n < len(out) {
		if a.tx.NeedsWakeup() {
			a.kickN.Signal()
		}
	}
	return n, nil
}

// noteShort records whether the last call on a ring got all it asked for
// (see Short). Only the owner calls it; others only read.
func (a *App) noteShort(bit WaitSet, short bool) {
	old := WaitSet(a.short.Load())
	nw := old &^ bit
	if short {
		nw |= bit
	}
	if nw != old {
		a.short.Store(uint32(nw))
	}
}

// Short returns the rings the app's last Alloc, Send or Free on them came
// up short on (fewer buffers, or less room, than asked): WaitAlloc,
// WaitTxRoom, WaitFreeRoom. An app with packets left over waits for these
// besides what it receives. Safe from any goroutine.
func (a *App) Short() WaitSet { return WaitSet(a.short.Load()) }

// Send puts up to len(bufs) packets on the TX ring (length len(Data)) and
// returns how many; the nexus owns those buffers from then on. It kicks the
// nexus only if it sleeps.
func (a *App) Send(bufs []Buf) (int, error) {
	return a.produce(a.tx, WaitTxRoom, bufs, true)
}

// Free gives buffers back to the nexus through the free ring and returns how
// many fit.
func (a *App) Free(bufs []Buf) (int, error) {
	return a.produce(a.free, WaitFreeRoom, bufs, false)
}

func (a *App) produce(p *ring.Producer, room WaitSet, bufs []Buf, withLen bool) (int, error) {
	if err := a.Err(); err != nil {
		return 0, err
	}
	k, err := p.Reserve(len(bufs))
	if err != nil {
		return 0, a.fail(err)
	}
	for i := range k {
		s := ring.Slot{Index: bufs[i].Index, Flags: bufs[i].Flags}
		if withLen {
			s.Len = uint16(len(bufs[i].Data))
		}
		p.Set(i, s)
	}
	if k > 0 {
		p.Commit(k)
	}
	a.noteShort(room, k < len(bufs))
	// Kick a sleeping nexus to take the slots, or to make room.
	if (k > 0 || len(bufs) > 0) && p.NeedsWakeup() {
		a.kickN.Signal()
	}
	return k, nil
}

// Receive takes up to len(out) packets from the RX ring; Data is the packet.
// The app owns the buffers until it frees (or re-sends) them.
func (a *App) Receive(out []Buf) (int, error) {
	if err := a.Err(); err != nil {
		return 0, err
	}
	n, err := a.rx.Peek(len(out))
	if err != nil {
		return 0, a.fail(err)
	}
	for i := range n {
		s := a.rx.At(i)
		b, err := a.buffer(s.Index)
		if err != nil {
			return 0, a.fail(err)
		}
		if int(s.Len) > len(b) {
			return 0, a.fail(fmt.Errorf("%w: length %d > buffer size", ErrBadSlot, s.Len))
		}
		out[i] = Buf{Index: s.Index, Flags: s.Flags, Data: b[:s.Len]}
	}
	a.rx.Release(n)
	return n, nil
}

// Events takes up to len(out) events from the event ring, mapping and
// unmapping segments as they say, and returns them.
func (a *App) Events(out []Event) (int, error) {
	n, err := a.event.Peek(len(out))
	if err != nil {
		return 0, a.fail(err)
	}
	for i := range n {
		e := eventOf(a.event.At(i))
		out[i] = e
		segment := e.Arg < uint32(a.desc.MaxSegments)
		switch {
		case e.Kind == EventSegmentAdded && segment:
			err = a.mapSegment(int(e.Arg))
		case e.Kind == EventSegmentRemoved && segment:
			err = a.unmapSegment(int(e.Arg))
		case e.Kind == EventRecall:
			err = a.recall(e.Arg)
		}
		if err != nil {
			return 0, a.fail(err)
		}
	}
	a.event.Release(n)
	return n, nil
}

// recall hands up to n buffers of the alloc ring back through the free
// ring (EventRecall), the oldest first; what the free ring has no room for
// stays. The nexus checks every index it takes back, as for Free.
func (a *App) recall(n uint32) error {
	k, err := a.alloc.Peek(int(min(n, ring.MaxSize)))
	if err != nil {
		return err
	}
	k, err = a.free.Reserve(k)
	if err != nil {
		return err
	}
	for i := range k {
		a.free.Set(i, ring.Slot{Index: a.alloc.At(i).Index})
	}
	if k > 0 {
		a.free.Commit(k)
		a.alloc.Release(k)
		if a.free.NeedsWakeup() {
			a.kickN.Signal()
		}
	}
	return nil
}

// Meta returns the app-visible metadata of buffer idx (pool.UserMetaLen
// bytes, shared with the nexus), e.g. to write the flow ID of a packet
// before Send. idx must be a buffer the app holds.
func (a *App) Meta(idx uint32) ([]byte, error) {
	if _, err := a.buffer(idx); err != nil { // bounds check and map the segment
		return nil, a.fail(err)
	}
	seg := a.seg(idx)
	off := int(seg)*a.desc.UserMetaSegSize + int(idx-seg*a.bps)*pool.UserMetaLen
	mem := a.metaRes.Bytes()
	return mem[off : off+pool.UserMetaLen : off+pool.UserMetaLen], nil
}
