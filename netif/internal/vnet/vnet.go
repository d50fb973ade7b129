// Package vnet reads and writes the virtio-net header that Linux puts in
// front of every packet on a TUN device opened with IFF_VNET_HDR and on an
// AF_PACKET socket with PACKET_VNET_HDR, and does in user space what a NIC
// would do with it: complete a partial checksum (NEEDS_CSUM), split a GSO
// super packet into wire-sized segments, and prepare a super packet for the
// kernel to segment. The TUN and AF_PACKET drivers share it.
//
// Invariants:
//
//   - Nothing here panics on any input: every offset the header or the IP/L4
//     headers claim is checked against the buffer first, and a bad one is an
//     error (the kernel is trusted, but a bug must cost a packet, not the
//     nexus).
//   - Nothing allocates: callers pass every buffer.
//   - Checksums produced here are complete and correct: a packet handed to a
//     stack above verifies like one that crossed a wire.
//
// The header is in the host's byte order (legacy virtio; TUNSETVNETLE/BE are
// never used), which is little endian on every machine Skylane runs on.
package vnet

import (
	"encoding/binary"
	"errors"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// HdrLen is the size of struct virtio_net_hdr (no num_buffers field: the
// drivers set TUNSETVNETHDRSZ to exactly this).
const HdrLen = 10

// Header flags and GSO types (linux/virtio_net.h).
const (
	FlagNeedsCsum = 1 // csum_start/csum_offset name a checksum to complete
	FlagDataValid = 2 // the checksum was verified already

	GSONone  = 0
	GSOTCPv4 = 1
	GSOUDP   = 3 // UFO: IP fragmentation offload, never enabled here
	GSOTCPv6 = 4
	GSOUDPL4 = 5 // USO: UDP segmentation, one datagram per gso_size bytes
	GSOECN   = 0x80
)

// Hdr is a decoded struct virtio_net_hdr.
type Hdr struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16 // bytes of headers before the payload (a hint; not trusted)
	GSOSize    uint16 // payload bytes per segment
	CsumStart  uint16 // checksummed bytes start here, from the frame's start
	CsumOffset uint16 // the checksum field is at CsumStart+CsumOffset
}

// Decode reads h from the first HdrLen bytes of b.
func (h *Hdr) Decode(b []byte) error {
	if len(b) < HdrLen {
		return errShort
	}
	h.Flags = b[0]
	h.GSOType = b[1]
	h.HdrLen = binary.NativeEndian.Uint16(b[2:])
	h.GSOSize = binary.NativeEndian.Uint16(b[4:])
	h.CsumStart = binary.NativeEndian.Uint16(b[6:])
	h.CsumOffset = binary.NativeEndian.Uint16(b[8:])
	return nil
}

// Encode writes h into the first HdrLen bytes of b, which must be that long.
func (h *Hdr) Encode(b []byte) {
	_ = b[HdrLen-1]
	b[0] = h.Flags
	b[1] = h.GSOType
	binary.NativeEndian.PutUint16(b[2:], h.HdrLen)
	binary.NativeEndian.PutUint16(b[4:], h.GSOSize)
	binary.NativeEndian.PutUint16(b[6:], h.CsumStart)
	binary.NativeEndian.PutUint16(b[8:], h.CsumOffset)
}

// IsGSO reports whether h describes a super packet to segment.
func (h *Hdr) IsGSO() bool { return h.GSOType&^GSOECN != GSONone }

// IsUSO reports whether h describes a UDP super packet (USO): several
// datagrams under one header, which a reader must split whatever its
// buffer size, since datagram boundaries are data.
func (h *Hdr) IsUSO() bool { return h.GSOType&^GSOECN == GSOUDPL4 }

// Errors, all wrapping nothing: they name what was wrong with a packet.
var (
	errShort     = errors.New("vnet: packet shorter than its headers claim")
	errCsumRange = errors.New("vnet: checksum offset outside the packet")
	errGSOType   = errors.New("vnet: unsupported GSO type")
	errGSOProto  = errors.New("vnet: GSO packet is not TCP/UDP over IPv4/IPv6")
	errGSOSize   = errors.New("vnet: GSO size is zero")
	errSegBuf    = errors.New("vnet: segment buffer too small")
)

