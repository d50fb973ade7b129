// Package pool is the packet memory of one application: an arena of regions,
// each a memfd made of equal segments, the buffer segments divided into
// fixed-size buffers (docs/design.md §2).
//
// Invariants:
//   - A buffer is named by its index idx = segment × buffersPerSegment + i; it
//     never crosses a segment, and its device (I/O) address is the segment's
//     base plus i × BufferSize: one address lookup per segment (AddrCache).
//   - Every buffer is in exactly one state, kept in the nexus-only metadata
//     region that no app can map: Free (in the pool), Nexus (held by the
//     nexus) or App (handed to the application). Transition checks the index
//     and the state together, so a foreign, out-of-range or twice-freed index
//     is refused, never used.
//   - The pool grows by whole segments when free buffers fall under the low
//     watermark, up to MaxSegments; past that Alloc fails at once and counts
//     it. The datapath never blocks.
//   - Reap returns idle segments whose buffers are all Free to the OS (punch
//     hole), down to MinSegments; a segment with any buffer out is never
//     released.
//   - A Pool is owned by one goroutine (the nexus worker of its channel); it
//     takes no locks.
//   - A pool handed to another nexus process (Export, Adopt; handover.go)
//     keeps every buffer's state, read from the nexus-only metadata; a
//     buffer the old process held (in flight) goes back to the free lists.
package pool

import (
	"fmt"
	"math/bits"
	"time"

	"github.com/skylane/skylane/internal/shm"
)

// State of a buffer, in the nexus-only metadata. Free must be zero: a
// punched (released) segment reads back as all Free.
type State uint8

const (
	Free  State = iota // in the pool's free lists
	Nexus              // held by the nexus (being filled, checked or sent)
	App                // handed to the application (alloc/RX ring or in its hands)
)

// Stats are the pool's counters. Read them from the owning goroutine.
type Stats struct {
	Segments     int    // active buffer segments now
	FreeBuffers  int    // buffers in the free lists now
	Allocs       uint64 // buffers handed out
	AllocFails   uint64 // buffers asked for while exhausted at MaxSegments
	Grows        uint64 // segments added
	Releases     uint64 // segments returned to the OS
	AddrLookups  uint64 // per-segment I/O address lookups (AddrCache misses)
	PunchErrors  uint64 // hole punches the OS refused (memory kept)
	BuffersTotal int    // buffers in active segments
	// FreeSegments counts active segments with every buffer free: the
	// reaper returns each once idle, down to MinSegments. A segment with
	// one buffer out (an app's alloc ring included) is not counted.
	FreeSegments int
}

// Pool is the nexus-side view of one application's packet memory.
type Pool struct {
	opts      Options
	bufSize   int
	segSize   int
	bps       int  // buffers per segment
	shift     uint // log2(bps) when bps is a power of two
	pow2      bool
	umetaSeg  int // bytes of user metadata per segment (page-rounded)
	nmetaSeg  int // bytes of nexus metadata per segment (page-rounded)
	maxBufs   uint32
	bufs      *shm.Region
	umeta     *shm.Region
	nmeta     *shm.Region
	maps      [3]*shm.Mapping
	mem       []byte // all buffer segments, contiguous (the UMEM)
	umem      []byte
	nmem      []byte
	active    []bool
	nActive   int
	free      [][]uint32 // per-segment free stacks
	nfree     int
	lowest    int // no segment below this has free buffers
	touched   []bool
	lastBusy  []time.Time
	onSegment func(seg int, added bool)
	stats     Stats

	// Reclaimed counts the buffers Adopt found held by the nexus that
	// exported the pool (packets it had in flight) and freed.
	Reclaimed int
}

// New makes a pool's regions and activates MinSegments segments.
func New(opts Options) (_ *Pool, err error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	p := newPool(opts)
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	regions := []struct {
		r    **shm.Region
		name string
		size int
		huge bool
	}{
		{&p.bufs, opts.Name + "-buffers", opts.MaxSegments * opts.SegmentSize, opts.HugePages},
		{&p.umeta, opts.Name + "-usermeta", opts.MaxSegments * p.umetaSeg, false},
		{&p.nmeta, opts.Name + "-nexusmeta", opts.MaxSegments * p.nmetaSeg, false},
	}
	mems := []*[]byte{&p.mem, &p.umem, &p.nmem}
	for i, r := range regions {
		if *r.r, err = shm.NewRegion(shm.RegionOptions{Name: r.name, Size: r.size, HugePages: r.huge}); err != nil {
			return nil, fmt.Errorf("new pool: %w", err)
		}
		if p.maps[i], err = shm.Map((*r.r).FD(), 0, r.size, true); err != nil {
			if r.huge {
				return nil, fmt.Errorf("new pool: map %s on huge pages: %w (reserve %d huge pages in /proc/sys/vm/nr_hugepages or turn huge pages off)", r.name, err, r.size/HugeSegmentSize)
			}
			return nil, fmt.Errorf("new pool: map %s: %w", r.name, err)
		}
		*mems[i] = p.maps[i].Bytes()
	}
	for range opts.MinSegments {
		p.grow()
	}
	return p, nil
}

