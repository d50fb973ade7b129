package channel

import (
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/pool"
	"github.com/skylane/skylane/ring"
)

// Options configures a channel. Zero fields take the defaults.
type Options struct {
	Name       string
	Pool       pool.Options
	TxSize     int // TX ring slots (app → nexus), default 256
	RxSize     int // RX ring slots (nexus → app), default 1024
	AllocSize  int // alloc ring slots (free buffers handed ahead), default 256
	FreeSize   int // free ring slots (buffers given back), default 256
	EventSize  int // event ring slots, default 32
	Advisories int // flow-advisory entries, default 512
	// MaxBacklog bounds events waiting for room on the event ring; an app
	// that lets it overflow is defunct. Default 4096.
	MaxBacklog int
}

func (o Options) withDefaults() Options {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&o.TxSize, DefaultTxSize)
	def(&o.RxSize, DefaultRxSize)
	def(&o.AllocSize, DefaultAllocSize)
	def(&o.FreeSize, DefaultFreeSize)
	def(&o.EventSize, DefaultEventSize)
	def(&o.Advisories, DefaultAdvisories)
	def(&o.MaxBacklog, 4096)
	if o.Name == "" {
		o.Name = "chan"
	}
	if o.Pool.Name == "" {
		o.Pool.Name = o.Name
	}
	return o
}

// Working set of the alloc ring, after Skywalk (docs/design.md §2): start with 8
// buffers handed ahead, +50% when the app runs dry, −25% after 2 s in which
// a quarter stayed unclaimed.
const (
	workingSetMin    = 8
	workingSetShrink = 2 * time.Second
)

// Channel is the nexus side of a channel: it owns the memory, validates all
// the app writes and never trusts it. It is owned by one goroutine (the
// nexus worker serving it); only Wait and Kick may be called from others.
type Channel struct {
	name    string
	opts    Options
	desc    Descriptor
	pool    *pool.Pool
	regions [3]*shm.Region // rings, advisories, stats
	maps    [3]*shm.Mapping
	tx      *ring.Consumer
	rx      *ring.Producer
	alloc   *ring.Producer
	free    *ring.Consumer
	event   *ring.Producer
	kickN   *shm.EventFD // app → nexus
	kickA   *shm.EventFD // nexus → app
	adv     []byte
	stats   []byte

	backlog     []Event
	unsignalled bool // events went on the ring since Sync last looked at the app's wake-up flag
	txTook      bool // TakeTX made room on the TX ring since Sync last looked at the app's room flag
	ws          int  // alloc-ring working set target
	wsLow       int  // least pending seen in this shrink window
	wsSince     time.Time
	idleLow     int  // least alloc-ring pending seen in this window, uncapped (-1: none seen)
	recalling   bool // an EventRecall is out, not answered yet
	recallAt    int  // the alloc ring's pending count when it was posted
	lastReap    time.Time
	idx         []uint32    // scratch for pool allocations
	slots       []ring.Slot // scratch for ring batches
	c           Counters
	err         *DefunctError
	closed      atomic.Bool
}

// New creates a channel and its pool, all in fresh shared memory.
func New(opts Options) (_ *Channel, err error) {
	opts = opts.withDefaults()
	rings, ringsLen, err := ringsLayout([numRings]int{opts.TxSize, opts.RxSize, opts.AllocSize, opts.FreeSize, opts.EventSize})
	if err != nil {
		return nil, fmt.Errorf("new channel %q: %w", opts.Name, err)
	}
	if opts.Advisories < 0 || opts.Advisories > 1<<20 {
		return nil, fmt.Errorf("new channel %q: %d advisories, want 0..%d", opts.Name, opts.Advisories, 1<<20)
	}
	c := &Channel{name: opts.Name, opts: opts, ws: workingSetMin, idleLow: -1}
	defer func() {
		if err != nil {
			c.release()
		}
	}()
	if c.pool, err = pool.New(opts.Pool); err != nil {
		return nil, fmt.Errorf("new channel %q: %w", opts.Name, err)
	}
	po := c.pool.Options()
	_, _, umetaSeg := c.pool.Regions()
	c.desc = Descriptor{
		Version: LayoutVersion, Name: opts.Name,
		BufferSize: po.BufferSize, SegmentSize: po.SegmentSize, MaxSegments: po.MaxSegments,
		UserMetaSegSize: umetaSeg,
		RingsSize:       roundUp(ringsLen, shm.PageSize), Rings: rings,
		Advisories: opts.Advisories, AdvisorySize: roundUp(max(opts.Advisories*AdvisoryLen, 1), shm.PageSize),
	}
	c.desc.StatsSize = roundUp(statsOffBitmap()+c.desc.bitmapLen(), shm.PageSize)
	sizes := [3]int{c.desc.RingsSize, c.desc.AdvisorySize, c.desc.StatsSize}
	for i, name := range []string{"rings", "advisories", "stats"} {
		if c.regions[i], err = shm.NewRegion(shm.RegionOptions{Name: opts.Name + "-" + name, Size: sizes[i]}); err != nil {
			return nil, fmt.Errorf("new channel %q: %w", opts.Name, err)
		}
		if c.maps[i], err = shm.Map(c.regions[i].FD(), 0, sizes[i], true); err != nil {
			return nil, fmt.Errorf("new channel %q: map %s: %w", opts.Name, name, err)
		}
		// The app may only read the tables the nexus writes: it gets a
		// read-only open of them (Share), and cannot reopen them for
		// writing. (Not F_SEAL_FUTURE_WRITE: a nexus taking over this
		// channel must map them writable again, handover.go.)
		if i > 0 {
			if err = c.regions[i].RestrictPeers(); err != nil {
				return nil, fmt.Errorf("new channel %q: %w", opts.Name, err)
			}
		}
	}
	c.adv, c.stats = c.maps[1].Bytes(), c.maps[2].Bytes()
	mem := c.maps[0].Bytes()
	for i, r := range rings {
		if err = ring.Init(mem[r.Offset:], r.Size); err != nil {
			return nil, fmt.Errorf("new channel %q: ring %s: %w", opts.Name, ringNames[i], err)
		}
	}
	if err = c.attachRings(mem); err != nil {
		return nil, err
	}
	*c.word(statsOffMagic) = statsMagic
	if c.kickN, err = shm.NewEventFD(); err != nil {
		return nil, fmt.Errorf("new channel %q: %w", opts.Name, err)
	}
	if c.kickA, err = shm.NewEventFD(); err != nil {
		return nil, fmt.Errorf("new channel %q: %w", opts.Name, err)
	}
	c.idx = make([]uint32, max(opts.AllocSize, opts.FreeSize, opts.TxSize, opts.RxSize))
	c.slots = make([]ring.Slot, len(c.idx))
	// Segments made by pool.New are already active: publish them; later
	// changes are also posted as events.
	for seg := range po.MaxSegments {
		if c.pool.SegmentActive(seg) {
			c.setSegmentBit(seg, true)
		}
	}
	c.pool.OnSegment(c.segmentChanged)
	return c, nil
}

