package nexus

import (
	"sync"

	"github.com/skylane/skylane/netif"
)

// linkWaiter lets the parked worker sleep in a link's Wait without sharing
// the link's reader role: the role is the worker's while held is set, and
// the waiter goroutine's from arm until it answers on done. A netif.Link
// allows one reader goroutine at a time (Read, Wait), and this hand-off
// keeps it so.
//
// A link that is a netif.Notifier with a frames channel (an unpaced memif
// wire) needs no waiter goroutine: the worker keeps the reader role and
// selects on the link's channels itself, which saves the hand-off from the
// waiter to the worker on every wake-up (two per round trip between two
// nexuses on a memif wire).
type linkWaiter struct {
	link netif.Link    // immutable
	held bool          // worker-owned: the worker may Read the link; always, for a direct link
	arm  chan struct{} // 1-buffered; closed to stop the waiter
	done chan error    // 1-buffered: Wait returned (frames, or the link's error)
	// frames and closed are the link's netif.Notifier channels; frames is
	// nil unless the worker selects on them (a direct link). Immutable.
	frames, closed <-chan struct{}
}

func newLinkWaiter(l netif.Link, wg *sync.WaitGroup) *linkWaiter {
	w := &linkWaiter{link: l, held: true, arm: make(chan struct{}, 1), done: make(chan error, 1)}
	if nt, ok := l.(netif.Notifier); ok {
		w.frames, w.closed = nt.Ready()
	}
	if w.frames != nil {
		return w
	}
	wg.Add(1)
	go w.run(wg)
	return w
}

// drain drops a direct link's stale frames signal; call it before the
// worker's last Read ahead of its select (netif.Notifier).
func (w *linkWaiter) drain() {
	if w == nil || w.frames == nil {
		return
	}
	select {
	case <-w.frames:
	default:
	}
}

// ready returns what the parked worker selects on for a direct link:
// frames queued, the link closed; nil channels (never ready) otherwise.
func (w *linkWaiter) ready() (frames, closed <-chan struct{}) {
	if w == nil || w.frames == nil {
		return nil, nil
	}
	return w.frames, w.closed
}

// run blocks in Link.Wait each time the worker arms it and hands the link
// back when Wait returns. After an error (the link closed) it answers every
// later arm at once, until the worker closes arm.
func (w *linkWaiter) run(wg *sync.WaitGroup) {
	defer wg.Done()
	var err error
	for range w.arm {
		if err == nil {
			err = w.link.Wait(-1)
		}
		w.done <- err
	}
}

// give hands the link to the waiter, if the worker holds it.
func (w *linkWaiter) give() {
	if w != nil && w.held && w.frames == nil {
		w.held = false
		w.arm <- struct{}{}
	}
}

// doneCh is what the parked worker selects on: nil (never ready) while the
// worker holds the link or there is no such link.
func (w *linkWaiter) doneCh() <-chan error {
	if w == nil || w.held {
		return nil
	}
	return w.done
}

// poll takes the link back if the waiter answered, without blocking, and
// returns the waiter's error.
func (w *linkWaiter) poll() error {
	if w == nil || w.held {
		return nil
	}
	select {
	case err := <-w.done:
		w.held = true
		return err
	default:
		return nil
	}
}

// stop ends the waiter goroutine; the link must be closed first, so that a
// Wait in progress returns.
func (w *linkWaiter) stop() {
	if w != nil && w.frames == nil {
		close(w.arm)
	}
}
