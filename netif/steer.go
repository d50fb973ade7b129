package netif

import (
	"errors"

	"github.com/skylane/skylane/packet"
)

// FlowSteerer is implemented by a Link whose device hands user space only
// the flows it registered and leaves every other flow to the kernel
// (AF_XDP, AF_PACKET with the TC program; package netif/steer holds the
// BPF side). It lives here, in the core, so that the nexus learns of the
// capability by a type assertion without importing a driver:
//
//	if s, ok := link.(netif.FlowSteerer); ok {
//		err = s.SteerFlow(key)   // when the flow is registered, before data moves
//		...
//		err = s.UnsteerFlow(key) // when the flow is torn down
//	}
//
// key is the flow table's key: a connected 5-tuple, or a listener key
// (packet.Key.Listener3, Listener2). SteerFlow returns an error wrapping
// ErrNotSteerable for a key the device cannot steer (not TCP or UDP), and
// ErrSteeringOff as well when the link does no steering at all: such flows
// keep going to the kernel, and the nexus accepts that. Once the link or
// its flow map is closed, both return an error wrapping ErrClosed. Both
// methods may be called from any goroutine.
type FlowSteerer interface {
	SteerFlow(key packet.Key) error
	UnsteerFlow(key packet.Key) error
}

// Errors a FlowSteerer returns besides ErrClosed.
var (
	// ErrNotSteerable: the flow's protocol or version is not one the
	// device's steering parses; the kernel keeps seeing the flow.
	ErrNotSteerable = errors.New("flow cannot be steered")
	// ErrSteeringOff: the link can steer but was opened without steering
	// (e.g. AF_PACKET without its Steer option). SteerFlow wraps it
	// together with ErrNotSteerable: the kernel keeps seeing every flow.
	ErrSteeringOff = errors.New("steering is off")
	// ErrSteerFull: the device's steering map holds as many flows as it
	// may. The nexus refuses the flow as one past its flow limits.
	ErrSteerFull = errors.New("steering map full")
)
