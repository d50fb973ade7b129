package flowswitch

import (
	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/reassembly"
)

// IP fragments and ICMP errors on receive (docs/design.md §8b).
//
// A fragment carries no ports but in the first of its datagram, so it
// cannot be steered alone. The input batch's fragments are set aside
// while parsing and, once the batch's other packets are queued, handed to
// the reassembler (package reassembly: bounded memory per source and in
// all, timeouts, overlaps dropped). A datagram it completes is steered by
// its first fragment's key, like any packet, and:
//
//   - of a flow: goes to that flow's app as its fragments, in offset
//     order, all or none (one Alloc, room on the ring for all), for the
//     app's stack to join: they tile the datagram the reassembler
//     checked, without gaps or overlaps, and each fits a channel buffer
//     where a 64 KiB datagram would not;
//   - of no flow: goes where unclaimed frames go (the host link, frame by
//     frame as it came; counted as kept on a netif.KernelTap, whose kernel
//     had its own copy of each; else dropped as NoFlow).
//
// A datagram counts as arriving when its set completes, at the end of its
// input batch: after the packets of its flow queued in the same batch.
//
// An ICMP or ICMPv6 error (unreachable, fragmentation needed, packet too
// big, time exceeded, parameter problem) is steered by the flow its quote
// names (packet.Parsed.QuotedKey): it reaches the app that sent the
// quoted packet, whose stack does path-MTU discovery and reports
// connection errors; other ICMP, echo requests included, stays the
// kernel's.

// rxKey stores in *k the key packet i of the input batch (parsed in p) is
// steered by: an ICMP error's quoted flow, else its own.
func (s *Switch) rxKey(i int, p *packet.Parsed, k *packet.Key) {
	if p.IsICMPError() && p.QuotedKey(s.bufs[i][:s.sizes[i]], k) {
		s.stats.ICMPErrors++
		return
	}
	p.RxKeyTo(k)
}

// fragState is the switch's reassembly state.
type fragState struct {
	r      *reassembly.Reassembler // immutable
	idx    []int32                 // the input batch's fragments, in order; cap Batch
	parsed packet.Parsed           // scratch: a completed datagram's frames
	bufs   []channel.Buf           // scratch for a datagram's Alloc
}

// init builds the reassembler for link l's frames.
func (f *fragState) init(l netif.Link, batch int, opts *reassembly.Options) error {
	o := reassembly.Options{}
	if opts != nil {
		o = *opts
	}
	o.FrameLen = netif.MaxFrameLen(l.MTU(), l.LinkType())
	r, err := reassembly.New(o)
	if err != nil {
		return err
	}
	f.r = r
	f.idx = make([]int32, 0, batch)
	f.bufs = make([]channel.Buf, 0, reassembly.DefaultMaxFragments)
	return nil
}

// rxFragments hands the input batch's fragments to the reassembler and
// steers each datagram they complete.
func (s *Switch) rxFragments() {
	f := &s.frag
	now := s.now()
	for _, i := range f.idx {
		frames := f.r.Add(now, s.bufs[i][:s.sizes[i]], &s.rx[i])
		if frames != nil {
			s.rxDatagram(frames)
		}
	}
	f.idx = f.idx[:0]
}

// rxDatagram steers a datagram the reassembler completed: frames, valid
// until its next call.
func (s *Switch) rxDatagram(frames [][]byte) {
	f := &s.frag
	q := &f.parsed
	var e *flow.Entry
	// The first fragment's ports, even when it was cut inside its L4 header.
	if packet.Parse(frames[0], s.linkType, q) == nil && (q.Proto == packet.ProtoTCP || q.Proto == packet.ProtoUDP) {
		var k packet.Key
		q.RxKeyTo(&k)
		e = s.table.Lookup(&k)
	}
	var p *port
	if e != nil {
		if id := e.Port(); int(id) < len(s.ports) {
			p = s.ports[id]
		}
	}
	if p == nil {
		s.fragNoFlow(frames)
		return
	}
	n := len(frames)
	// All or none: the ring's room for every fragment, then buffers.
	r := &p.rx
	if r.gen != s.gen {
		r.gen, r.used = s.gen, 0
		r.room = p.ch.RxRoom(s.batch)
	}
	if p.ch.RxRoom(r.used+n) < r.used+n {
		p.ch.RefuseRx(n)
		return
	}
	if cap(f.bufs) < n {
		f.bufs = make([]channel.Buf, 0, n) // MaxFragments was raised
	}
	out := f.bufs[:n]
	if got := p.ch.Alloc(out); got < n {
		p.ch.Release(out[:got])
		clear(out)
		s.stats.AllocFails += uint64(n)
		return
	}
	meta := p.ch.Pool()
	id := e.ID()
	var bytes uint64
	for j, fr := range frames {
		b := out[j]
		// Each frame parsed when it came; only its L3 part goes.
		if packet.Parse(fr, s.linkType, q) != nil || q.IPLen > len(b.Data) {
			p.ch.Release(out)
			clear(out)
			s.stats.Oversize += uint64(n)
			return
		}
		b.Data = b.Data[:copy(b.Data, fr[q.L3Off:q.L3Off+q.IPLen])]
		b.Flags = 0
		m := meta.UserMeta(b.Index)
		copy(m[channel.RxMetaFlowIDOff:channel.RxMetaFlowIDOff+channel.RxMetaFlowIDLen], id[:])
		clear(m[channel.RxMetaFlowIDOff+channel.RxMetaFlowIDLen:])
		out[j] = b
		bytes += uint64(q.IPLen)
	}
	p.pending = append(p.pending, out...)
	clear(out)
	r.used += n
	e.AddIn(uint64(n), bytes, 0)
	s.stats.Reassembled++
	if !p.touched {
		p.touched = true
		s.touchedPorts = append(s.touchedPorts, p)
	}
}

// fragNoFlow gives the frames of a datagram no flow claims to the kernel,
// as noFlow does a frame's.
func (s *Switch) fragNoFlow(frames [][]byte) {
	n := uint64(len(frames))
	switch {
	case s.host != nil:
		// Written now: the frames are the reassembler's until its next Add.
		w, _ := s.host.Write(frames) // a closed host link shows in the batch's own write
		s.stats.HostDelivered += uint64(w)
		s.stats.HostDrops += n - uint64(w)
	case s.kernTap:
		s.stats.KernelKept += n
	default:
		s.stats.NoFlow += n
	}
}
