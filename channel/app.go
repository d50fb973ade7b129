package channel

import (
	"errors"
	"fmt"
	"math/bits"
	"sync/atomic"
	"unsafe"

	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/ring"
)

// App is the application's end of a channel. It maps the channel's shared
// memory (buffer segments one at a time, as the nexus adds them) and moves
// packets in batches. It is owned by one goroutine; only Kick, Interrupt,
// Admissible and Close may be called from others, and Close only once the
// owner stopped using it.
type App struct {
	desc    Descriptor
	bufFD   int
	metaFD  int
	bufRes  *shm.Reservation
	metaRes *shm.Reservation
	maps    [3]*shm.Mapping // rings, advisories (read-only), stats (read-only)
	bufs    []byte
	stats   []byte
	mapped  []bool
	bps     uint32
	shift   uint
	pow2    bool
	maxBufs uint32
	tx      *ring.Producer
	rx      *ring.Consumer
	alloc   *ring.Consumer
	free    *ring.Producer
	event   *ring.Consumer
	kickN   *shm.EventFD
	kickA   *shm.EventFD
	slots   []ring.Slot
	closed  atomic.Bool
	// interrupted is set by Interrupt and taken by the Wait it ends.
	interrupted atomic.Bool
	// short holds the WaitSet bits of the rings the last call came up
	// short on (Short).
	short atomic.Uint32
}

// ErrBadSlot means the nexus handed the app a slot outside the pool; the
// app's end refuses it rather than touch memory it does not map.
var ErrBadSlot = errors.New("channel: nexus sent a slot outside the pool")

