package nexus

import (
	"github.com/skylane/skylane/capture"
	"github.com/skylane/skylane/packet"
)

// AddCapture makes the datapath copy the frames r's filter takes into r
// (flowswitch.Switch.AddCapture) until RemoveCapture; the worker is r's
// only writer meanwhile and never waits for r's reader. Safe from any
// goroutine.
func (n *Nexus) AddCapture(r *capture.Ring) { n.sw.AddCapture(r) }

// RemoveCapture stops copying into r: once it returns, the worker no
// longer writes r.
func (n *Nexus) RemoveCapture(r *capture.Ring) { n.sw.RemoveCapture(r) }

// LinkType returns the device's link type: the framing of the frames
// captured at the device and kernel points.
func (n *Nexus) LinkType() packet.LinkType { return n.sw.LinkType() }
