package vnet

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// TCP flags the segmentation rewrites.
const (
	tcpFIN = 0x01
	tcpPSH = 0x08
	tcpCWR = 0x80
)

// Super is a GSO super packet being split into segments, one per call to
// Segment, so a driver can hand the segments out across several Read calls.
// It keeps a reference to the packet: the caller keeps the packet unchanged
// until the last segment is out.
type Super struct {
	pkt   []byte
	l3    int   // IP header offset (after any link header)
	l4    int   // L4 header offset
	hdrs  int   // end of the headers: l4 + L4 header length
	end   int   // end of the IP packet
	proto uint8 // protoTCP or protoUDP
	mss   int   // payload bytes per segment
	n     int   // number of segments
}

// Init prepares to split pkt, whose IP header starts at l3 (0 on TUN, after
// the Ethernet header on AF_PACKET), per the GSO fields of h. The L4
// checksums of the segments are computed from scratch, so whether h asked
// for NEEDS_CSUM does not matter.
func (s *Super) Init(pkt []byte, l3 int, h *Hdr) error {
	*s = Super{}
	want := uint8(0)
	switch h.GSOType &^ GSOECN {
	case GSOTCPv4, GSOTCPv6:
		want = protoTCP
	case GSOUDPL4:
		want = protoUDP
	default:
		return errGSOType
	}
	if h.GSOSize == 0 {
		return errGSOSize
	}
	proto, l4, l4len, end, err := L4(pkt, l3)
	if err != nil {
		return err
	}
	if proto != want {
		return errGSOProto
	}
	s.pkt, s.l3, s.l4, s.hdrs, s.end, s.proto = pkt, l3, l4, l4+l4len, end, proto
	s.mss = int(h.GSOSize)
	payload := end - s.hdrs
	s.n = max(1, (payload+s.mss-1)/s.mss)
	return nil
}

// Segments is how many segments the super packet splits into.
func (s *Super) Segments() int { return s.n }

// SegmentLen is the length of segment i.
func (s *Super) SegmentLen(i int) int {
	off := i * s.mss
	return s.hdrs + min(s.mss, s.end-s.hdrs-off)
}

// Segment writes segment i (0 ≤ i < Segments) into dst and returns its
// length: the link header, IP and L4 headers copied from the super packet
// and adjusted (lengths, IPv4 ID and header checksum, TCP sequence number
// and flags), then the i-th gso_size bytes of payload, with a complete L4
// checksum. The TCP flags follow the kernel's tcp_gso_segment: FIN and PSH
// only on the last segment, CWR only on the first.
func (s *Super) Segment(i int, dst []byte) (int, error) {
	if i < 0 || i >= s.n {
		return 0, errShort
	}
	off := s.hdrs + i*s.mss
	plen := min(s.mss, s.end-off)
	n := s.hdrs + plen
	if len(dst) < n {
		return 0, errSegBuf
	}
	copy(dst, s.pkt[:s.hdrs])
	copy(dst[s.hdrs:n], s.pkt[off:off+plen])
	ip := dst[s.l3:n]
	l4len := n - s.l4
	if ip[0]>>4 == 4 {
		binary.BigEndian.PutUint16(ip[2:], uint16(n-s.l3))
		id := binary.BigEndian.Uint16(ip[4:])
		binary.BigEndian.PutUint16(ip[4:], id+uint16(i))
		ipv4HeaderChecksum(ip)
	} else {
		binary.BigEndian.PutUint16(ip[4:], uint16(l4len))
	}
	l4 := dst[s.l4:n]
	csumAt := udpCsumAt
	if s.proto == protoTCP {
		csumAt = tcpCsumAt
		seq := binary.BigEndian.Uint32(l4[4:])
		binary.BigEndian.PutUint32(l4[4:], seq+uint32(i*s.mss))
		if i != s.n-1 {
			l4[13] &^= tcpFIN | tcpPSH
		}
		if i != 0 {
			l4[13] &^= tcpCWR
		}
	} else {
		binary.BigEndian.PutUint16(l4[4:], uint16(l4len))
	}
	l4[csumAt], l4[csumAt+1] = 0, 0
	sum := ^checksum.Checksum(l4, pseudoSum(ip, s.proto, l4len))
	if sum == 0 && s.proto == protoUDP {
		sum = 0xffff // 0 means "no checksum" in UDP
	}
	binary.BigEndian.PutUint16(l4[csumAt:], sum)
	return n, nil
}

// PrepareGSO describes the super packet pkt (IP header at l3) for the
// kernel to segment into mss-byte payloads: it fills h (NEEDS_CSUM, the GSO
// type, sizes and checksum location) and copies pkt's headers into hdrs with
// the L4 checksum field set to the pseudo-header sum, as CHECKSUM_PARTIAL
// wants. It returns the header length: the caller sends hdrs[:n] followed by
// pkt[n:], so pkt itself is never written. allowUDP says whether the device
// takes USO. A packet whose payload fits one segment is still described as
// GSO; the kernel then sends it as is.
func PrepareGSO(pkt []byte, l3, mss int, allowUDP bool, h *Hdr, hdrs []byte) (int, error) {
	proto, l4, l4len, end, err := L4(pkt, l3)
	if err != nil {
		return 0, err
	}
	if mss <= 0 || mss > maxIPLen {
		return 0, errGSOSize
	}
	if end != len(pkt) { // trailing padding would be sent as payload
		return 0, errShort
	}
	n := l4 + l4len
	if len(hdrs) < n {
		return 0, errSegBuf
	}
	copy(hdrs, pkt[:n])
	ip := hdrs[l3:n]
	v4 := ip[0]>>4 == 4
	*h = Hdr{Flags: FlagNeedsCsum, HdrLen: uint16(n), GSOSize: uint16(mss), CsumStart: uint16(l4)}
	switch {
	case proto == protoTCP && v4:
		h.GSOType, h.CsumOffset = GSOTCPv4, tcpCsumAt
	case proto == protoTCP:
		h.GSOType, h.CsumOffset = GSOTCPv6, tcpCsumAt
	case allowUDP:
		h.GSOType, h.CsumOffset = GSOUDPL4, udpCsumAt
	default:
		return 0, errGSOProto
	}
	if proto == protoTCP && pkt[l4+13]&tcpCWR != 0 {
		h.GSOType |= GSOECN // CWR goes on the first segment only
	}
	binary.BigEndian.PutUint16(hdrs[l4+int(h.CsumOffset):], pseudoSum(ip, proto, end-l4))
	return n, nil
}

// DefaultMSS is the payload per segment that makes each segment of the IP
// packet at pkt[l3:] exactly mtu bytes long: what Write uses when the caller
// names no segment size. It returns 0 if the headers do not parse or leave
// no room.
func DefaultMSS(pkt []byte, l3, mtu int) int {
	_, l4, l4len, _, err := L4(pkt, l3)
	if err != nil {
		return 0
	}
	return max(0, mtu-(l4+l4len-l3))
}
