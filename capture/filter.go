package capture

import (
	"net/netip"
	"strings"

	"github.com/skylane/skylane/packet"
)

// Filter says which frames a capture takes; the zero Filter takes all.
// The datapath's worker applies it before the copy. Every set field must
// match.
type Filter struct {
	// Points are the capture points; 0 means all.
	Points Points `json:"points,omitempty"`
	// Apps are app names: a frame at an app point, or a transmit drop,
	// matches if its port's channel is one of them ("web" matches the
	// channels "web" and "web-3", the nexus naming each channel after its
	// app and a number). Frames at the device and kernel points, and
	// receive drops, belong to no app: with Apps set they match only if
	// Apps holds "-".
	Apps []string `json:"apps,omitempty"`
	// Proto is the IP protocol (6 TCP, 17 UDP, ...); 0 means any.
	Proto uint8 `json:"proto,omitempty"`
	// Host is an address either end of the packet must have.
	Host netip.Addr `json:"host,omitzero"`
	// Port is a TCP or UDP port either end must have; 0 means any.
	Port uint16 `json:"port,omitempty"`
	// Reasons are drop reasons (the drop counters' names): with Reasons
	// set, only drops with one of them match.
	Reasons []string `json:"reasons,omitempty"`
}

// flow reports whether f filters on the packet's headers.
func (f *Filter) flow() bool { return f.Proto != 0 || f.Host.IsValid() || f.Port != 0 }

// matchMeta checks the fields that need no parse.
func (f *Filter) matchMeta(p Point, app, reason string) bool {
	if !f.Points.Has(p) {
		return false
	}
	if len(f.Reasons) > 0 {
		if p != DropRx && p != DropTx || !has(f.Reasons, reason) {
			return false
		}
	}
	if len(f.Apps) > 0 {
		if app == "" {
			return has(f.Apps, "-")
		}
		ok := false
		for _, a := range f.Apps {
			if AppMatches(a, app) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// matchFlow checks the header fields on frame b of link type lt, using ps
// as scratch; a frame that does not parse does not match.
func (f *Filter) matchFlow(b []byte, lt packet.LinkType, ps *packet.Parsed) bool {
	if err := packet.Parse(b, lt, ps); err != nil || ps.IPVersion == 0 {
		return false
	}
	if f.Proto != 0 && ps.Proto != f.Proto {
		return false
	}
	if f.Host.IsValid() {
		h := f.Host.Unmap()
		if ps.Src().Unmap() != h && ps.Dst().Unmap() != h {
			return false
		}
	}
	if f.Port != 0 {
		tcpudp := ps.HasL4 && (ps.Proto == packet.ProtoTCP || ps.Proto == packet.ProtoUDP)
		if !tcpudp || ps.SrcPort != f.Port && ps.DstPort != f.Port {
			return false
		}
	}
	return true
}

// AppMatches reports whether the filter's app name a names the channel
// ch: ch is a, or a followed by '-' and digits.
func AppMatches(a, ch string) bool {
	if ch == a {
		return true
	}
	rest, ok := strings.CutPrefix(ch, a+"-")
	if !ok || rest == "" {
		return false
	}
	for _, c := range []byte(rest) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
