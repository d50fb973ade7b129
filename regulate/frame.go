package regulate

import (
	"encoding/binary"

	"github.com/skylane/skylane/packet"
)

// Frame inspection: just enough to find the IP header, hash a 5-tuple and
// flip the ECN bits. Every read is bounds-checked against the frame; a
// frame that does not parse is simply "not IP" (shared flow, no marking).

const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	etherTypeVLAN = 0x8100
	ecnMask       = 0x03 // the ECN field: the low two bits of TOS / TC
	ecnCE         = 0x03 // Congestion Experienced (RFC 3168)
)

// ipHeader returns the offset of the IP header in frame and its version (4
// or 6), or ok false when frame carries no IP header of the version its
// framing announces.
func ipHeader(frame []byte, lt packet.LinkType) (off int, version byte, ok bool) {
	if lt == packet.Ethernet {
		if len(frame) < 14 {
			return 0, 0, false
		}
		et := binary.BigEndian.Uint16(frame[12:14])
		off = 14
		if et == etherTypeVLAN {
			if len(frame) < 18 {
				return 0, 0, false
			}
			et, off = binary.BigEndian.Uint16(frame[16:18]), 18
		}
		switch et {
		case etherTypeIPv4:
			version = 4
		case etherTypeIPv6:
			version = 6
		default:
			return 0, 0, false
		}
	}
	if len(frame) <= off {
		return 0, 0, false
	}
	v := frame[off] >> 4
	if version != 0 && v != version || v != 4 && v != 6 {
		return 0, 0, false
	}
	if v == 4 && len(frame)-off < 20 || v == 6 && len(frame)-off < 40 {
		return 0, 0, false
	}
	return off, v, true
}

// flowHash hashes the 5-tuple of the IP packet in frame (addresses and
// protocol; ports too for TCP, UDP, UDP-Lite and SCTP when the packet is not
// a fragment, so all fragments of a datagram land in one flow). ok is false
// when frame holds no IP header.
func flowHash(frame []byte, lt packet.LinkType, seed uint64) (uint32, bool) {
	off, v, ok := ipHeader(frame, lt)
	if !ok {
		return 0, false
	}
	ip := frame[off:]
	h := seed ^ 0x9e3779b97f4a7c15
	var proto byte
	l4 := -1 // offset of the ports in ip, -1 when not hashed
	if v == 4 {
		proto = ip[9]
		h = Mix(h ^ uint64(binary.BigEndian.Uint32(ip[12:16])))
		h = Mix(h ^ uint64(binary.BigEndian.Uint32(ip[16:20])))
		ihl := int(ip[0]&0x0f) * 4
		notFragment := binary.BigEndian.Uint16(ip[6:8])&0x3fff == 0 // MF clear, offset 0
		if ihl >= 20 && notFragment {
			l4 = ihl
		}
	} else {
		proto = ip[6] // the first next header: extension headers are not walked
		for i := 8; i < 40; i += 8 {
			h = Mix(h ^ binary.BigEndian.Uint64(ip[i:i+8]))
		}
		l4 = 40
	}
	h = Mix(h ^ uint64(proto))
	switch proto {
	case 6, 17, 132, 136: // TCP, UDP, SCTP, UDP-Lite: ports first
		if l4 >= 0 && len(ip) >= l4+4 {
			h = Mix(h ^ uint64(binary.BigEndian.Uint32(ip[l4:l4+4])))
		}
	}
	return uint32(h ^ h>>32), true
}

// Mix is splitmix64's finaliser: every input bit affects every output
// bit. The flowswitch hashes its listeners' sources with it too.
func Mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// ecnField returns the IP header in frame, its version, and its ECN field
// (0: Not-ECT, 1: ECT(1), 2: ECT(0), 3: CE); ok is false for a non-IP frame.
func ecnField(frame []byte, lt packet.LinkType) (ip []byte, version, ecn byte, ok bool) {
	off, v, ok := ipHeader(frame, lt)
	if !ok {
		return nil, 0, 0, false
	}
	ip = frame[off:]
	if v == 6 {
		// Traffic class: low nibble of byte 0, high nibble of byte 1; ECN
		// is its low two bits, bits 4-5 of byte 1.
		return ip, 6, ip[1] >> 4 & ecnMask, true
	}
	return ip, 4, ip[1] & ecnMask, true
}

// ecnCapable reports whether frame is an IP packet with ECN enabled
// (ECT(0), ECT(1) or already CE): one markCE would mark.
func ecnCapable(frame []byte, lt packet.LinkType) bool {
	_, _, ecn, ok := ecnField(frame, lt)
	return ok && ecn != 0
}

// markCE sets ECN Congestion Experienced in the IP header of frame when the
// packet is ECN-capable and reports whether it is; a Not-ECT or non-IP
// frame is left as it was. An IPv4 header checksum is updated
// incrementally (RFC 1624 eqn. 3), so a valid checksum stays valid and an
// invalid one stays as wrong as it was.
func markCE(frame []byte, lt packet.LinkType) bool {
	ip, v, ecn, ok := ecnField(frame, lt)
	switch {
	case !ok || ecn == 0:
		return false
	case ecn == ecnCE:
		return true
	case v == 6:
		ip[1] |= ecnCE << 4
		return true
	}
	old := binary.BigEndian.Uint16(ip[0:2])
	ip[1] |= ecnCE
	nw := binary.BigEndian.Uint16(ip[0:2])
	// HC' = ~(~HC + ~m + m'), one's complement sums with end-around carry.
	sum := uint32(^binary.BigEndian.Uint16(ip[10:12])) + uint32(^old) + uint32(nw)
	sum = sum&0xffff + sum>>16
	sum = sum&0xffff + sum>>16
	binary.BigEndian.PutUint16(ip[10:12], ^uint16(sum))
	return true
}
