package control

import (
	"fmt"
	"net/netip"
)

// OpCapture starts a packet capture (skylane capture): the request's
// Capture says what to capture; the reply says the device's link type and
// the snap length; then the nexus sends capture batches (binary messages
// of up to CaptureMaxBatch bytes, package capture's wire format, one at
// least every CaptureHeartbeat) until the client closes the session. The
// policy must allow the session to observe (all frames) or to observe its
// own (frames of its own user's apps only). It needs no open.
const OpCapture = "capture"

// CaptureHeartbeatMillis is the longest the nexus stays silent during a
// capture: an empty batch carries the counters and finds a client gone.
const CaptureHeartbeatMillis = 250

// CaptureMaxBatch bounds one capture batch message.
const CaptureMaxBatch = 128 << 10

// Capture request bounds: names and lists an operator types.
const (
	maxCaptureList = 32
	maxCaptureName = 64
	maxSnaplen     = 65535
	maxSlots       = 1 << 16
)

// CaptureRequest is OpCapture's filter and sizes: the fields of package
// capture's Filter and Options, in the contract's own types (an app links
// no capture code). Every set field must match.
type CaptureRequest struct {
	Points  []string   `json:"points,omitempty"`  // capture point names: device-rx, ..., drop (both drop points)
	Apps    []string   `json:"apps,omitempty"`    // app names; "-" for frames of no app
	Proto   uint8      `json:"proto,omitempty"`   // IP protocol, 0 any
	Host    netip.Addr `json:"host,omitzero"`     // either end's address
	Port    uint16     `json:"port,omitempty"`    // either end's TCP or UDP port
	Reasons []string   `json:"reasons,omitempty"` // drop reasons: drops with these only
	Snaplen int        `json:"snaplen,omitempty"` // bytes copied per frame, 0: the nexus's default
	Slots   int        `json:"slots,omitempty"`   // the capture ring's frames, 0: the nexus's default
}

// CaptureReply is the OK reply's capture part.
type CaptureReply struct {
	LinkType uint8    `json:"link_type"` // the device's packet.LinkType: the framing at the device, kernel and drop-rx points
	Snaplen  int      `json:"snaplen"`
	Apps     []string `json:"apps,omitempty"` // for a capture of one's own apps: the channels it covers
}

func (c *CaptureRequest) check() error {
	if c.Snaplen < 0 || c.Snaplen > maxSnaplen {
		return fmt.Errorf("%w: snaplen %d not in 0..%d", ErrBadRequest, c.Snaplen, maxSnaplen)
	}
	if c.Slots < 0 || c.Slots > maxSlots {
		return fmt.Errorf("%w: %d slots not in 0..%d", ErrBadRequest, c.Slots, maxSlots)
	}
	for _, l := range [][]string{c.Points, c.Apps, c.Reasons} {
		if len(l) > maxCaptureList {
			return fmt.Errorf("%w: a capture filter list of %d names, at most %d", ErrBadRequest, len(l), maxCaptureList)
		}
		for _, s := range l {
			if len(s) == 0 || len(s) > maxCaptureName {
				return fmt.Errorf("%w: a capture filter name of %d bytes, want 1..%d", ErrBadRequest, len(s), maxCaptureName)
			}
		}
	}
	return nil
}
