package channel

import (
	"fmt"

	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/pool"
	"github.com/skylane/skylane/ring"
)

// Handing a channel's nexus end to another nexus process (a takeover,
// docs/upgrade.md): Export in the old process, Adopt in the new one,
// Abandon in the old one once the new one has it. The app is not told:
// its rings, buffers and eventfds stay as they were.
//
// What the new end trusts comes from the old end's private state (ring
// indices, working set, backlog, counters) and from nexus-only memory
// (the pool's buffer states), never from memory the app can write: the
// restored rings republish the nexus's indices and check the app's as
// before, and every buffer the app hands in is checked against the pool.

// Handover is a channel's nexus-side state, besides its descriptors.
type Handover struct {
	Options  Options            `json:"options"`
	Desc     Descriptor         `json:"desc"`
	Pool     pool.Handover      `json:"pool"`
	TX       ring.ConsumerState `json:"tx"`
	Free     ring.ConsumerState `json:"free"`
	RX       ring.ProducerState `json:"rx"`
	Alloc    ring.ProducerState `json:"alloc"`
	Event    ring.ProducerState `json:"event"`
	Backlog  []Event            `json:"backlog,omitempty"`
	WS       int                `json:"ws"`
	Recall   bool               `json:"recall"`
	RecallAt int                `json:"recall_at"`
	Counters Counters           `json:"counters"`
	_        struct{}           `json:"-"`
}

// HandoverFDs is how many descriptors Export returns: the pool's three
// regions, the rings, advisory and stats regions, and the two eventfds.
const HandoverFDs = 8

// Export returns the channel's nexus-side state and duplicates of its
// descriptors (HandoverFDs, owned by the caller). The channel keeps
// serving: a takeover that fails before its commit leaves it as it was.
// Owner goroutine only, between two Syncs.
func (c *Channel) Export() (Handover, []int, error) {
	if c.err != nil {
		return Handover{}, nil, c.err
	}
	h := Handover{
		Options: c.opts, Desc: c.desc,
		TX: c.tx.State(), Free: c.free.State(),
		RX: c.rx.State(), Alloc: c.alloc.State(), Event: c.event.State(),
		Backlog: append([]Event(nil), c.backlog...),
		WS:      c.ws, Recall: c.recalling, RecallAt: c.recallAt,
		Counters: c.c,
	}
	ph, pfds, err := c.pool.Export()
	if err != nil {
		return Handover{}, nil, fmt.Errorf("export channel %q: %w", c.name, err)
	}
	h.Pool = ph
	fds := append(make([]int, 0, HandoverFDs), pfds[:]...)
	for _, fd := range []int{c.regions[0].FD(), c.regions[1].FD(), c.regions[2].FD(), c.kickN.FD(), c.kickA.FD()} {
		d, err := shm.Dup(fd)
		if err != nil {
			for _, f := range fds {
				shm.CloseFD(f)
			}
			return Handover{}, nil, fmt.Errorf("export channel %q: %w", c.name, err)
		}
		fds = append(fds, d)
	}
	return h, fds, nil
}

