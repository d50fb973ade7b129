package flowswitch

import (
	"encoding/binary"

	"github.com/skylane/skylane/packet"
)

// TCP receive merge (docs/design.md §5.4).
//
// When a flow batch is released, runs of consecutive in-order TCP data
// segments of the flow are merged into one super packet: the first segment's
// IP and TCP headers followed by every segment's payload. A run grows while
// packet.Parsed.CanAppend accepts the next segment (ACK with or without PSH
// and nothing else, payload present, no sequence gap or overlap, the same
// acknowledgement number, IP header and TCP options length) and the super
// packet stays within the merge limit: min(Options.MergeLimit, the channel's
// buffer size), counted as the IP length. With the default 2 KiB buffers that
// is at most one more full-sized segment; a channel with 16 KiB buffers
// (pool.MaxBufferSize) lets the 16 KiB default limit be reached.
//
// The super packet is rewritten as follows:
//   - IPv4 total length (or IPv6 payload length) covers the merged payload;
//     the IPv4 header checksum is recomputed. The IPv4 identification is the
//     first segment's.
//   - TCP flags: PSH is set if any merged segment had it.
//   - TCP window: the last segment's, the freshest advertisement (the
//     acknowledgement number is the same in every segment).
//   - TCP options: the first segment's bytes (only their length is compared).
//   - TCP checksum: a correct checksum over the super packet, computed
//     incrementally from each segment's own checksum, pseudo header and TCP
//     header, without reading the payload again. A segment whose checksum was
//     wrong therefore leaves the super packet's checksum wrong: the merge never
//     launders a corrupt segment into a valid-looking one, and the app's stack
//     verifies the super packet as it would any packet. (The flowswitch
//     verifies nothing; what it reads from a trusted wire it marks
//     channel.FlagCsumValid, merged or not, csum.go.)
//
// Order within the flow is kept: a run is a stretch of consecutive packets of
// the flow batch, delivered where its first packet was.

const (
	// DefaultMergeLimit is the super packet size limit (IP length) when
	// Options.MergeLimit is 0.
	DefaultMergeLimit = 16 << 10
	// MaxMergeLimit is the largest Options.MergeLimit; the IP length field
	// caps a super packet at 65535 bytes in any case.
	MaxMergeLimit = 64 << 10
)

// mergeLimit maps Options.MergeLimit to the switch's limit in bytes: 0 when
// merging is disabled.
func mergeLimit(o int) int {
	switch {
	case o == 0:
		return DefaultMergeLimit
	case o < 0:
		return 0
	default:
		return min(o, 0xffff)
	}
}

// planRuns splits the flow batch pkts into runs of packets that form one
// output packet each and returns the run lengths (s.runs, reused). A run of
// one is a packet delivered as is.
func (s *Switch) planRuns(pkts []int32, bufSize int) []int32 {
	runs := s.runs[:0]
	limit := min(s.mergeLimit, bufSize)
	for k := 0; k < len(pkts); {
		n := 1
		if first := &s.rx[pkts[k]]; limit > 0 && first.TCPMergeable() {
			last := first
			total := first.IPLen
			for k+n < len(pkts) {
				q := &s.rx[pkts[k+n]]
				if total+q.PayloadLen > limit || !last.CanAppend(q) {
					break
				}
				total += q.PayloadLen
				last = q
				n++
			}
		}
		runs = append(runs, int32(n))
		k += n
	}
	s.runs = runs
	return runs
}

// merge writes the super packet of the segments seg (indices into the input
// batch, at least two, accepted by planRuns) into dst, which is large enough,
// and returns its length.
func (s *Switch) merge(dst []byte, seg []int32) int {
	f := &s.rx[seg[0]]
	fb := s.bufs[seg[0]]
	n := copy(dst, fb[f.L3Off:f.PayloadOff])
	var (
		payloadSum uint32 // one's complement sum of the merged payload
		off        int    // offset of the next payload in the merged payload
		flags      = f.Flags
	)
	for _, i := range seg {
		q := &s.rx[i]
		b := s.bufs[i]
		n += copy(dst[n:], b[q.PayloadOff:q.PayloadOff+q.PayloadLen])
		ps := segPayloadSum(q, b)
		if off&1 != 0 { // the payload starts on an odd byte of the sum
			ps = ps>>8 | ps<<8&0xff00
		}
		payloadSum += ps
		off += q.PayloadLen
		flags |= q.Flags & packet.TCPPsh
	}
	ip := dst[:f.IPHdrLen]
	if f.IPVersion == 4 {
		binary.BigEndian.PutUint16(ip[2:4], uint16(n))
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:12], ^packet.Fold(packet.Sum(ip, 0)))
	} else {
		binary.BigEndian.PutUint16(ip[4:6], uint16(n-f.IPHdrLen))
	}
	last := &s.rx[seg[len(seg)-1]]
	lb := s.bufs[seg[len(seg)-1]]
	th := dst[f.IPHdrLen : f.PayloadOff-f.L3Off]
	th[13] = byte(flags)
	copy(th[14:16], lb[last.L4Off+14:last.L4Off+16]) // window
	th[16], th[17] = 0, 0
	c := pseudoSum(ip, f.IPVersion, n-f.IPHdrLen) + packet.Sum(th, 0) + uint32(packet.Fold(payloadSum))
	binary.BigEndian.PutUint16(th[16:18], ^packet.Fold(c))
	return n
}

// segPayloadSum returns the one's complement sum of q's payload implied by
// its TCP checksum: the value that makes the segment's checksum verify, which
// is the payload's true sum when the segment is intact. It reads only the
// headers of b, the buffer q was parsed from.
func segPayloadSum(q *packet.Parsed, b []byte) uint32 {
	ip := b[q.L3Off : q.L3Off+q.IPHdrLen]
	c := pseudoSum(ip, q.IPVersion, q.IPLen-q.IPHdrLen) + packet.Sum(b[q.L4Off:q.PayloadOff], 0)
	return uint32(^packet.Fold(c))
}

// pseudoSum returns the unfolded sum of the TCP pseudo header of the IP
// header ip with a TCP length of tcpLen.
func pseudoSum(ip []byte, version uint8, tcpLen int) uint32 {
	addrs := ip[8:40] // IPv6 source and destination
	if version == 4 {
		addrs = ip[12:20]
	}
	return packet.Sum(addrs, uint32(packet.ProtoTCP)+uint32(tcpLen))
}
