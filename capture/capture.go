// Package capture is the nexus's packet capture (skylane capture): the
// capture points of the flowswitch's datapath, a bounded ring the
// datapath's worker copies matching frames into, the filters it applies
// before the copy, the records' wire format on the control socket, and a
// pcapng writer (one interface per capture point, the direction in
// epb_flags, the app and the drop reason in a packet comment).
//
// Invariants, each checked by the tests:
//   - The writer side of a Ring (the worker) never blocks and never
//     allocates: a full ring drops the frame and counts it (Ring.Drops).
//   - At most Snaplen bytes of a frame are copied; Record.Len keeps its
//     length on the wire.
//   - A frame is copied only if the Filter matches it.
//   - DecodeBatch and DecodeRequest never panic on any input.
package capture

import (
	"fmt"
	"strings"
)

// Point is a capture point of the datapath. rx and tx are the device's,
// the app's and the kernel's own view, as their counters say: app-rx is
// what an app's RX ring receives from the switch, kernel-tx what the
// kernel sends through it. Inbound says the switch's view.
type Point uint8

const (
	DeviceRx Point = iota // read from the device link
	DeviceTx              // handed to the device link (or its transmit queue, the AQM)
	AppRx                 // delivered to an app's RX ring
	AppTx                 // sent by an app on its TX ring, before the checks
	KernelRx              // handed to the kernel's stack (the host link)
	KernelTx              // sent by the kernel's stack (read from the host link)
	DropRx                // a frame from the device the switch dropped, with its reason
	DropTx                // a packet from an app the transmit checks refused, with its reason
	NumPoints
)

var pointNames = [NumPoints]string{"device-rx", "device-tx", "app-rx", "app-tx", "kernel-rx", "kernel-tx", "drop-rx", "drop-tx"}

func (p Point) String() string {
	if p < NumPoints {
		return pointNames[p]
	}
	return fmt.Sprintf("point(%d)", uint8(p))
}

// Inbound reports whether frames at p enter the switch (received by the
// nexus: from the device, an app or the kernel; drops were received too).
func (p Point) Inbound() bool {
	switch p {
	case DeviceTx, AppRx, KernelRx:
		return false
	}
	return true
}

// Points is a set of capture points, bit p for Point p; 0 means all.
type Points uint8

// Has reports whether s holds p (an empty set holds every point).
func (s Points) Has(p Point) bool { return s == 0 || s&(1<<p) != 0 }

// ParsePoints parses a comma-separated list of point names; "drop" names
// both drop points, "device", "app" and "kernel" both directions.
func ParsePoints(list string) (Points, error) {
	var s Points
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		found := false
		for p := Point(0); p < NumPoints; p++ {
			if n := p.String(); n == name || strings.HasPrefix(n, name+"-") {
				s |= 1 << p
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("capture: unknown capture point %q: want one of %s, drop, device, app, kernel",
				name, strings.Join(pointNames[:], ", "))
		}
	}
	return s, nil
}
