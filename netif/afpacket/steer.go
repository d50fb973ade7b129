package afpacket

import (
	"errors"
	"fmt"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/steer"
	"github.com/skylane/skylane/packet"
)

// ErrNoSteering is wrapped, together with netif.ErrNotSteerable, by
// SteerFlow and Counters on a Link opened without Options.Steer: the kernel
// stack keeps receiving every flow the Link reads. It wraps
// netif.ErrSteeringOff.
var ErrNoSteering = fmt.Errorf("%w (open the link with Options.Steer)", netif.ErrSteeringOff)

var _ netif.FlowSteerer = (*Link)(nil)

// setupSteer makes (or takes) the flow map and attaches the TC ingress
// program to the interface. Called by New with the calling thread in the
// interface's namespace; on error, release undoes what was done.
func (l *Link) setupSteer(o *Options) error {
	l.flows = o.Flows
	if l.flows == nil {
		f, err := steer.NewFlows(steer.Options{})
		if err != nil {
			return fmt.Errorf("afpacket %s: steering: %w", l.name, err)
		}
		l.flows, l.ownFlows = f, true
	}
	tc, err := steer.AttachTC(l.flows, l.ifindex)
	if err != nil {
		return fmt.Errorf("afpacket %s: steering: %w", l.name, err)
	}
	l.tc = tc
	return nil
}

// releaseSteer detaches the program and closes an owned map; idempotent.
// The program goes first, so the interface stops consulting the map before
// the map goes. A shared map (Options.Flows) stays open, with whatever keys
// the nexus left in it: it is the nexus's to clear.
func (l *Link) releaseSteer() error {
	var errs []error
	if l.tc != nil {
		errs = append(errs, l.tc.Close())
		l.tc = nil
	}
	if l.ownFlows && l.flows != nil {
		errs = append(errs, l.flows.Close())
	}
	l.flows = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("afpacket %s: release steering: %w", l.name, err)
	}
	return nil
}

// SteerFlow implements netif.FlowSteerer.SteerFlow: from now on the
// kernel stack drops the flow's frames at TC ingress, after the Link's tap
// has seen them, so only user space answers them. It returns an error
// wrapping ErrNoSteering and netif.ErrNotSteerable when the link was opened
// without Options.Steer, netif.ErrNotSteerable for a key that is not TCP or
// UDP, steer.ErrFull when the map is full, netif.ErrClosed after Close.
func (l *Link) SteerFlow(k packet.Key) error {
	if !l.lock() {
		return netif.ErrClosed
	}
	defer l.mu.RUnlock() // keeps Close from closing the map under Add
	if l.tc == nil {
		return fmt.Errorf("afpacket %s: steer %v: %w: %w", l.name, k, ErrNoSteering, netif.ErrNotSteerable)
	}
	if err := l.flows.Add(k); err != nil {
		return fmt.Errorf("afpacket %s: %w", l.name, err)
	}
	return nil
}

// UnsteerFlow implements netif.FlowSteerer.UnsteerFlow: the kernel stack
// gets the flow's frames again. Removing a key that is not steered is not
// an error, nor is any removal on a link without steering (nothing is
// steered there), so teardown paths may repeat it. After Close it returns
// netif.ErrClosed: a shared map outlives the link, and is left alone.
func (l *Link) UnsteerFlow(k packet.Key) error {
	if !l.lock() {
		return netif.ErrClosed
	}
	defer l.mu.RUnlock()
	if l.tc == nil {
		return nil
	}
	if err := l.flows.Remove(k); err != nil {
		return fmt.Errorf("afpacket %s: %w", l.name, err)
	}
	return nil
}

// Counters returns the TC program's counters: Hit counts the frames it kept
// from the kernel stack. Without Options.Steer it returns an error wrapping
// ErrNoSteering; after Close, netif.ErrClosed.
func (l *Link) Counters() (steer.Counters, error) {
	if !l.lock() {
		return steer.Counters{}, netif.ErrClosed
	}
	defer l.mu.RUnlock()
	if l.tc == nil {
		return steer.Counters{}, fmt.Errorf("afpacket %s: counters: %w: %w", l.name, ErrNoSteering, netif.ErrNotSteerable)
	}
	return l.tc.Counters()
}
