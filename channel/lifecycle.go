package channel

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/ring"
)

func (c *Channel) counter(i int) *uint64 {
	return (*uint64)(unsafe.Pointer(&c.stats[statsOffCounter+8*i]))
}

// Defunct closes the channel for a violation (or shutdown): the app is told
// (stats state word, an event and a signal), every buffer goes back and the
// channel's memory is unmapped and closed on the nexus side. The nexus and
// other channels are untouched. It returns the resulting *DefunctError; a
// second call returns the first error.
func (c *Channel) Defunct(reason DefunctReason, detail string) error {
	if c.err != nil {
		return c.err
	}
	c.err = &DefunctError{Channel: c.name, Reason: reason, Detail: detail}
	c.publish()
	atomic.StoreUint32(c.word(statsOffReason), uint32(reason))
	atomic.StoreUint32(c.word(statsOffState), 1)
	c.event.Enqueue([]ring.Slot{Event{Kind: EventDefunct, Arg: uint32(reason)}.slot()})
	c.kickA.Signal()
	c.release()
	return c.err
}

// release frees everything the nexus side holds. Safe on a half-built channel.
func (c *Channel) release() {
	if c.pool != nil {
		c.pool.Close()
	}
	for i := range c.maps {
		c.maps[i].Unmap()
		c.maps[i] = nil
		if c.regions[i] != nil {
			c.regions[i].Close()
		}
	}
	c.adv, c.stats = nil, nil
	if c.closed.CompareAndSwap(false, true) {
		if c.kickN != nil {
			c.kickN.Close()
		}
		if c.kickA != nil {
			c.kickA.Close()
		}
	}
}

// Close shuts the channel down (the app sees ReasonClosed). Safe to call
// more than once; owner goroutine only.
func (c *Channel) Close() error {
	c.Defunct(ReasonClosed, "")
	return nil
}

// Share returns the descriptor and duplicates of the channel's file
// descriptors for an app (see Descriptor for their order). The caller owns
// the duplicates: pass them to Attach, or send them and close them.
func (c *Channel) Share() (Descriptor, []int, error) {
	if c.err != nil {
		return Descriptor{}, nil, c.err
	}
	bufs, umeta, _ := c.pool.Regions()
	src := [numFDs]int{bufs.FD(), umeta.FD(), c.regions[0].FD(), c.regions[1].FD(), c.regions[2].FD(), c.kickN.FD(), c.kickA.FD()}
	fds := make([]int, 0, numFDs)
	for i, fd := range src {
		dup := shm.Dup
		if i == fdAdvisory || i == fdStats {
			// Tables the app only reads: a read-only open, which no
			// mapping or reopen can make writable.
			r := c.regions[i-fdRings]
			dup = func(int) (int, error) { return r.ReadOnlyFD() }
		}
		d, err := dup(fd)
		if err != nil {
			for _, f := range fds {
				shm.CloseFD(f)
			}
			return Descriptor{}, nil, fmt.Errorf("share channel %q: %w", c.name, err)
		}
		fds = append(fds, d)
	}
	return c.desc, fds, nil
}

// AttachLocal attaches an app end inside this process, through the same
// shared memory an app in another process would map.
func (c *Channel) AttachLocal() (*App, error) {
	d, fds, err := c.Share()
	if err != nil {
		return nil, err
	}
	return Attach(d, fds)
}

// Kick wakes the nexus worker blocked in Wait. Safe from any goroutine.
func (c *Channel) Kick() {
	if !c.closed.Load() {
		c.kickN.Signal()
	}
}

// Wait blocks the nexus worker until the app has work for it (TX or free
// ring filled, alloc ring drained) or timeout passes (0: no limit). It arms
// the need-wakeup flags and re-checks first, so no signal is lost and a busy
// app makes no system call.
func (c *Channel) Wait(timeout time.Duration) error {
	if c.err != nil {
		return c.err
	}
	c.tx.SetNeedWakeup(true)
	c.free.SetNeedWakeup(true)
	defer c.tx.SetNeedWakeup(false)
	defer c.free.SetNeedWakeup(false)
	if n, _ := c.tx.Peek(1); n > 0 {
		return nil
	}
	if n, _ := c.free.Peek(1); n > 0 {
		return nil
	}
	// A low alloc ring is work only if the pool can refill it; otherwise
	// (pool exhausted, app holding everything) sleep rather than spin.
	if err := c.alloc.Refresh(); err == nil && c.alloc.Pending() < c.ws/2 && c.pool.CanAlloc() {
		return nil
	}
	_, err := c.kickN.Wait(timeout)
	if err != nil && !errors.Is(err, shm.ErrTimeout) {
		return fmt.Errorf("channel %q wait: %w", c.name, err)
	}
	c.c.Wakeups++
	return nil
}
