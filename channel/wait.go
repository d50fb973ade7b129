package channel

import (
	"errors"
	"fmt"
	"time"

	"github.com/skylane/skylane/internal/shm"
	"github.com/skylane/skylane/ring"
)

// WaitSet names the rings an app waits on (WaitFor's what) and those found
// ready (its result).
type WaitSet uint8

const (
	// WaitRX: packets on the RX ring.
	WaitRX WaitSet = 1 << iota
	// WaitAlloc: empty buffers on the alloc ring. The nexus keeps the alloc
	// ring topped up, so an app that is not short of buffers should not wait
	// for this: the ring is never empty and the wait would return at once.
	WaitAlloc
	// WaitEvents: events on the event ring (advisories, segment changes).
	WaitEvents
	// WaitInterrupted, in a result only: Interrupt ended the wait.
	WaitInterrupted
	// WaitTxRoom: room on the TX ring, for an app that found it full. The
	// nexus signals it after it took packets, and only if the app asked.
	WaitTxRoom
	// WaitFreeRoom: room on the free ring, for an app that found it full.
	WaitFreeRoom

	// WaitAll is what Wait waits for. It leaves out the room bits: an
	// app with nothing to send has room, and would not sleep.
	WaitAll = WaitRX | WaitAlloc | WaitEvents

	waitable = WaitAll | WaitTxRoom | WaitFreeRoom
)

// Wait blocks until the nexus signals (RX packets, alloc buffers, events),
// Interrupt, or timeout passes (0: no limit); it is WaitFor(WaitAll). An app
// that keeps buffers on its alloc ring (every idle app does: the nexus hands
// them ahead) returns from it at once: use WaitFor(WaitRX|WaitEvents).
func (a *App) Wait(timeout time.Duration) error {
	_, err := a.WaitFor(WaitAll, timeout)
	return err
}

// WaitFor blocks until one of the rings in what has entries (or, for
// WaitTxRoom and WaitFreeRoom, room), Interrupt is called, or timeout
// passes (0: no limit), and returns the rings it found ready, with
// WaitInterrupted if Interrupt ended it; nothing on timeout. It returns the
// *DefunctError once the nexus closed the channel.
//
// It arms the wake-up flags of those rings only (FlagNeedWakeup on the
// rings it consumes, FlagNeedRoom on those it produces) and re-checks them
// before it sleeps, so no signal is lost, the nexus signals only for what
// the app waits for, and a busy pair makes no system call. A wake-up that
// finds none of them ready (a signal meant for an earlier wait) sends it
// back to sleep rather than returning.
//
// It reads the RX and event rings as their consumer, but the alloc, TX and
// free rings through their shared index words only, changing nothing: an
// app whose sending side runs on other goroutines (under a lock of its
// own, as one owner) may wait for room or buffers while they work.
func (a *App) WaitFor(what WaitSet, timeout time.Duration) (WaitSet, error) {
	if err := a.Err(); err != nil {
		return 0, err
	}
	what &= waitable
	a.arm(what, true)
	defer a.arm(what, false)
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	for {
		ready, err := a.ready(what)
		if err != nil {
			return 0, a.fail(err)
		}
		if a.interrupted.Swap(false) {
			ready |= WaitInterrupted
		}
		if ready != 0 {
			return ready, nil
		}
		var left time.Duration
		if timeout > 0 {
			if left = time.Until(deadline); left <= 0 {
				return 0, nil
			}
		}
		if _, err := a.kickA.Wait(left); err != nil {
			if e := a.Err(); e != nil {
				return 0, e
			}
			if errors.Is(err, shm.ErrTimeout) {
				return 0, nil
			}
			return 0, fmt.Errorf("channel %q wait: %w", a.desc.Name, err)
		}
		if err := a.Err(); err != nil {
			return 0, err
		}
	}
}

// arm sets or clears the wake-up flags of the rings in what.
func (a *App) arm(what WaitSet, on bool) {
	for i, c := range a.waitRings() {
		if what&(1<<i) != 0 {
			c.SetNeedWakeup(on)
		}
	}
	if what&WaitTxRoom != 0 {
		a.tx.SetNeedRoom(on)
	}
	if what&WaitFreeRoom != 0 {
		a.free.SetNeedRoom(on)
	}
}

// ready returns the rings in what that have entries (or room) now. The
// alloc, TX and free rings are looked at through their shared words only
// (see WaitFor).
func (a *App) ready(what WaitSet) (WaitSet, error) {
	var ready WaitSet
	for _, r := range []struct {
		bit WaitSet
		c   *ring.Consumer
	}{{WaitRX, a.rx}, {WaitEvents, a.event}} {
		if what&r.bit == 0 {
			continue
		}
		n, err := r.c.Peek(1)
		if err != nil {
			return 0, err
		}
		if n > 0 {
			ready |= r.bit
		}
	}
	if what&WaitAlloc != 0 && a.alloc.HasEntries() {
		ready |= WaitAlloc
	}
	if what&WaitTxRoom != 0 && a.tx.HasRoom() {
		ready |= WaitTxRoom
	}
	if what&WaitFreeRoom != 0 && a.free.HasRoom() {
		ready |= WaitFreeRoom
	}
	return ready, nil
}

// waitRings returns the consumers in WaitSet bit order.
func (a *App) waitRings() [3]*ring.Consumer { return [3]*ring.Consumer{a.rx, a.alloc, a.event} }

// Interrupt makes the owner's Wait or WaitFor in progress return with
// WaitInterrupted, or the next one if none is in progress: an
// interruption is never lost, and several before a wait end one wait. Safe
// from any goroutine until Close; it makes one system call.
func (a *App) Interrupt() {
	if a.closed.Load() {
		return
	}
	a.interrupted.Store(true)
	a.kickA.Signal()
}
