package ring

import "sync/atomic"

// Producer is the writing end of a ring. It is not safe for concurrent use:
// one goroutine produces.
type Producer struct {
	view
	prod       uint32 // committed producer index (private truth)
	cachedCons uint32 // last validated consumer index
	err        error
}

// NewProducer attaches the producer end to an initialised ring in mem. It
// starts from the indices found there, which must be consistent.
func NewProducer(mem []byte, size int) (*Producer, error) {
	v, err := newView(mem, size)
	if err != nil {
		return nil, err
	}
	p, c := atomic.LoadUint32(v.prod), atomic.LoadUint32(v.cons)
	if p-c > v.size {
		return nil, ErrCorrupt
	}
	return &Producer{view: v, prod: p, cachedCons: c}, nil
}

// Err returns ErrCorrupt once the consumer was caught moving its index out of
// range; every later call fails with it too.
func (p *Producer) Err() error { return p.err }

// Reserve returns how many of the next n slots are free to fill (0..n). It
// reads the consumer's index only when the cached copy shows too little room.
func (p *Producer) Reserve(n int) (int, error) {
	if p.err != nil {
		return 0, p.err
	}
	free := p.size - (p.prod - p.cachedCons)
	if free < uint32(n) {
		c := atomic.LoadUint32(p.cons)
		// The consumer may only move forward, up to what was committed.
		if c-p.cachedCons > p.prod-p.cachedCons {
			p.err = ErrCorrupt
			return 0, p.err
		}
		p.cachedCons = c
		free = p.size - (p.prod - c)
	}
	if free < uint32(n) {
		return int(free), nil
	}
	return n, nil
}

// Set fills the i-th reserved slot (0 ≤ i < the last Reserve's result).
func (p *Producer) Set(i int, s Slot) {
	p.slots[(p.prod+uint32(i))&p.mask] = s.pack()
}

// Commit publishes the first k reserved slots to the consumer.
func (p *Producer) Commit(k int) {
	p.prod += uint32(k)
	atomic.StoreUint32(p.view.prod, p.prod)
}

// NeedsWakeup reports whether the consumer asked to be signalled. Call it
// after Commit.
func (p *Producer) NeedsWakeup() bool {
	return atomic.LoadUint32(p.flags)&FlagNeedWakeup != 0
}

// SetNeedRoom sets or clears the request for a signal on the consumer's
// next release. After setting it, Reserve again before sleeping: a release
// may have raced.
func (p *Producer) SetNeedRoom(on bool) {
	var v uint32
	if on {
		v = FlagNeedRoom
	}
	atomic.StoreUint32(p.pflags, v)
}

// HasRoom reports whether the ring has a free slot, from the shared index
// words alone: it changes nothing in this end, so a waiter may call it
// while the producing goroutine works (it is a hint for whether to sleep,
// and Reserve is what validates the consumer's index: an index out of
// range reads as room, for Reserve to refuse).
func (p *Producer) HasRoom() bool {
	return atomic.LoadUint32(p.view.prod)-atomic.LoadUint32(p.cons) != p.size
}

// Enqueue reserves, fills and commits up to len(s) slots and returns how many.
func (p *Producer) Enqueue(s []Slot) (int, error) {
	k, err := p.Reserve(len(s))
	if err != nil {
		return 0, err
	}
	for i := range k {
		p.slots[(p.prod+uint32(i))&p.mask] = s[i].pack()
	}
	if k > 0 {
		p.Commit(k)
	}
	return k, nil
}

// Pending returns how many committed slots the consumer has not yet taken,
// as far as this side last saw.
func (p *Producer) Pending() int { return int(p.prod - p.cachedCons) }

// Refresh re-reads and validates the consumer's index, so Pending is exact.
func (p *Producer) Refresh() error {
	if p.err != nil {
		return p.err
	}
	c := atomic.LoadUint32(p.cons)
	if c-p.cachedCons > p.prod-p.cachedCons {
		p.err = ErrCorrupt
		return p.err
	}
	p.cachedCons = c
	return nil
}
