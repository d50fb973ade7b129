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
type linkWaiter struct {
	link netif.Link    // immutable
	held bool          // worker-owned: the worker may Read the link
	arm  chan struct{} // 1-buffered; closed to stop the waiter
	done chan error    // 1-buffered: Wait returned (frames, or the link's error)
}

func newLinkWaiter(l netif.Link, wg *sync.WaitGroup) *linkWaiter {
	w := &linkWaiter{link: l, held: true, arm: make(chan struct{}, 1), done: make(chan error, 1)}
	wg.Add(1)
	go w.run(wg)
	return w
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
	if w != nil && w.held {
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
	if w != nil {
		close(w.arm)
	}
}