// Adopt rebuilds a channel's nexus end from what Export returned in
// another process. It takes ownership of fds: on failure they are closed.
func Adopt(h Handover, fds []int) (_ *Channel, err error) {
	if len(fds) != HandoverFDs {
		return nil, fmt.Errorf("adopt channel %q: %d descriptors, want %d", h.Desc.Name, len(fds), HandoverFDs)
	}
	opts := h.Options.withDefaults()
	if h.Desc.Version != LayoutVersion {
		return nil, fmt.Errorf("adopt channel %q: layout version %d, this nexus has %d", h.Desc.Name, h.Desc.Version, LayoutVersion)
	}
	c := &Channel{name: opts.Name, opts: opts, desc: h.Desc, ws: max(h.WS, workingSetMin), idleLow: -1,
		recalling: h.Recall, recallAt: h.RecallAt, c: h.Counters, backlog: h.Backlog,
		unsignalled: true, txTook: true}
	var owned []*shm.Region
	var taken [HandoverFDs]bool
	defer func() {
		if err != nil {
			for i, fd := range fds {
				if !taken[i] {
					shm.CloseFD(fd)
				}
			}
			for _, m := range c.maps {
				m.Unmap()
			}
			for _, r := range owned {
				r.Close()
			}
			if c.pool != nil {
				c.pool.Close()
			}
			if c.kickN != nil {
				c.kickN.Close()
			}
		}
	}()
	var pfds [3]int
	copy(pfds[:], fds[:3])
	if c.pool, err = pool.Adopt(h.Pool, pfds); err != nil {
		return nil, fmt.Errorf("adopt channel %q: %w", c.name, err)
	}
	taken[0], taken[1], taken[2] = true, true, true
	sizes := [3]int{h.Desc.RingsSize, h.Desc.AdvisorySize, h.Desc.StatsSize}
	for i, name := range []string{"rings", "advisories", "stats"} {
		r, err := shm.AdoptRegion(fds[3+i], opts.Name+"-"+name, sizes[i])
		if err != nil {
			return nil, fmt.Errorf("adopt channel %q: %w", c.name, err)
		}
		owned = append(owned, r)
		taken[3+i] = true
		c.regions[i] = r
		if c.maps[i], err = shm.Map(r.FD(), 0, sizes[i], true); err != nil {
			return nil, fmt.Errorf("adopt channel %q: map %s: %w", c.name, name, err)
		}
	}
	if statsOffBitmap()+h.Desc.bitmapLen() > h.Desc.StatsSize || h.Desc.Advisories*AdvisoryLen > h.Desc.AdvisorySize {
		return nil, fmt.Errorf("adopt channel %q: descriptor does not fit its regions", c.name)
	}
	c.adv, c.stats = c.maps[1].Bytes(), c.maps[2].Bytes()
	mem := c.maps[0].Bytes()
	r := h.Desc.Rings
	for i, rg := range r {
		if rg.Offset < 0 || rg.Offset+ring.MemSize(rg.Size) > len(mem) {
			return nil, fmt.Errorf("adopt channel %q: ring %s outside the rings region", c.name, ringNames[i])
		}
	}
	if c.tx, err = ring.RestoreConsumer(mem[r[RingTX].Offset:], r[RingTX].Size, h.TX); err == nil {
		if c.rx, err = ring.RestoreProducer(mem[r[RingRX].Offset:], r[RingRX].Size, h.RX); err == nil {
			if c.alloc, err = ring.RestoreProducer(mem[r[RingAlloc].Offset:], r[RingAlloc].Size, h.Alloc); err == nil {
				if c.free, err = ring.RestoreConsumer(mem[r[RingFree].Offset:], r[RingFree].Size, h.Free); err == nil {
					c.event, err = ring.RestoreProducer(mem[r[RingEvent].Offset:], r[RingEvent].Size, h.Event)
				}
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("adopt channel %q: rings: %w", c.name, err)
	}
	taken[6], taken[7] = true, true // EventFDFrom closes its fd on failure
	if c.kickN, err = shm.EventFDFrom(fds[6]); err != nil {
		shm.CloseFD(fds[7])
		return nil, fmt.Errorf("adopt channel %q: %w", c.name, err)
	}
	if c.kickA, err = shm.EventFDFrom(fds[7]); err != nil {
		return nil, fmt.Errorf("adopt channel %q: %w", c.name, err)
	}
	c.idx = make([]uint32, max(opts.AllocSize, opts.FreeSize, opts.TxSize, opts.RxSize))
	c.slots = make([]ring.Slot, len(c.idx))
	// The segment bitmap is the nexus's to write: make it say what the
	// pool says, whatever happened to it.
	po := c.pool.Options()
	for seg := range po.MaxSegments {
		c.setSegmentBit(seg, c.pool.SegmentActive(seg))
	}
	c.pool.OnSegment(c.segmentChanged)
	return c, nil
}

// Abandon lets the channel go without telling the app: the process that
// adopted it serves it now. It unmaps the channel's memory and closes
// its descriptors, writing nothing; the channel is unusable afterwards.
func (c *Channel) Abandon() {
	if c.err == nil {
		c.err = &DefunctError{Channel: c.name, Reason: ReasonClosed, Detail: "handed over to another nexus"}
	}
	c.release()
}