// newPool is a pool's bookkeeping for valid opts, before any region.
func newPool(opts Options) *Pool {
	bps := opts.SegmentSize / opts.BufferSize
	return &Pool{
		opts:     opts,
		bufSize:  opts.BufferSize,
		segSize:  opts.SegmentSize,
		bps:      bps,
		pow2:     bps&(bps-1) == 0,
		shift:    uint(bits.TrailingZeros(uint(bps))),
		umetaSeg: roundUp(bps*UserMetaLen, shm.PageSize),
		nmetaSeg: roundUp(bps*nexusMetaLen, shm.PageSize),
		maxBufs:  uint32(opts.MaxSegments * bps),
		active:   make([]bool, opts.MaxSegments),
		free:     make([][]uint32, opts.MaxSegments),
		touched:  make([]bool, opts.MaxSegments),
		lastBusy: make([]time.Time, opts.MaxSegments),
	}
}

func roundUp(n, to int) int { return (n + to - 1) / to * to }

// OnSegment sets the function told of every segment added or released, so
// the channel can post it on the app's event ring. Call before first use.
func (p *Pool) OnSegment(f func(seg int, added bool)) { p.onSegment = f }

// BufferSize returns the bytes per buffer.
func (p *Pool) BufferSize() int { return p.bufSize }

// SegmentSize returns the bytes per buffer segment.
func (p *Pool) SegmentSize() int { return p.segSize }

// BuffersPerSegment returns how many buffers a segment holds.
func (p *Pool) BuffersPerSegment() int { return p.bps }

// MaxBuffers returns the size of the buffer index space.
func (p *Pool) MaxBuffers() uint32 { return p.maxBufs }

// Options returns the options in force (defaults filled in).
func (p *Pool) Options() Options { return p.opts }

// Regions returns the memfds an app maps: buffers and user metadata, and the
// bytes of user metadata per segment. They stay owned by the pool.
func (p *Pool) Regions() (buffers, userMeta *shm.Region, userMetaSegSize int) {
	return p.bufs, p.umeta, p.umetaSeg
}

// Mem returns all buffer segments as one range (the device-accessible
// region, e.g. an AF_XDP UMEM). Only active segments may be touched.
func (p *Pool) Mem() []byte { return p.mem }

func (p *Pool) split(idx uint32) (seg, i uint32) {
	if p.pow2 {
		return idx >> p.shift, idx & (uint32(p.bps) - 1)
	}
	return idx / uint32(p.bps), idx % uint32(p.bps)
}

// Buffer returns the whole buffer idx (BufferSize bytes). idx must have come
// from this pool (Alloc or a successful Transition).
func (p *Pool) Buffer(idx uint32) []byte {
	off := int(idx) * p.bufSize
	return p.mem[off : off+p.bufSize : off+p.bufSize]
}

// UserMeta returns the app-visible metadata of buffer idx (UserMetaLen
// bytes, shared: copy before checking).
func (p *Pool) UserMeta(idx uint32) []byte {
	seg, i := p.split(idx)
	off := int(seg)*p.umetaSeg + int(i)*UserMetaLen
	return p.umem[off : off+UserMetaLen : off+UserMetaLen]
}

func (p *Pool) stateAt(seg, i uint32) *byte {
	return &p.nmem[int(seg)*p.nmetaSeg+int(i)*nexusMetaLen]
}

// Transition moves buffer idx from state from to state to, if idx is inside
// the pool, its segment is active and it is in state from. Otherwise it
// changes nothing and returns false: the index is wild, foreign or stale.
// from and to must be Nexus or App: a buffer enters and leaves Free only
// through Alloc and Reclaim, which keep the free lists in step.
func (p *Pool) Transition(idx uint32, from, to State) bool {
	return held(from) && held(to) && p.transition(idx, from, to)
}

// held reports whether s is the state of a buffer out of the pool.
func held(s State) bool { return s == Nexus || s == App }

func (p *Pool) transition(idx uint32, from, to State) bool {
	if idx >= p.maxBufs {
		return false
	}
	seg, i := p.split(idx)
	if !p.active[seg] {
		return false
	}
	s := p.stateAt(seg, i)
	if State(*s) != from {
		return false
	}
	*s = byte(to)
	return true
}

// StateOf returns the state of idx, and false if idx is not in an active
// segment.
func (p *Pool) StateOf(idx uint32) (State, bool) {
	if idx >= p.maxBufs {
		return 0, false
	}
	seg, i := p.split(idx)
	if !p.active[seg] {
		return 0, false
	}
	return State(*p.stateAt(seg, i)), true
}
