package regulate

import (
	"encoding/binary"
	"testing"
	"time"
)

const ms = int64(time.Millisecond)

// Test frames: Ethernet II, IPv4 or IPv6, UDP, from the documentation
// ranges (192.0.2.0/24 → 198.51.100.0/24, 2001:db8::/32). The payload ends
// with a trailer naming the test stream and the frame's sequence number in
// it, so tests can check order after the queue copied the frame around.
const trailerLen = 12

type frameSpec struct {
	v6         bool
	sport      uint16
	tos        byte // IPv4 TOS / IPv6 traffic class (ECN in the low 2 bits)
	size       int  // whole frame, at least minFrame
	stream     uint32
	seq        uint64
	vlan, raw  bool // 802.1Q tag; raw IP (no Ethernet header)
	badVersion bool // IP version nibble that matches neither framing
}

const minFrame = 14 + 40 + 8 + trailerLen

func build(s frameSpec) []byte {
	if s.size < minFrame {
		s.size = minFrame
	}
	b := make([]byte, s.size)
	off := 0
	if !s.raw {
		copy(b[0:6], []byte{0x02, 0, 0, 0, 0, 2})
		copy(b[6:12], []byte{0x02, 0, 0, 0, 0, 1})
		et := uint16(etherTypeIPv4)
		if s.v6 {
			et = etherTypeIPv6
		}
		if s.vlan {
			binary.BigEndian.PutUint16(b[12:14], etherTypeVLAN)
			binary.BigEndian.PutUint16(b[14:16], 7) // VLAN 7
			binary.BigEndian.PutUint16(b[16:18], et)
			off = 18
		} else {
			binary.BigEndian.PutUint16(b[12:14], et)
			off = 14
		}
	}
	ip := b[off:]
	var udp []byte
	if s.v6 {
		ip[0] = 0x60 | s.tos>>4
		ip[1] = s.tos << 4
		binary.BigEndian.PutUint16(ip[4:6], uint16(len(ip)-40))
		ip[6], ip[7] = 17, 64
		copy(ip[8:24], []byte{0x20, 0x01, 0x0d, 0xb8, 15: 1})
		copy(ip[24:40], []byte{0x20, 0x01, 0x0d, 0xb8, 14: 1, 15: 1})
		udp = ip[40:]
	} else {
		ip[0], ip[1] = 0x45, s.tos
		binary.BigEndian.PutUint16(ip[2:4], uint16(len(ip)))
		ip[8], ip[9] = 64, 17
		copy(ip[12:16], []byte{192, 0, 2, 1})
		copy(ip[16:20], []byte{198, 51, 100, 1})
		binary.BigEndian.PutUint16(ip[10:12], ipv4Checksum(ip[:20]))
		udp = ip[20:]
	}
	if s.badVersion {
		ip[0] = 0x55
	}
	binary.BigEndian.PutUint16(udp[0:2], s.sport)
	binary.BigEndian.PutUint16(udp[2:4], 53)
	binary.BigEndian.PutUint16(udp[4:6], uint16(len(udp)))
	t := b[len(b)-trailerLen:]
	binary.BigEndian.PutUint32(t[0:4], s.stream)
	binary.BigEndian.PutUint64(t[4:12], s.seq)
	return b
}

// trailer returns the stream and sequence number build put into f.
func trailer(f []byte) (stream uint32, seq uint64) {
	t := f[len(f)-trailerLen:]
	return binary.BigEndian.Uint32(t[0:4]), binary.BigEndian.Uint64(t[4:12])
}

// ipv4Checksum computes the header checksum from scratch (RFC 791), with
// the checksum field taken as zero.
func ipv4Checksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		if i == 10 {
			continue
		}
		sum += uint32(binary.BigEndian.Uint16(h[i : i+2]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// quiet is an advisory policy that never holds a flow back, for tests of
// CoDel and DRR alone.
var quiet = AdvisoryPolicy{Interval: 1 << 62, SuspendBacklog: maxLimit + 1, HighWater: maxLimit + 1}

func newQueue(t testing.TB, o Options) *Queue {
	t.Helper()
	q, err := New(o)
	if err != nil {
		t.Fatalf("New(%+v): %v", o, err)
	}
	return q
}

// mustEnqueue enqueues and fails the test if the queue refuses.
func mustEnqueue(t testing.TB, q *Queue, f []byte, tag Tag, now int64) {
	t.Helper()
	if !q.Enqueue(f, tag, now) {
		t.Fatalf("Enqueue(token %d) at %d refused; stats %+v", tag.Token, now, q.Stats())
	}
}

// dequeueOne dequeues at most one frame.
func dequeueOne(q *Queue, now int64) ([]byte, bool) {
	var one [1][]byte
	if q.Dequeue(one[:], now) == 0 {
		return nil, false
	}
	return one[0], true
}

// conserved checks the queue's accounting identity.
func conserved(t testing.TB, q *Queue) {
	t.Helper()
	s := q.Stats()
	out := s.Dequeued + s.CoDelDrops + s.OverflowDrops + s.Forgotten + uint64(s.Packets)
	if s.Enqueued != out {
		t.Fatalf("enqueued %d != dequeued %d + codel %d + overflow %d + forgotten %d + queued %d",
			s.Enqueued, s.Dequeued, s.CoDelDrops, s.OverflowDrops, s.Forgotten, s.Packets)
	}
}
