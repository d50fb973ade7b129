package client

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/skylane/skylane/stack"
)

// Re-attach retries: the first soon after the nexus went (a supervisor
// restarts one within a second or so), then doubling up to a second, so
// that a stack waiting for a nexus costs a dial a second.
const (
	reattachMin = 50 * time.Millisecond
	reattachMax = time.Second
)

// attachment is one port of a Stack with its endpoint and the netstack on
// it. It serves until teardown, which happens once: when the nexus goes
// (the watcher) or on Stack.Close.
type attachment struct {
	port     Port            // immutable
	ep       *stack.Endpoint // immutable
	ns       *gstack.Stack   // immutable
	nic      tcpip.NICID     // immutable
	addrs    []netip.Addr    // immutable
	portGone <-chan struct{} // immutable; nil: the port does not go by itself (in-process)

	gone     chan struct{} // closed when teardown begins
	err      error         // why it went; written before gone is closed
	replaced chan struct{} // closed once a newer attachment has taken over the listeners
	once     sync.Once
	closeErr error // the port's Close error; written in once
}

// Err returns nil while a serves, then why it went: ErrClosed, or an error
// wrapping ErrNexusGone.
func (a *attachment) Err() error {
	select {
	case <-a.gone:
		return a.err
	default:
		return nil
	}
}

// teardown marks a gone with why, so that every error from here on says
// it, then aborts its connections, stops the endpoint and netstack's
// goroutines and closes the port (which unmaps the channel and closes its
// descriptors). Only the first call acts; the others wait for it.
func (a *attachment) teardown(why error) error {
	a.once.Do(func() {
		a.err = why
		close(a.gone)
		a.ns.Close() // aborts: resets still leave if the nexus is there
		a.ep.Stop()  // before ns.Wait, which holds netstack's lock while it stops the NIC
		a.ns.Wait()
		a.closeErr = a.port.Close()
	})
	return a.closeErr
}

// wrap replaces the cause of a socket error by why a is gone, if it is:
// a blocked call that the teardown woke says ErrNexusGone, not "aborted".
func (a *attachment) wrap(err error) error {
	if err == nil {
		return nil
	}
	why := a.Err()
	if why == nil {
		return err
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		e := *oe
		e.Err = why
		return &e
	}
	return why
}

// relistener is a listening socket that moves to the attachment that
// replaced its own: a TCP listener, a re-attaching Stack's ListenPacket
// socket. relisten binds it on a (its port again); it keeps the error if
// that fails, for its next Accept or ReadFrom.
type relistener interface {
	relisten(a *attachment)
}

// track adds r, listening on a, to the listeners a re-attach moves; if a
// went (or the Stack closed) meanwhile, it returns why and r must close.
func (s *Stack) track(r relistener, a *attachment) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if err := a.Err(); err != nil {
		return err
	}
	s.listeners[r] = struct{}{}
	return nil
}

// untrack forgets a closed listener.
func (s *Stack) untrack(r relistener) {
	s.mu.Lock()
	delete(s.listeners, r)
	s.mu.Unlock()
}

// watch is the Stack's watcher goroutine, started by New when the port can
// go by itself: when the nexus goes it tears the attachment down and, on a
// re-attaching Stack, attaches again. Close stops it (quit).
func (s *Stack) watch(a *attachment) {
	defer s.watcher.Done()
	for {
		select {
		case <-a.portGone:
		case <-s.quit:
			return
		}
		why := fmt.Errorf("client: %w", ErrNexusGone)
		if e, ok := a.port.(interface{ Err() error }); ok && errors.Is(e.Err(), ErrNexusGone) {
			why = e.Err()
		}
		a.teardown(why)
		if s.notify != nil {
			s.notify(why)
		}
		if !s.reattach {
			return
		}
		if a = s.reattachAfter(a); a == nil {
			return
		}
		if s.notify != nil {
			s.notify(nil)
		}
		if a.portGone == nil {
			return
		}
	}
}

// reattachAfter opens a port again, retrying until a nexus serves or the
// Stack is closed (nil), makes it current, moves the listeners to it and
// then wakes their Accepts waiting on old.
func (s *Stack) reattachAfter(old *attachment) *attachment {
	wait := reattachMin
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return nil
		case <-t.C:
		}
		a, err := s.attach()
		if err != nil {
			wait = min(2*wait, reattachMax)
			t.Reset(wait)
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			a.teardown(ErrClosed)
			return nil
		}
		s.cur = a
		ls := make([]relistener, 0, len(s.listeners))
		for l := range s.listeners {
			ls = append(ls, l)
		}
		s.mu.Unlock()
		for _, l := range ls {
			l.relisten(a)
		}
		close(old.replaced)
		return a
	}
}
