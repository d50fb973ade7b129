package vnet

import "encoding/binary"

// CompletePartial completes the L4 checksum of the TCP or UDP packet whose
// IP header is at pkt[l3:] when its checksum field holds exactly the folded
// pseudo-header sum for the packet's L4 length: what an skb with
// CHECKSUM_PARTIAL carries (a veth peer's checksum offload, a GSO super
// packet, a GRO-merged one), for a reader that gets the bytes without the
// skb's checksum status (AF_XDP). It reports whether it completed the
// checksum; ok is false for anything else (another protocol, headers that
// do not parse, a checksum that is anything but the pseudo-header sum).
//
// A packet whose complete checksum happens to equal the pseudo-header sum
// is left as it was: completing it recomputes the same value. What changes
// is a corrupt packet whose checksum field happens to hold the
// pseudo-header sum (one in 2^16 of corrupt packets): it now verifies,
// like one whose corruption left the checksum valid.
func CompletePartial(pkt []byte, l3 int) (ok bool) {
	proto, l4, _, end, err := L4(pkt, l3)
	if err != nil {
		return false
	}
	at := udpCsumAt
	if proto == protoTCP {
		at = tcpCsumAt
	}
	field := binary.BigEndian.Uint16(pkt[l4+at:])
	if proto == protoUDP && field == 0 {
		return false // no checksum (IPv4)
	}
	p := pseudoSum(pkt[l3:], proto, end-l4)
	if field != p && !(field == 0xffff && p == 0) && !(field == 0 && p == 0xffff) { // one's complement has two zeros
		return false
	}
	return CompleteChecksum(pkt[:end], l4, at) == nil
}