// CompleteChecksum does what a NIC does for NEEDS_CSUM: it sums pkt from
// start to the end, the checksum field at start+off already holding the
// pseudo-header sum (CHECKSUM_PARTIAL), and stores the complement there. A
// result of 0 is stored as 0xffff, as Linux's skb_checksum_help does: both
// verify for TCP, and 0 would mean "no checksum" for UDP.
func CompleteChecksum(pkt []byte, start, off int) error {
	if start < 0 || off < 0 || start+off+2 > len(pkt) {
		return errCsumRange
	}
	field := pkt[start+off:]
	sum := ^checksum.Checksum(pkt[start:], 0)
	if sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(field, sum)
	return nil
}

// Protocol numbers and header lengths used below.
const (
	protoTCP  = 6
	protoUDP  = 17
	ipv4Min   = 20
	ipv6Len   = 40
	tcpMin    = 20
	udpLen    = 8
	maxIPLen  = 65535
	tcpCsumAt = 16 // checksum offset in the TCP header
	udpCsumAt = 6  // checksum offset in the UDP header
)

// L4 locates the L4 header of the IP packet at pkt[l3:]: it returns the
// protocol, the L4 offset, the L4 header length and the end of the IP
// packet (L3 offset plus the IP length). Only TCP and UDP directly after
// an IPv4 header (options allowed) or a bare IPv6 header qualify: that is
// what GSO produces and what the kernel accepts for GSO.
func L4(pkt []byte, l3 int) (proto uint8, l4, l4len, end int, err error) {
	if l3 < 0 || l3 >= len(pkt) {
		return 0, 0, 0, 0, errShort
	}
	ip := pkt[l3:]
	var iplen int
	switch ip[0] >> 4 {
	case 4:
		if len(ip) < ipv4Min {
			return 0, 0, 0, 0, errShort
		}
		ihl := int(ip[0]&0xf) * 4
		iplen = int(binary.BigEndian.Uint16(ip[2:]))
		if ihl < ipv4Min || iplen < ihl || iplen > len(ip) {
			return 0, 0, 0, 0, errShort
		}
		if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 { // MF or an offset: a fragment
			return 0, 0, 0, 0, errGSOProto
		}
		proto, l4 = ip[9], l3+ihl
	case 6:
		if len(ip) < ipv6Len {
			return 0, 0, 0, 0, errShort
		}
		iplen = ipv6Len + int(binary.BigEndian.Uint16(ip[4:]))
		if iplen > len(ip) {
			return 0, 0, 0, 0, errShort
		}
		proto, l4 = ip[6], l3+ipv6Len
	default:
		return 0, 0, 0, 0, errGSOProto
	}
	end = l3 + iplen
	switch proto {
	case protoTCP:
		if end-l4 < tcpMin {
			return 0, 0, 0, 0, errShort
		}
		l4len = int(pkt[l4+12]>>4) * 4
		if l4len < tcpMin || l4+l4len > end {
			return 0, 0, 0, 0, errShort
		}
	case protoUDP:
		l4len = udpLen
		if end-l4 < udpLen {
			return 0, 0, 0, 0, errShort
		}
	default:
		return 0, 0, 0, 0, errGSOProto
	}
	return proto, l4, l4len, end, nil
}

// pseudoSum is the folded (not complemented) sum of the pseudo header of
// the IP packet at ip, for an L4 length of l4len.
func pseudoSum(ip []byte, proto uint8, l4len int) uint16 {
	var s uint16
	if ip[0]>>4 == 4 {
		s = checksum.Checksum(ip[12:20], 0)
	} else {
		s = checksum.Checksum(ip[8:40], 0)
	}
	s = checksum.Combine(s, uint16(proto))
	return checksum.Combine(s, uint16(l4len))
}

// ipv4HeaderChecksum recomputes the IPv4 header checksum of ip (IHL read
// from it; the caller checked the header fits).
func ipv4HeaderChecksum(ip []byte) {
	ihl := int(ip[0]&0xf) * 4
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], ^checksum.Checksum(ip[:ihl], 0))
}
