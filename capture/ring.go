package capture

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/skylane/skylane/packet"
)

const (
	// DefaultSnaplen is the most bytes copied of a frame by default: a
	// whole frame at a 9000-byte MTU; super packets are cut.
	DefaultSnaplen = 9018
	// MaxSnaplen bounds Options.Snaplen: the largest super packet.
	MaxSnaplen = 65535
	// DefaultSlots is a ring's size by default: 4096 frames, 37 MiB at the
	// default snaplen, about 4 ms of a 1 Mpps datapath for the reader to
	// fall behind before frames are dropped.
	DefaultSlots = 4096
	// MaxSlots bounds Options.Slots (and the ring's memory with MaxSnaplen:
	// 64 Ki × 64 KiB would be 4 GiB, so Slots × Snaplen is bounded too).
	MaxSlots = 1 << 16
	// MaxRingBytes bounds Slots × Snaplen.
	MaxRingBytes = 256 << 20
)

// ErrBadOptions: Options out of range.
var ErrBadOptions = errors.New("capture: bad options")

// Options configure a Ring.
type Options struct {
	Filter  Filter
	Snaplen int // 0 means DefaultSnaplen; 1..MaxSnaplen
	Slots   int // rounded up to a power of two; 0 means DefaultSlots; at most MaxSlots
}

// Ring is one capture's bounded ring: the datapath's worker (the only
// writer) copies matching frames in with Put, and one reader goroutine
// takes them out with Read. Slots [tail, head) hold frames the reader has
// not taken; head is written by the writer only, tail by the reader only,
// both only grow. A full ring drops the frame (Drops): the writer never
// waits for the reader.
type Ring struct {
	f    Filter // immutable
	snap int    // immutable
	mask uint64 // immutable: len(slots)-1
	// slots and data: slot i's bytes are data[i*snap:][:slots[i].n]. A slot
	// in [tail, head) is the reader's, else the writer's.
	slots []slot
	data  []byte
	ps    packet.Parsed // the writer's parse scratch

	head    atomic.Uint64
	tail    atomic.Uint64
	drops   atomic.Uint64 // frames the filter took but the full ring dropped
	matched atomic.Uint64 // frames the filter took
	bell    chan struct{} // cap 1: the writer rang since the reader last looked

	closeOnce sync.Once
	done      chan struct{} // closed by Close
}

type slot struct {
	t           int64 // unix ns
	point       Point
	lt          packet.LinkType
	app, reason string
	len         uint32 // the frame's length
	n           uint32 // bytes copied
}

// Record is one captured frame as Read hands it out.
type Record struct {
	Time   int64 // unix ns
	Point  Point
	Link   packet.LinkType
	App    string // the port's channel, "" for none
	Reason string // the drop reason at a drop point
	Len    int    // the frame's length; Data holds at most the snaplen
	Data   []byte
}

// NewRing allocates a ring for o.
func NewRing(o Options) (*Ring, error) {
	if o.Snaplen == 0 {
		o.Snaplen = DefaultSnaplen
	}
	if o.Slots == 0 {
		o.Slots = DefaultSlots
	}
	if o.Snaplen < 1 || o.Snaplen > MaxSnaplen {
		return nil, fmt.Errorf("%w: snaplen %d not in 1..%d", ErrBadOptions, o.Snaplen, MaxSnaplen)
	}
	if o.Slots < 1 || o.Slots > MaxSlots {
		return nil, fmt.Errorf("%w: %d slots not in 1..%d", ErrBadOptions, o.Slots, MaxSlots)
	}
	n := 1
	for n < o.Slots {
		n <<= 1
	}
	if n*o.Snaplen > MaxRingBytes {
		return nil, fmt.Errorf("%w: %d slots of %d bytes exceed %d MiB: lower --snaplen", ErrBadOptions, n, o.Snaplen, MaxRingBytes>>20)
	}
	return &Ring{f: o.Filter, snap: o.Snaplen, mask: uint64(n - 1), slots: make([]slot, n),
		data: make([]byte, n*o.Snaplen), bell: make(chan struct{}, 1), done: make(chan struct{})}, nil
}

// Snaplen returns the most bytes copied of a frame.
func (r *Ring) Snaplen() int { return r.snap }

// Put copies frame b, at point p, of link type lt, for the port of channel
// app ("" for none), dropped for reason (at a drop point), if the filter
// takes it. Writer only (the datapath's worker); it never blocks and
// never allocates. Ring must follow a batch of Puts.
func (r *Ring) Put(t int64, p Point, lt packet.LinkType, app, reason string, b []byte) {
	if !r.f.matchMeta(p, app, reason) || r.f.flow() && !r.f.matchFlow(b, lt, &r.ps) {
		return
	}
	r.matched.Add(1)
	h := r.head.Load()
	if h-r.tail.Load() > r.mask {
		r.drops.Add(1)
		return
	}
	i := h & r.mask
	n := copy(r.data[int(i)*r.snap:int(i+1)*r.snap], b)
	r.slots[i] = slot{t: t, point: p, lt: lt, app: app, reason: reason, len: uint32(len(b)), n: uint32(n)}
	r.head.Store(h + 1)
}

// Ring wakes the reader if Puts since the last Ring added frames. Writer
// only; it never blocks.
func (r *Ring) Ring() {
	select {
	case r.bell <- struct{}{}:
	default:
	}
}

// Wait blocks until the ring may hold frames, d passes, or the ring is
// closed (false). Reader only.
func (r *Ring) Wait(d time.Duration) bool {
	if r.head.Load() != r.tail.Load() {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.bell:
		return true
	case <-t.C:
		return true
	case <-r.done:
		return false
	}
}

// Read calls fn on up to max frames the ring holds, oldest first, and
// gives their slots back to the writer; Data is valid only during fn. It
// returns how many it read. Reader only.
func (r *Ring) Read(max int, fn func(*Record)) int {
	t, h := r.tail.Load(), r.head.Load()
	n := 0
	var rec Record
	for ; t != h && n < max; t++ {
		i := t & r.mask
		s := &r.slots[i]
		rec = Record{Time: s.t, Point: s.point, Link: s.lt, App: s.app, Reason: s.reason, Len: int(s.len),
			Data: r.data[int(i)*r.snap:][:s.n]}
		fn(&rec)
		*s = slot{} // drop the strings: the ring keeps no port's name alive
		n++
	}
	r.tail.Store(t)
	return n
}

// Drops returns how many frames the filter took but the full ring
// dropped; Matched how many the filter took (the frames written plus
// Drops). Safe from any goroutine.
func (r *Ring) Drops() uint64   { return r.drops.Load() }
func (r *Ring) Matched() uint64 { return r.matched.Load() }

// Close ends Wait (now and later). The writer must have stopped putting
// (the switch removed the ring) before the ring's memory is let go.
func (r *Ring) Close() { r.closeOnce.Do(func() { close(r.done) }) }
