package stack

import (
	"encoding/binary"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/skylane/skylane/packet"
)

// Fragments on transmit. netstack cuts a UDP datagram larger than the MTU
// into IP fragments and writes them one by one, in order, first fragment
// first. Only the first carries the ports, so the endpoint remembers the
// flow key of the last few datagrams it saw a first fragment of, and sends
// each later fragment on that flow; the nexus checks them the same way. A
// later fragment of a datagram it knows nothing of is dropped as of no flow.

// fragMemory is how many datagrams' keys are remembered: netstack writes
// one datagram's fragments back to back, so a few cover the sockets that
// send at the same time.
const fragMemory = 16

// fragKey is one remembered datagram: its identification and addresses,
// and its flow's key.
type fragKey struct {
	id       uint32
	src, dst [16]byte
	proto    uint8
	key      packet.Key
}

// fragKeys is the endpoint's memory of fragmented datagrams; safe for
// concurrent use (WritePackets may run on many goroutines).
type fragKeys struct {
	mu   sync.Mutex
	ring [fragMemory]fragKey // guarded by mu
	next int                 // guarded by mu: the slot to overwrite next
}

// fragTxKey returns the flow key of pkt if it is a fragment netstack cut:
// from its ports if it is a first fragment (remembered), else from the
// first fragment of its datagram.
func (f *fragKeys) fragTxKey(pkt *gstack.PacketBuffer) (packet.Key, bool) {
	nh := pkt.NetworkHeader().Slice()
	var (
		fk        fragKey
		off       uint16
		more      bool
		srcA, dst netip.Addr
	)
	switch pkt.NetworkProtocolNumber {
	case header.IPv4ProtocolNumber:
		if len(nh) < header.IPv4MinimumSize {
			return packet.Key{}, false
		}
		fo := binary.BigEndian.Uint16(nh[6:8])
		off, more = fo&0x1fff<<3, fo&0x2000 != 0
		fk.id, fk.proto = uint32(binary.BigEndian.Uint16(nh[4:6])), nh[9]
		srcA, dst = netip.AddrFrom4([4]byte(nh[12:16])), netip.AddrFrom4([4]byte(nh[16:20]))
	case header.IPv6ProtocolNumber:
		// netstack puts the fragment header right after the IPv6 header.
		if len(nh) < header.IPv6MinimumSize+8 || nh[6] != uint8(header.IPv6FragmentExtHdrIdentifier) {
			return packet.Key{}, false
		}
		fh := nh[header.IPv6MinimumSize:]
		fo := binary.BigEndian.Uint16(fh[2:4])
		off, more = fo&^7, fo&1 != 0
		fk.id, fk.proto = binary.BigEndian.Uint32(fh[4:8]), fh[0]
		srcA, dst = netip.AddrFrom16([16]byte(nh[8:24])), netip.AddrFrom16([16]byte(nh[24:40]))
	default:
		return packet.Key{}, false
	}
	if off == 0 && !more {
		return packet.Key{}, false // not a fragment
	}
	fk.src, fk.dst = srcA.As16(), dst.As16()
	f.mu.Lock()
	defer f.mu.Unlock()
	if off != 0 {
		for i := range f.ring {
			if r := &f.ring[i]; r.id == fk.id && r.proto == fk.proto && r.src == fk.src && r.dst == fk.dst && r.key.Version != 0 {
				return r.key, true
			}
		}
		return packet.Key{}, false
	}
	if fk.proto != packet.ProtoUDP && fk.proto != packet.ProtoTCP {
		return packet.Key{}, false
	}
	ports, ok := pkt.Data().PullUp(4)
	if !ok {
		return packet.Key{}, false
	}
	fk.key = packet.MakeKey(fk.proto, netip.AddrPortFrom(srcA, binary.BigEndian.Uint16(ports[0:2])),
		netip.AddrPortFrom(dst, binary.BigEndian.Uint16(ports[2:4])))
	f.ring[f.next] = fk
	f.next = (f.next + 1) % fragMemory
	return fk.key, true
}
