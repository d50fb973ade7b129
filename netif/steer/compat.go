package steer

import "github.com/skylane/skylane/netif"

// Old names of netif's steering interface and errors, kept only while
// netif/afxdp still uses them. Deprecated: use netif.FlowSteerer,
// netif.ErrNotSteerable and netif.ErrSteeringOff; delete this file once
// nothing refers to these.
type FlowSteerer = netif.FlowSteerer

// Deprecated: see FlowSteerer.
var (
	ErrUnsupported = netif.ErrNotSteerable
	ErrSteeringOff = netif.ErrSteeringOff
)
