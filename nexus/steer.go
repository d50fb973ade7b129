package nexus

import (
	"cmp"
	"errors"
	"fmt"

	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/packet"
)

// steerer returns the link as a netif.FlowSteerer, or nil if the device
// hands every packet over (TUN, memif).
func steerer(l netif.Link) netif.FlowSteerer {
	s, _ := l.(netif.FlowSteerer)
	return s
}

// kernelKeeps reports whether a SteerFlow error only says the kernel keeps
// seeing the flow (a link opened without steering, a key the device cannot
// steer): the flow works as on a device without steering.
func kernelKeeps(err error) bool {
	return errors.Is(err, netif.ErrSteeringOff) || errors.Is(err, netif.ErrNotSteerable)
}

// Steering map entries. The link's programs look a frame's 5-tuple up,
// then its listener shapes (local address and port, then the port alone),
// as the flow table does; so a steered listener's entry already sends its
// accepted connections (and a bound UDP port's replies) to user space, and
// a connected flow under a steered listener gets no entry of its own. The
// map then holds the listeners and the outgoing connections only: a nexus
// with a million accepted connections needs a few entries, not a million,
// and the map's capacity (steer.DefaultMaxFlows) bounds outgoing flows
// alone. When a listener goes while connections it covered live on (an app
// closes its listener and keeps its connections), each gets its own entry
// then, before the listener's entry goes.
//
// n.steered holds the keys with an entry of their own; a registered
// connected flow that is not in it is covered while its listener is.

// isListener reports whether key has a listener's shape (no remote end).
func isListener(key packet.Key) bool { return key.RemotePort == 0 && key.Remote == [16]byte{} }

// coveredBy returns the steered listener key covering key, if any.
func (n *Nexus) coveredBy(key packet.Key) (packet.Key, bool) {
	if isListener(key) {
		return packet.Key{}, false
	}
	for _, l := range [...]packet.Key{key.Listener3(), key.Listener2()} {
		if _, ok := n.steered[l]; ok {
			return l, true
		}
	}
	return packet.Key{}, false
}

// steerFlow steers a flow the switch just registered to user space, before
// any of its packets move. Worker only.
func (n *Nexus) steerFlow(key packet.Key) error {
	if n.steer == nil {
		return nil
	}
	if _, ok := n.coveredBy(key); ok {
		n.covered++
		return nil
	}
	err := n.steer.SteerFlow(key)
	if err == nil {
		n.steered[key] = struct{}{}
		return nil
	}
	if kernelKeeps(err) {
		return nil
	}
	if errors.Is(err, netif.ErrSteerFull) {
		// A limit like the flow table's: refused, counted and logged
		// as one (registerFlow; the app's errors.Is finds
		// flow.ErrTooManyFlows, its peer gets a RST).
		err = fmt.Errorf("%w: %w (raise the link's steering map: steer.Options.MaxFlows)", flow.ErrTooManyFlows, err)
		n.steerFull++
	}
	return fmt.Errorf("steer %v to user space: %w", key, err)
}

// unsteerFlow gives a torn-down flow's packets back to the kernel: its own
// entry goes; a listener's goes after the connections it covered got
// theirs. A link closed already has dropped its map: nothing is left to
// undo. Worker only; the flow is out of its port's flows already.
func (n *Nexus) unsteerFlow(key packet.Key) error {
	if n.steer == nil {
		return nil
	}
	if _, ok := n.steered[key]; !ok {
		if _, ok := n.coveredBy(key); ok && n.covered > 0 {
			n.covered--
		}
		if _, ok := n.maybeOwn[key]; ok {
			delete(n.maybeOwn, key)
			return n.unsteer(key) // an entry it may have had (adoptSteering)
		}
		return nil
	}
	if isListener(key) {
		n.uncover(key)
	}
	delete(n.steered, key)
	return n.unsteer(key)
}

// unsteer removes key's entry from the link's steering map, if there.
func (n *Nexus) unsteer(key packet.Key) error {
	err := n.steer.UnsteerFlow(key)
	if err == nil || kernelKeeps(err) || errors.Is(err, netif.ErrClosed) {
		return nil
	}
	return fmt.Errorf("unsteer %v: %w", key, err)
}

// adoptSteering takes the steering of an adopted port's flows over,
// without a system call: the map came with the link, as the old nexus
// left it. Its listeners and the connected flows no listener covers have
// entries of their own. A connected flow a listener covers may have one
// too (it was registered before its listener), which this nexus cannot
// tell without asking the map: it counts as covered and is noted in
// maybeOwn, so that its teardown removes an entry it may have. Listeners
// first, so that their connections count as covered. Worker only.
func (n *Nexus) adoptSteering(p *port) {
	if n.steer == nil {
		return
	}
	for _, listeners := range []bool{true, false} {
		for k := range p.flows {
			if isListener(k) != listeners {
				continue
			}
			if _, ok := n.coveredBy(k); ok {
				n.covered++
				n.maybeOwn[k] = struct{}{}
				continue
			}
			n.steered[k] = struct{}{}
		}
	}
}

// uncover gives every connected flow that listener l covers an entry of
// its own: l's entry is about to go. (No other listener covers them: the
// flow table refuses listeners that overlap.)
// It walks every port's flows, once per listener teardown. A flow the map
// has no room for is logged: its packets reach the kernel from now on,
// which resets its connection.
func (n *Nexus) uncover(l packet.Key) {
	var failed int
	var first error
	for _, q := range n.order {
		for k := range q.flows {
			if by, ok := n.coveredBy(k); !ok || by != l {
				continue
			}
			n.covered--
			delete(n.maybeOwn, k)
			if err := n.steer.SteerFlow(k); err != nil {
				failed++
				first = cmp.Or(first, err)
				continue
			}
			n.steered[k] = struct{}{}
		}
	}
	if failed > 0 {
		n.log.Warn("nexus: listener gone: connections it steered could not get their own steering entry; the kernel sees their packets now and resets them",
			"listener", l, "connections", failed, "err", first)
	}
}

// portHint adds what to do to a Register error that names a kernel socket
// (Options.Switch.PortTaken).
func portHint(err error) error {
	if errors.Is(err, flow.ErrKernelPort) {
		return fmt.Errorf("%w; stop that kernel socket or use another port", err)
	}
	return err
}