// Attach maps a channel from its descriptor and file descriptors (as
// returned by Channel.Share, possibly received from another process). It
// takes ownership of fds, also on error.
func Attach(d Descriptor, fds []int) (_ *App, err error) {
	a := &App{desc: d, bufFD: -1, metaFD: -1}
	owned := append([]int(nil), fds...)
	defer func() {
		if err != nil {
			for _, fd := range owned {
				if fd >= 0 {
					shm.CloseFD(fd)
				}
			}
			a.unmapAll()
		}
	}()
	if len(fds) != numFDs {
		return nil, fmt.Errorf("attach channel %q: got %d file descriptors, want %d", d.Name, len(fds), numFDs)
	}
	var sizes [numFDs]int64
	for i := range fdKickNexus {
		if sizes[i], err = shm.FileSize(fds[i]); err != nil {
			return nil, fmt.Errorf("attach channel %q: %w", d.Name, err)
		}
	}
	if err := d.validate(sizes); err != nil {
		return nil, fmt.Errorf("attach channel %q: %w", d.Name, err)
	}
	bps := d.SegmentSize / d.BufferSize
	a.bps, a.maxBufs = uint32(bps), uint32(d.MaxSegments*bps)
	a.pow2, a.shift = bps&(bps-1) == 0, uint(bits.TrailingZeros(uint(bps)))
	a.mapped = make([]bool, d.MaxSegments)
	if a.bufRes, err = shm.Reserve(d.MaxSegments * d.SegmentSize); err != nil {
		return nil, fmt.Errorf("attach channel %q: %w", d.Name, err)
	}
	if a.metaRes, err = shm.Reserve(d.MaxSegments * d.UserMetaSegSize); err != nil {
		return nil, fmt.Errorf("attach channel %q: %w", d.Name, err)
	}
	a.bufs = a.bufRes.Bytes()
	for i, m := range []struct {
		fd       int
		size     int
		writable bool
	}{{fds[fdRings], d.RingsSize, true}, {fds[fdAdvisory], d.AdvisorySize, false}, {fds[fdStats], d.StatsSize, false}} {
		if a.maps[i], err = shm.Map(m.fd, 0, m.size, m.writable); err != nil {
			return nil, fmt.Errorf("attach channel %q: %w", d.Name, err)
		}
	}
	a.stats = a.maps[2].Bytes()
	mem := a.maps[0].Bytes()
	r := d.Rings
	if a.tx, err = ring.NewProducer(mem[r[RingTX].Offset:], r[RingTX].Size); err == nil {
		if a.rx, err = ring.NewConsumer(mem[r[RingRX].Offset:], r[RingRX].Size); err == nil {
			if a.alloc, err = ring.NewConsumer(mem[r[RingAlloc].Offset:], r[RingAlloc].Size); err == nil {
				if a.free, err = ring.NewProducer(mem[r[RingFree].Offset:], r[RingFree].Size); err == nil {
					a.event, err = ring.NewConsumer(mem[r[RingEvent].Offset:], r[RingEvent].Size)
				}
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("attach channel %q: rings: %w", d.Name, err)
	}
	if a.kickN, err = shm.EventFDFrom(fds[fdKickNexus]); err != nil {
		owned[fdKickNexus] = -1 // EventFDFrom closed it
		return nil, fmt.Errorf("attach channel %q: %w", d.Name, err)
	}
	owned[fdKickNexus] = -1
	if a.kickA, err = shm.EventFDFrom(fds[fdKickApp]); err != nil {
		owned[fdKickApp] = -1
		a.kickN.Close()
		return nil, fmt.Errorf("attach channel %q: %w", d.Name, err)
	}
	for _, i := range []int{fdRings, fdAdvisory, fdStats} {
		shm.CloseFD(fds[i]) // mapped; the fd is not needed any more
	}
	a.bufFD, a.metaFD = fds[fdBuffers], fds[fdUserMeta]
	owned = nil
	a.slots = make([]ring.Slot, max(d.Rings[RingEvent].Size, 64))
	for seg := range d.MaxSegments {
		if a.segmentActive(seg) {
			if err := a.mapSegment(seg); err != nil {
				a.Close()
				return nil, err
			}
		}
	}
	return a, nil
}

func (a *App) unmapAll() {
	for i := range a.maps {
		a.maps[i].Unmap()
		a.maps[i] = nil
	}
	a.bufRes.Release()
	a.metaRes.Release()
	a.bufs, a.stats = nil, nil
}

// Close unmaps the channel and closes its descriptors. Safe to call twice.
func (a *App) Close() error {
	if !a.closed.CompareAndSwap(false, true) {
		return nil
	}
	a.unmapAll()
	a.kickN.Close()
	a.kickA.Close()
	shm.CloseFD(a.bufFD)
	shm.CloseFD(a.metaFD)
	return nil
}

func (a *App) word(off int) *uint32 { return (*uint32)(unsafe.Pointer(&a.stats[off])) }

func (a *App) segmentActive(seg int) bool {
	w := atomic.LoadUint32((*uint32)(unsafe.Pointer(&a.stats[statsOffBitmap()+seg/32*4])))
	return w&(1<<(seg%32)) != 0
}

func (a *App) mapSegment(seg int) error {
	if a.mapped[seg] {
		return nil
	}
	d := &a.desc
	if err := a.bufRes.MapAt(seg*d.SegmentSize, a.bufFD, int64(seg)*int64(d.SegmentSize), d.SegmentSize, true); err != nil {
		return fmt.Errorf("channel %q: map buffer segment %d: %w", d.Name, seg, err)
	}
	if err := a.metaRes.MapAt(seg*d.UserMetaSegSize, a.metaFD, int64(seg)*int64(d.UserMetaSegSize), d.UserMetaSegSize, true); err != nil {
		return fmt.Errorf("channel %q: map metadata segment %d: %w", d.Name, seg, err)
	}
	a.mapped[seg] = true
	return nil
}

// unmapSegment unmaps a segment the nexus released, unless it has already
// been activated again (then the app may hold its buffers).
func (a *App) unmapSegment(seg int) error {
	if !a.mapped[seg] || a.segmentActive(seg) {
		return nil
	}
	d := &a.desc
	if err := a.bufRes.UnmapAt(seg*d.SegmentSize, d.SegmentSize); err != nil {
		return err
	}
	if err := a.metaRes.UnmapAt(seg*d.UserMetaSegSize, d.UserMetaSegSize); err != nil {
		return err
	}
	a.mapped[seg] = false
	return nil
}

// MappedSegments returns how many buffer segments the app has mapped now.
func (a *App) MappedSegments() int {
	n := 0
	for _, m := range a.mapped {
		if m {
			n++
		}
	}
	return n
}

// Err returns the *DefunctError once the nexus closed the channel.
func (a *App) Err() error {
	if a.closed.Load() {
		return &DefunctError{Channel: a.desc.Name, Reason: ReasonClosed, Detail: "closed by the app"}
	}
	if atomic.LoadUint32(a.word(statsOffState)) == 0 {
		return nil
	}
	return &DefunctError{Channel: a.desc.Name, Reason: DefunctReason(atomic.LoadUint32(a.word(statsOffReason)))}
}

// Counters reads the counters the nexus last published.
func (a *App) Counters() Counters {
	var v [numCounters]uint64
	for i := range v {
		v[i] = atomic.LoadUint64((*uint64)(unsafe.Pointer(&a.stats[statsOffCounter+8*i])))
	}
	return countersFrom(v)
}

// BufferSize returns the bytes per buffer.
func (a *App) BufferSize() int { return a.desc.BufferSize }

// Name returns the channel's name.
func (a *App) Name() string { return a.desc.Name }

// Kick wakes the nexus worker. Send, Free and Alloc kick by themselves when
// the nexus sleeps; this is for busy-poll setups and shutdown.
func (a *App) Kick() {
	if !a.closed.Load() {
		a.kickN.Signal()
	}
}
