package flowswitch

import (
	"encoding/binary"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

// The transmit checks (see tx.go): the fast path over a TX batch, and the
// full checks of one packet.

// txChecks checks the copies (t.copies[i][:t.lens[i]]), sent on port p, and appends those
// that pass to the output batch. The fast path (see above) checks the whole
// batch against the port's template in one call, then frames each run of
// packets that need no other check in a tight loop (fastRun); a packet it
// does not take goes through txCheck, which may refill the port's cache
// (and the rest of the batch is matched again).
func (s *Switch) txChecks(p *port, n int) {
	t := &s.tx
	var (
		e      *flow.Entry
		id     [channel.TxMetaFlowIDLen]byte
		simple bool // e is a Connected flow: no listener check
	)
	for i := 0; i < n; {
		if p.tx.entry != e {
			e = p.tx.entry
			if e != nil && p.tx.ver != s.table.Version() {
				e, p.tx.entry = nil, nil
			}
			if e != nil {
				id, simple = e.ID(), e.Kind() == flow.Connected
				p.tx.tmpl.MatchEach(t.copies[i:n], t.lens[i:n], t.ipLens[i:n], t.mflags[i:n])
			}
		}
		if e != nil && simple {
			if j := t.fastRun(e, &id, p.tx.tcp, p.tx.v6, i, n); j > i {
				i = j
				continue
			}
		}
		if ipLen := t.ipLens[i]; e != nil && ipLen > 0 && t.ids[i] == id &&
			(ipLen <= t.mtu || t.superOK(i, p.tx.tcp, p.tx.v6)) {
			s.txPass(e, i, ipLen, t.mflags[i], p.tx.tcp, p.tx.v6)
		} else {
			s.txCheck(p, i)
		}
		i++
	}
}

// fastRun frames packets i, i+1, ... of the batch while they need no check
// beyond what Template.MatchEach did (t.ipLens, t.mflags): a flow ID equal
// to id, no SYN, and within the MTU or a super packet superOK accepts, for
// Connected flow e (of the template's protocol, tcp, and family, v6). It
// returns the first packet it did not take.
func (t *txState) fastRun(e *flow.Entry, id *[channel.TxMetaFlowIDLen]byte, tcp, v6 bool, i, n int) int {
	hdr, l2Len, mtu := t.hdr, t.l2Len, t.mtu
	frames, ids, ipLens, mflags := t.frames[:n], t.ids[:n], t.ipLens[:n], t.mflags[:n]
	le := binary.LittleEndian
	id0, id1 := le.Uint64(id[0:8]), le.Uint64(id[8:16])
	et := etherType(v6)
	out := t.out
	var bytes uint64
	j := i
	for ; j < n; j++ {
		ipLen := ipLens[j]
		if ipLen == 0 || mflags[j]&packet.TCPSyn != 0 ||
			le.Uint64(ids[j][0:8]) != id0 || le.Uint64(ids[j][8:16]) != id1 {
			break
		}
		if ipLen > mtu {
			if !t.superOK(j, tcp, v6) {
				break
			}
			t.outSeg[len(out)] = t.segs[j]
			t.supers++
		}
		f := frames[j]
		if l2Len == ethHeaderLen {
			binary.BigEndian.PutUint16(f[hdr-2:hdr], et)
		}
		out = append(out, f[hdr-l2Len:hdr+ipLen])
		bytes += uint64(ipLen)
	}
	if j > i {
		t.out = out
		t.flags = append(t.flags, mflags[i:j]...)
		t.addRun(e, j-i, bytes)
	}
	return j
}

// superOK reports whether copy i, which a template of protocol tcp and
// family v6 matched with an IP length above the MTU, is a super packet the
// checks accept: TCP, with a segmentation size of at least channel.MinSegSize that
// keeps each segment (its headers, which the template says carry no IP
// options or extension headers, plus the size) within the MTU. txCheck
// applies the same rule to a parsed packet.
func (t *txState) superOK(i int, tcp, v6 bool) bool {
	seg := t.segs[i]
	if !tcp || seg < channel.MinSegSize {
		return false
	}
	ipHdr := 20
	if v6 {
		ipHdr = 40
	}
	// The copy holds more than the headers: the match checked its length.
	tcpHdr := int(t.copies[i][ipHdr+12]>>4) * 4
	return ipHdr+tcpHdr+seg <= t.mtu
}

// etherType returns the EtherType of an IPv6 or IPv4 packet.
func etherType(v6 bool) uint16 {
	if v6 {
		return packet.EtherTypeIPv6
	}
	return packet.EtherTypeIPv4
}

// txCheck runs the full checks on copy i, sent on port p, and, if it
// passes, frames it, appends it to the output batch and makes its flow and
// headers the port's fast-path cache.
func (s *Switch) txCheck(p *port, i int) {
	t := &s.tx
	pkt := t.copies[i][:t.lens[i]]
	d := &s.stats.TxDrops
	// Lengths, from the IP header of the copy: more than the MTU is
	// oversize; more than was sent is a lie; less is trimmed.
	ipLen := claimedLen(pkt)
	switch {
	case ipLen < 0:
		d.Parse++
		return
	case ipLen > t.mtu && t.segs[i] == 0:
		d.MTU++
		return
	case ipLen > len(pkt):
		d.Length++
		return
	}
	pkt = pkt[:ipLen]

	ps := &s.parsed
	if err := packet.Parse(pkt, packet.RawIP, ps); err != nil {
		d.Parse++
		return
	}
	if ps.IPOptions {
		d.IPv4Options++
		return
	}
	if ipLen > t.mtu {
		// A super packet: TCP (not a fragment, no IPv6 extension
		// headers: what a segmenter takes) with a sane
		// segmentation size (see superOK).
		if ps.Proto != packet.ProtoTCP || !ps.HasL4 || ps.IsFragment() || ps.ExtHeaders != 0 {
			d.SegProto++
			return
		}
		if seg := t.segs[i]; seg < channel.MinSegSize || ps.PayloadOff-ps.L3Off+seg > t.mtu {
			d.SegSize++
			return
		}
	}
	if ps.IsLaterFragment() {
		s.txLaterFragment(p, i, ipLen, ps)
		return
	}
	var k packet.Key
	ps.TxKeyTo(&k)
	e := s.table.Lookup(&k)
	switch {
	case e == nil:
		if p.tx.torn.has(&t.ids[i], &k) {
			d.TornDown++
			return
		}
		s.noFlowReason(d, &k, p.id)
		return
	case e.Port() != p.id:
		d.NotOwner++
		return
	case !sameID(e, &t.ids[i]):
		if p.tx.torn.has(&t.ids[i], &k) {
			d.TornDown++
		} else {
			d.FlowID++
		}
		return
	case !e.Active():
		d.TornDown++ // a guard: Lookup never returns a torn-down entry
		return
	}
	tcp := ps.Proto == packet.ProtoTCP && ps.HasL4
	var fl packet.TCPFlags
	if tcp {
		fl = ps.Flags
	}
	if !s.txPass(e, i, ipLen, fl, tcp, ps.IPVersion == 6) {
		return
	}
	if ps.IsFirstFragment() {
		p.tx.frags.remember(ps, e)
	}
	if p.tx.tmpl.Set(pkt, ps) {
		p.tx.entry, p.tx.ver, p.tx.tcp, p.tx.v6 = e, s.table.Version(), tcp, ps.IPVersion == 6
	} else {
		p.tx.entry = nil // not a template (ICMP, options, ...): no fast path
	}
}

// txPass runs the checks that follow the flow lookup on copy i of flow e
// (ipLen bytes, TCP flags fl if tcp) and, if it passes, writes its L2
// header and appends it to the output batch. It reports whether it passed.
func (s *Switch) txPass(e *flow.Entry, i, ipLen int, fl packet.TCPFlags, tcp, v6 bool) bool {
	t := &s.tx
	d := &s.stats.TxDrops
	if e.Kind() != flow.Connected {
		// A listener answers handshakes and nothing else: a RST, or a
		// SYN-ACK (with no data: a SYN-ACK's payload would be data sent
		// before any flow of its own). Handshakes so need no flow of
		// their own, and a half-open connection no nexus state.
		synAck := tcp && !fl.Has(packet.TCPRst) &&
			fl&(packet.TCPSyn|packet.TCPAck|packet.TCPFin) == packet.TCPSyn|packet.TCPAck
		if !(tcp && fl.Has(packet.TCPRst)) && !(synAck && s.synAckOK(i, ipLen, v6)) {
			d.ListenerData++
			return false
		}
		if synAck {
			s.synAnswered(e.Port())
		}
	} else if tcp && fl.Has(packet.TCPSyn) && !e.AllowSYN(t.clock()) {
		d.SYNRate++
		return false
	}

	// Passed: the nexus writes the L2 header in front of the copy (the
	// MACs are there already, see txState.init).
	f := t.frames[i][t.hdr-t.l2Len : t.hdr+ipLen]
	if t.l2Len == ethHeaderLen {
		binary.BigEndian.PutUint16(f[12:14], etherType(v6))
	}
	seg := 0
	if ipLen > t.mtu {
		seg = t.segs[i] // checked by the caller (superOK or txCheck)
	}
	t.passed(f, e, fl, seg)
	return true
}

// synAckOK reports whether copy i (ipLen bytes of IP packet of family v6,
// TCP, past the length and header checks) is a SYN-ACK a listener may
// send: nothing but the TCP header after a fixed IP header (no IPv6
// extension headers, as netstack sends none), so no data.
func (s *Switch) synAckOK(i, ipLen int, v6 bool) bool {
	pkt := s.tx.copies[i]
	ipHdr := 20 // IPv4 options were refused already
	if v6 {
		if pkt[6] != packet.ProtoTCP {
			return false
		}
		ipHdr = 40
	}
	tcpHdr := int(pkt[ipHdr+12]>>4) * 4
	return tcpHdr >= 20 && ipLen == ipHdr+tcpHdr
}

// sameID reports whether id is e's flow ID, in two word compares.
func sameID(e *flow.Entry, id *[channel.TxMetaFlowIDLen]byte) bool {
	eid := e.ID()
	le := binary.LittleEndian
	return le.Uint64(eid[0:8]) == le.Uint64(id[0:8]) && le.Uint64(eid[8:16]) == le.Uint64(id[8:16])
}

// claimedLen returns the packet length the IP header of pkt claims, or -1 if
// pkt is too short to hold the fixed IP header or is not IPv4 or IPv6. An
// IPv6 jumbogram (payload length 0) claims just its fixed header, and is then
// rejected by Parse or the flow lookup.
func claimedLen(pkt []byte) int {
	if len(pkt) == 0 {
		return -1
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return -1
		}
		return int(binary.BigEndian.Uint16(pkt[2:4]))
	case 6:
		if len(pkt) < 40 {
			return -1
		}
		return 40 + int(binary.BigEndian.Uint16(pkt[4:6]))
	}
	return -1
}

// noFlowReason names why a transmitted packet matched no flow: a source
// address that is not ours, a source port this app does not hold, the right
// port under the wrong protocol, or an unregistered remote.
func (s *Switch) noFlowReason(d *TxDrops, k *packet.Key, port flow.PortID) {
	src := k.LocalAddrPort()
	if !s.table.IsLocal(src.Addr()) {
		d.SrcAddr++
		return
	}
	if o, ok := s.table.PortOwner(k.Proto, src.Port()); ok && o == port {
		d.NoFlow++
		return
	}
	other := packet.ProtoTCP
	if k.Proto == packet.ProtoTCP {
		other = packet.ProtoUDP
	}
	if o, ok := s.table.PortOwner(other, src.Port()); ok && o == port {
		d.Proto++
		return
	}
	d.SrcPort++
}
