package stack

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/skylane/skylane/packet"
)

// Checksums of fragmented datagrams from a device. The endpoint declares
// receive checksum offload, which netstack applies per link: it then
// verifies no fragment and no datagram it reassembles. A fragment cannot
// be verified alone, so the endpoint holds the fragments of a TCP or UDP
// datagram not marked channel.FlagCsumValid until it has them all, checks
// the datagram's checksum from their payload sums (fragment offsets are
// multiples of 8, so the sums add up without reading anything twice), and
// hands them to netstack, which reassembles them, or drops them all
// (Stats.RxBadChecksum). Held datagrams are bounded (maxFragDatagrams,
// maxFragPieces each): past that the oldest is dropped whole
// (Stats.RxDropped); Stop drops what is held.

const (
	maxFragDatagrams = 16
	maxFragPieces    = 64
)

type csumFragKey struct {
	src, dst [16]byte
	id       uint32
	proto    uint8
	v6       bool
}

type heldFrag struct {
	pkt   *gstack.PacketBuffer
	proto tcpip.NetworkProtocolNumber
}

type fragDatagram struct {
	key     csumFragKey
	pieces  []heldFrag
	sum     uint32 // unfolded sum of the L4 bytes held so far
	have    int    // L4 bytes held so far
	total   int    // L4 length, once the last fragment came; else -1
	zeroUDP bool   // the first fragment carries a zero UDP checksum
}

// rxFrag holds the fragment pkt (parsed in p, its bytes b) and, when it
// completes its datagram, appends the datagram's fragments to e.rxExtra if
// its checksum verifies, or drops them. It takes over pkt's reference.
// Called with e.mu held.
func (e *Endpoint) rxFrag(p *packet.Parsed, b []byte, pkt *gstack.PacketBuffer, proto tcpip.NetworkProtocolNumber) {
	k := csumFragKey{id: p.ID, proto: p.Proto, v6: p.IPVersion == 6}
	k.src, k.dst = p.Src().As16(), p.Dst().As16()
	var d *fragDatagram
	for _, x := range e.heldFrags {
		if x.key == k {
			d = x
			break
		}
	}
	if d == nil {
		if len(e.heldFrags) >= maxFragDatagrams {
			e.dropFrag(0) // the oldest: its missing fragments are not coming
		}
		d = &fragDatagram{key: k, total: -1}
		e.heldFrags = append(e.heldFrags, d)
	}
	l4 := b[p.L4Off-p.L3Off : p.IPLen]
	d.pieces = append(d.pieces, heldFrag{pkt, proto})
	d.sum = packet.Sum(l4, d.sum)
	d.have += len(l4)
	if p.FragOff == 0 && p.Proto == packet.ProtoUDP && len(l4) >= 8 && l4[6] == 0 && l4[7] == 0 {
		d.zeroUDP = true
	}
	if !p.MoreFrags {
		d.total = int(p.FragOff) + len(l4)
	}
	i := len(e.heldFrags) - 1
	for e.heldFrags[i] != d {
		i--
	}
	switch {
	case d.total >= 0 && d.have == d.total:
	case len(d.pieces) >= maxFragPieces || d.have > 0xffff:
		e.dropFrag(i)
		return
	default:
		return
	}
	// Complete (overlaps would make have reach total early, and fail).
	var acc uint32
	if k.v6 {
		acc = packet.Sum(k.src[:], packet.Sum(k.dst[:], 0))
	} else {
		acc = packet.Sum(k.src[12:], packet.Sum(k.dst[12:], 0))
	}
	acc += uint32(k.proto) + uint32(d.total)
	ok := packet.Fold(acc+d.sum) == 0xffff
	if d.zeroUDP {
		ok = !k.v6 // no checksum sent: fine over IPv4 only
	}
	if !ok {
		e.stats.rxBadChecksum.Add(1)
		e.dropFrag(i)
		return
	}
	e.rxExtra = append(e.rxExtra, d.pieces...)
	e.heldFrags = append(e.heldFrags[:i], e.heldFrags[i+1:]...)
}

// dropFrag drops the held datagram e.heldFrags[i], all its fragments.
func (e *Endpoint) dropFrag(i int) {
	for _, h := range e.heldFrags[i].pieces {
		h.pkt.DecRef()
		e.stats.rxDropped.Add(1)
	}
	e.heldFrags = append(e.heldFrags[:i], e.heldFrags[i+1:]...)
}