func (c *Channel) attachRings(mem []byte) (err error) {
	r := c.desc.Rings
	if c.tx, err = ring.NewConsumer(mem[r[RingTX].Offset:], r[RingTX].Size); err != nil {
		return err
	}
	if c.rx, err = ring.NewProducer(mem[r[RingRX].Offset:], r[RingRX].Size); err != nil {
		return err
	}
	if c.alloc, err = ring.NewProducer(mem[r[RingAlloc].Offset:], r[RingAlloc].Size); err != nil {
		return err
	}
	if c.free, err = ring.NewConsumer(mem[r[RingFree].Offset:], r[RingFree].Size); err != nil {
		return err
	}
	c.event, err = ring.NewProducer(mem[r[RingEvent].Offset:], r[RingEvent].Size)
	return err
}

func (c *Channel) word(off int) *uint32 { return (*uint32)(unsafe.Pointer(&c.stats[off])) }

func (c *Channel) setSegmentBit(seg int, on bool) {
	w := (*uint32)(unsafe.Pointer(&c.stats[statsOffBitmap()+seg/32*4]))
	bit := uint32(1) << (seg % 32)
	for {
		old := atomic.LoadUint32(w)
		nw := old &^ bit
		if on {
			nw = old | bit
		}
		if atomic.CompareAndSwapUint32(w, old, nw) {
			return
		}
	}
}

func (c *Channel) segmentChanged(seg int, added bool) {
	c.setSegmentBit(seg, added)
	kind := EventSegmentRemoved
	if added {
		kind = EventSegmentAdded
		c.c.SegmentsAdded++
	} else {
		c.c.SegmentsFreed++
	}
	c.Post(Event{Kind: kind, Arg: uint32(seg)})
}

// Name returns the channel's name.
func (c *Channel) Name() string { return c.name }

// Pool returns the channel's packet pool (owned by the channel).
func (c *Channel) Pool() *pool.Pool { return c.pool }

// Err returns the *DefunctError once the channel is defunct, else nil.
func (c *Channel) Err() error {
	if c.err == nil {
		return nil
	}
	return c.err
}

// Counters returns the channel's counters.
func (c *Channel) Counters() Counters { return c.c }

// Post queues an event for the app; it reaches the event ring at once or on
// a later Sync, in order.
func (c *Channel) Post(e Event) {
	if c.err != nil {
		return
	}
	if len(c.backlog) == 0 {
		if n, _ := c.event.Enqueue([]ring.Slot{e.slot()}); n == 1 {
			// Sync signals a waiting app: one signal for all the
			// events of a round, and none while the app is busy.
			c.c.Events++
			c.unsignalled = true
			return
		}
	}
	if len(c.backlog) >= c.opts.MaxBacklog {
		c.Defunct(ReasonEventOverflow, fmt.Sprintf("%d events waiting", len(c.backlog)))
		return
	}
	c.backlog = append(c.backlog, e)
}

// Advisories returns the number of entries of the channel's flow-advisory
// table: the advisory indices the nexus may hand out for it.
func (c *Channel) Advisories() int { return c.desc.Advisories }
