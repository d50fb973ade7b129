// Package gso cuts TCP and UDP super packets into wire-sized segments in
// user space, as a NIC's TSO/USO would: the segmenter the TUN and AF_PACKET
// drivers use (netif/internal/vnet), for callers outside netif that must
// segment where no device does it for them (the flowswitch, in front of a
// link that is not a netif.SuperPacketLink).
//
// Invariants:
//
//   - Nothing here panics on any input: every length the IP and L4
//     headers claim is checked against the buffer first; a bad one is an
//     error.
//   - Nothing allocates: the caller passes every buffer.
//   - Every segment is a valid packet on its own: IP length (and IPv4
//     header checksum) rewritten, IPv4 IDs counting up from the super
//     packet's, TCP sequence numbers advanced, FIN and PSH only on the
//     last segment and CWR only on the first (the kernel's
//     tcp_gso_segment), and a complete L4 checksum computed from the
//     segment's bytes, whatever the super packet's checksum field held.
package gso

import (
	"errors"

	"github.com/skylane/skylane/netif/internal/vnet"
)

// Protocol numbers of the super packets Init accepts.
const (
	ProtoTCP = 6
	ProtoUDP = 17
)

// ErrSegSize is returned by Init for a segment size outside 1..65535.
var ErrSegSize = errors.New("gso: segment size outside 1..65535")

// Super is a super packet being cut into segments, one per Segment call,
// so a caller can spread the segments over several output batches. It
// keeps a reference to the packet: the caller leaves the packet unchanged
// until the last segment is written. The zero value is ready for Init.
type Super struct {
	s     vnet.Super
	proto uint8
	hdrs  int // headers (from l3) of each segment
}

// Init prepares to cut pkt, whose IP header starts at l3 (after any link
// header, which each segment keeps), into segments of segSize payload
// bytes: the TCP MSS, or the UDP datagram payload. Only TCP and UDP
// directly after an IPv4 header (options allowed, not a fragment) or a
// bare IPv6 header qualify. Bytes after the IP length are ignored.
func (g *Super) Init(pkt []byte, l3, segSize int) error {
	*g = Super{}
	if segSize <= 0 || segSize > 0xffff {
		return ErrSegSize
	}
	proto, l4, l4len, _, err := vnet.L4(pkt, l3)
	if err != nil {
		return err
	}
	h := vnet.Hdr{GSOSize: uint16(segSize)}
	switch {
	case proto == ProtoUDP:
		h.GSOType = vnet.GSOUDPL4
	case pkt[l3]>>4 == 4:
		h.GSOType = vnet.GSOTCPv4
	default:
		h.GSOType = vnet.GSOTCPv6
	}
	if err := g.s.Init(pkt, l3, &h); err != nil {
		return err
	}
	g.proto, g.hdrs = proto, l4+l4len-l3
	return nil
}

// Proto is the super packet's L4 protocol: ProtoTCP or ProtoUDP.
func (g *Super) Proto() uint8 { return g.proto }

// HeaderLen is the length of the IP and L4 headers every segment carries
// (link header excluded).
func (g *Super) HeaderLen() int { return g.hdrs }

// Segments is how many segments the super packet cuts into: at least one
// (a packet with no payload is one segment, its headers).
func (g *Super) Segments() int { return g.s.Segments() }

// SegmentLen is the length of segment i, link header included.
func (g *Super) SegmentLen(i int) int { return g.s.SegmentLen(i) }

// Segment writes segment i (0 ≤ i < Segments) into dst and returns its
// length; dst must hold SegmentLen(i) bytes. See the package doc for what
// each segment's headers become.
func (g *Super) Segment(i int, dst []byte) (int, error) { return g.s.Segment(i, dst) }

// MSS returns the payload per segment that makes each segment of the IP
// packet at pkt[l3:] exactly mtu bytes long (its own IP and L4 headers,
// options included, taken off), or 0 if its headers do not parse or leave
// no room.
func MSS(pkt []byte, l3, mtu int) int { return vnet.DefaultMSS(pkt, l3, mtu) }
