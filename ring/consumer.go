package ring

import "sync/atomic"

// Consumer is the reading end of a ring. It is not safe for concurrent use:
// one goroutine consumes.
type Consumer struct {
	view
	cons       uint32 // released consumer index (private truth)
	cachedProd uint32 // last validated producer index
	err        error
}

// NewConsumer attaches the consumer end to an initialised ring in mem.
func NewConsumer(mem []byte, size int) (*Consumer, error) {
	v, err := newView(mem, size)
	if err != nil {
		return nil, err
	}
	p, c := atomic.LoadUint32(v.prod), atomic.LoadUint32(v.cons)
	if p-c > v.size {
		return nil, ErrCorrupt
	}
	return &Consumer{view: v, cons: c, cachedProd: p}, nil
}

// Err returns ErrCorrupt once the producer was caught moving its index out
// of range.
func (c *Consumer) Err() error { return c.err }

// Peek returns how many filled slots (up to n) are ready to read. It reads
// the producer's index only when the cached copy shows fewer than n.
func (c *Consumer) Peek(n int) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	avail := c.cachedProd - c.cons
	if avail < uint32(n) {
		p := atomic.LoadUint32(c.prod)
		// The producer may only move forward and never lap the consumer.
		if p-c.cons > c.size || p-c.cachedProd > p-c.cons {
			c.err = ErrCorrupt
			return 0, c.err
		}
		c.cachedProd = p
		avail = p - c.cons
	}
	if avail < uint32(n) {
		return int(avail), nil
	}
	return n, nil
}

// At returns a copy of the i-th ready slot (0 ≤ i < the last Peek's result).
// The copy is what must be validated and used: the producer's memory may
// change after it was read.
func (c *Consumer) At(i int) Slot {
	return unpack(c.slots[(c.cons+uint32(i))&c.mask])
}

// Release hands the first k read slots back to the producer.
func (c *Consumer) Release(k int) {
	c.cons += uint32(k)
	atomic.StoreUint32(c.view.cons, c.cons)
}

// HasEntries reports whether the ring has a filled slot, from the shared
// index words alone: it changes nothing in this end, so a waiter may call
// it while the consuming goroutine works (it is a hint for whether to
// sleep, and Peek is what validates the producer's index: an index out of
// range reads as an entry, for Peek to refuse).
func (c *Consumer) HasEntries() bool {
	return atomic.LoadUint32(c.prod) != atomic.LoadUint32(c.view.cons)
}

// Dequeue copies up to len(out) ready slots into out, releases them and
// returns how many.
func (c *Consumer) Dequeue(out []Slot) (int, error) {
	k, err := c.Peek(len(out))
	if err != nil || k == 0 {
		return 0, err
	}
	for i := range k {
		out[i] = unpack(c.slots[(c.cons+uint32(i))&c.mask])
	}
	c.Release(k)
	return k, nil
}

// SetNeedWakeup sets or clears the request for a signal on the next commit.
// After setting it, Peek again before sleeping: a commit may have raced.
func (c *Consumer) SetNeedWakeup(on bool) {
	var v uint32
	if on {
		v = FlagNeedWakeup
	}
	atomic.StoreUint32(c.flags, v)
}

// NeedsRoom reports whether the producer asked to be signalled when there
// is room. Call it after Release. The word is the producer's to write: only
// its FlagNeedRoom bit is looked at.
func (c *Consumer) NeedsRoom() bool {
	return atomic.LoadUint32(c.pflags)&FlagNeedRoom != 0
}
