package flowswitch

import (
	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/netif"
)

// Checksum state (channel.FlagCsumPartial, FlagCsumValid).
//
// The switch verifies no checksum and computes only those it must: a
// packet whose app left its TCP or UDP checksum to the wire is completed
// in txTake, on the switch's own copy, when the link is not a
// netif.TrustedWire (a device: AF_XDP, AF_PACKET, TUN, or a memif wire
// with FullChecksums), super packets too: most get fresh checksums from
// whoever cuts them (netif/gso here, the kernel behind a virtio-net
// header), but a device that carries one whole (a memif wire with
// FullChecksums) does not, and the switch cannot tell. Over a trusted wire the packet
// travels as its app left it, and the nexus at the other end delivers
// everything it reads with FlagCsumValid, so neither side makes a pass
// over the bytes for a checksum; it also skips the check of a super
// packet it must split (rxgso.go), whose checksum may be incomplete. The
// bit is never trusted for anything that concerns the nexus: a wrong
// checksum reaches only the peer the app is talking to, which, across a
// trusted wire, is another app of a nexus on the same host.

// isTrustedWire reports whether l is a netif.TrustedWire.
func isTrustedWire(l netif.Link) bool {
	t, ok := l.(netif.TrustedWire)
	return ok && t.TrustedWire()
}

// rxFlags are the flags of every packet the switch delivers from its link.
func (s *Switch) rxFlags() uint16 {
	if s.trusted {
		return channel.FlagCsumValid
	}
	return 0
}
