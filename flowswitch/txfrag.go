package flowswitch

import (
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

// Fragments on transmit (docs/design.md §6, §8b). An app's stack cuts a
// datagram larger than the MTU into fragments and sends them in order;
// only the first carries the ports, and it passes the checks like any
// packet. The port remembers the datagrams of its last few first
// fragments that passed (identification, addresses, protocol, and the
// flow), and a later fragment passes only as part of one of them, on the
// same flow, still active and still the port's, with that flow's ID in
// its metadata. Anything else is TxDrops.Fragment: a later fragment can
// never carry bytes past the checks on a flow the app does not own.

// txFragMemory is how many datagrams a port remembers: a stack sends one
// datagram's fragments back to back, and a TX batch holds a few
// datagrams of at most 45 fragments each (64 KiB at an MTU of 1500).
const txFragMemory = 8

// txFrag is one remembered datagram.
type txFrag struct {
	e        *flow.Entry // nil: empty slot
	fid      [16]byte    // e's ID then: a slot reused for another flow does not match
	id       uint32
	src, dst [16]byte
	proto    uint8
	version  uint8
}

// txFrags is a port's ring of remembered datagrams.
type txFrags struct {
	ring [txFragMemory]txFrag
	next int
}

// remember records the datagram of first fragment ps, sent on flow e.
func (f *txFrags) remember(ps *packet.Parsed, e *flow.Entry) {
	f.ring[f.next] = txFrag{e: e, fid: e.ID(), id: ps.ID, src: ps.Src().As16(), dst: ps.Dst().As16(),
		proto: ps.Proto, version: ps.IPVersion}
	f.next = (f.next + 1) % txFragMemory
}

// find returns the flow of later fragment ps's datagram and its ID when
// the first fragment passed, or nil.
func (f *txFrags) find(ps *packet.Parsed) (*flow.Entry, *[16]byte) {
	src, dst := ps.Src().As16(), ps.Dst().As16()
	for i := range f.ring {
		r := &f.ring[i]
		if r.e != nil && r.id == ps.ID && r.proto == ps.Proto && r.version == ps.IPVersion && r.src == src && r.dst == dst {
			return r.e, &r.fid
		}
	}
	return nil, nil
}

// txLaterFragment checks copy i, a later fragment (parsed in ps, ipLen
// bytes) sent on port p, and passes it on its datagram's flow.
func (s *Switch) txLaterFragment(p *port, i, ipLen int, ps *packet.Parsed) {
	e, fid := p.tx.frags.find(ps)
	if e == nil || !e.Active() || e.Port() != p.id || !sameID(e, fid) || *fid != s.tx.ids[i] {
		s.stats.TxDrops.Fragment++
		return
	}
	s.txPass(e, i, ipLen, 0, false, ps.IPVersion == 6)
}
