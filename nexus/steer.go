package nexus

import (
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

// steerFlow steers a flow the switch just registered to user space, before
// any of its packets move. Worker only.
func (n *Nexus) steerFlow(key packet.Key) error {
	if n.steer == nil {
		return nil
	}
	if err := n.steer.SteerFlow(key); err != nil && !kernelKeeps(err) {
		return fmt.Errorf("steer %v to user space: %w", key, err)
	}
	return nil
}

// unsteerFlow gives a torn-down flow's packets back to the kernel. A link
// closed already has dropped its map: nothing is left to undo. Worker only.
func (n *Nexus) unsteerFlow(key packet.Key) error {
	if n.steer == nil {
		return nil
	}
	err := n.steer.UnsteerFlow(key)
	if err == nil || kernelKeeps(err) || errors.Is(err, netif.ErrClosed) {
		return nil
	}
	return fmt.Errorf("unsteer %v: %w", key, err)
}

// portHint adds what to do to a Register error that names a kernel socket
// (Options.Switch.PortTaken).
func portHint(err error) error {
	if errors.Is(err, flow.ErrKernelPort) {
		return fmt.Errorf("%w; stop that kernel socket or use another port", err)
	}
	return err
}
