package stack

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/packet"
)

// txItem is one netstack packet accepted by WritePackets and not yet copied
// into channel buffers. The endpoint holds one reference on pkt.
type txItem struct {
	pkt   *gstack.PacketBuffer
	key   packet.Key      // its flow's key
	flags packet.TCPFlags // its TCP flags
	segs  int             // channel buffers it needs (GSO segments, or 1)
}

// WritePackets implements stack.LinkWriter.WritePackets. Each packet's
// flow is resolved first (registering it if it belongs to one of the
// endpoint's listeners, without holding the channel lock); then, under the
// lock, the packets are copied into channel buffers and sent in one batch,
// or queued behind earlier ones when the ring or the pool is full. It
// returns how many packets it accepted; the others were dropped and
// counted (no flow, oversize, queue full, stopped).
func (e *Endpoint) WritePackets(pkts gstack.PacketBufferList) (int, tcpip.Error) {
	list := pkts.AsSlice()
	var itemsArr [8]txItem
	items := itemsArr[:0]
	var firstErr tcpip.Error
	for _, pkt := range list {
		it, ok, err := e.classify(pkt)
		if err != nil && firstErr == nil {
			firstErr = err
		}
		if ok {
			items = append(items, it)
		}
	}
	accepted := 0
	e.mu.Lock()
	if e.stopped || e.appErr != nil {
		e.mu.Unlock()
		e.stats.txClosed.Add(uint64(len(items)))
		return 0, &tcpip.ErrClosedForSend{}
	}
	for _, it := range items {
		if len(e.pending) >= e.opts.MaxPending {
			e.stats.txQueueFul.Add(1)
			if firstErr == nil {
				firstErr = &tcpip.ErrNoBufferSpace{}
			}
			continue
		}
		it.pkt.IncRef()
		e.pending = append(e.pending, it)
		accepted++
	}
	e.flushLocked()
	left := len(e.pending) + len(e.ready)
	e.mu.Unlock()
	if left > 0 {
		// The service goroutine sends the rest as the nexus makes room;
		// wake it in case it sleeps on an idle RX ring.
		e.stats.txWaits.Add(1)
		e.port.Wake()
	}
	return accepted, firstErr
}

// classify finds pkt's flow and counts the channel buffers it needs. ok is
// false for a packet that must not leave; err says why, when netstack
// should hear of it.
func (e *Endpoint) classify(pkt *gstack.PacketBuffer) (_ txItem, ok bool, _ tcpip.Error) {
	key, flags, ok := txKey(pkt)
	if !ok {
		// Not a flow's (ICMP, NDP, IGMP): filtered, as a firewall would,
		// without failing netstack's send.
		e.stats.txNoFlow.Add(1)
		return txItem{}, false, nil
	}
	segs := 1
	size := pkt.Size()
	if g := pkt.GSOOptions; isTCPGSO(g) && g.MSS > 0 && pkt.Data().Size() > int(g.MSS) {
		segs = (pkt.Data().Size() + int(g.MSS) - 1) / int(g.MSS)
		size = pkt.Size() - pkt.Data().Size() + int(g.MSS)
	}
	if size > int(e.mtu.Load()) || size > e.bufLen {
		e.stats.txOversize.Add(1)
		return txItem{}, false, &tcpip.ErrMessageTooLong{}
	}
	if !e.flows.ensure(e, key, flags) {
		return txItem{}, false, nil
	}
	return txItem{pkt: pkt, key: key, flags: flags, segs: segs}, true, nil
}

// flushLocked sends what the flows the nexus let go again held back, then
// copies queued packets into channel buffers, in order, as far as buffers
// allow, holding those of suspended flows (see advisory.go), then puts the
// filled buffers on the TX ring as far as it has room. It reports whether
// it made progress.
func (e *Endpoint) flushLocked() bool {
	progress := false
	if len(e.holding) > 0 && e.appErr == nil {
		progress = e.resumeLocked()
	}
	for len(e.pending) > 0 && e.appErr == nil {
		it := &e.pending[0]
		f, ok := e.flows.stamp(it.key, it.flags)
		if !ok {
			// Reaped since WritePackets saw it: a packet of a
			// connection netstack had let go.
			e.stats.txNoFlow.Add(1)
			it.pkt.DecRef()
			*it = txItem{}
			e.pending = e.pending[1:]
			continue
		}
		// Behind packets the flow holds already, or suspended now:
		// held, so the flow keeps its order and the nexus its queue.
		if len(f.held) > 0 || !e.app.Admissible(f.adv) {
			e.holdLocked(f, it)
			*it = txItem{}
			e.pending = e.pending[1:]
			progress = true
			continue
		}
		if len(e.spare) < it.segs {
			// One Alloc for the rest of the queue (up to a TX
			// ring's worth).
			need := 0
			for i := range e.pending {
				if need += e.pending[i].segs; need >= spareMax {
					break
				}
			}
			if e.allocLocked(need); len(e.spare) < it.segs {
				break
			}
		}
		e.emitLocked(it, f.id)
		e.pending = e.pending[1:]
		progress = true
	}
	if len(e.pending) == 0 {
		e.pending = e.pending[:0:0] // drop the consumed prefix's backing array
	}
	if len(e.ready) > 0 && e.appErr == nil {
		k, err := e.app.Send(e.ready)
		if err != nil {
			e.appErr = err
			return progress
		}
		e.port.Kick() // to take them, or to make room
		if k > 0 {
			var bytes uint64
			for _, b := range e.ready[:k] {
				bytes += uint64(len(b.Data))
			}
			e.stats.txPackets.Add(uint64(k))
			e.stats.txBytes.Add(bytes)
			e.stats.txSends.Add(1)
			n := copy(e.ready, e.ready[k:])
			clear(e.ready[n:])
			e.ready = e.ready[:n]
			progress = true
		}
	}
	return progress
}

// emitLocked copies it's packet into it.segs spare buffers stamped with the
// flow ID id, queues them for the TX ring, and releases it (the endpoint's
// reference, and *it). There must be enough spare buffers.
func (e *Endpoint) emitLocked(it *txItem, id [16]byte) {
	bufs := e.spare[len(e.spare)-it.segs:]
	e.fill(it, id, bufs)
	e.ready = append(e.ready, bufs...)
	clear(bufs)
	e.spare = e.spare[:len(e.spare)-it.segs]
	it.pkt.DecRef()
	*it = txItem{}
}

// allocLocked tops the spare buffers up to need, as far as the alloc ring
// allows (App.Alloc asks the nexus for more when it falls short). Spares
// are only what a short Alloc left over: the alloc ring is the hand-ahead,
// sized by the nexus (DESIGN §2), so the endpoint hoards nothing.
func (e *Endpoint) allocLocked(need int) {
	want := need - len(e.spare)
	if want <= 0 {
		return
	}
	at := len(e.spare)
	if cap(e.spare) < need {
		e.spare = append(make([]channel.Buf, 0, max(need, spareMax)), e.spare...)
	}
	e.spare = e.spare[:need]
	k, err := e.app.Alloc(e.spare[at:])
	if err != nil {
		e.appErr = err
		k = 0
	}
	if k < want {
		e.port.Kick() // to refill the alloc ring
	}
	clear(e.spare[at+k : need])
	e.spare = e.spare[:at+k]
}

// fill copies it's packet into bufs (one buffer per segment) and stamps the
// flow ID into each buffer's user metadata.
func (e *Endpoint) fill(it *txItem, id [16]byte, bufs []channel.Buf) {
	if it.segs > 1 {
		e.stats.txGSO.Add(1)
		segment(it.pkt, bufs)
	} else {
		n := copyPacket(it.pkt, bufs[0].Data)
		bufs[0].Data = bufs[0].Data[:n]
		if isTCPGSO(it.pkt.GSOOptions) && it.pkt.GSOOptions.NeedsCsum {
			finishTCPChecksum(bufs[0].Data, len(it.pkt.NetworkHeader().Slice()))
		}
	}
	for i := range bufs {
		bufs[i].Flags = 0
		m, err := e.app.Meta(bufs[i].Index)
		if err != nil {
			// Only for a buffer outside the pool, which Alloc never
			// hands out; the channel's error is sticky.
			e.appErr = err
			continue
		}
		copy(m[flowswitch.TxMetaFlowIDOff:flowswitch.TxMetaFlowIDOff+flowswitch.TxMetaFlowIDLen], id[:])
		clear(m[flowswitch.TxMetaFlowIDOff+flowswitch.TxMetaFlowIDLen:]) // reserved: zeros
	}
}

func isTCPGSO(g gstack.GSO) bool { return g.Type == gstack.GSOTCPv4 || g.Type == gstack.GSOTCPv6 }

// copyPacket copies the whole packet (headers and payload) into dst, which
// is large enough, and returns its length.
func copyPacket(pkt *gstack.PacketBuffer, dst []byte) int {
	vl, off := pkt.AsViewList()
	n := 0
	for v := vl.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n += copy(dst[n:], b[off:])
		off = 0
	}
	return n
}

// segment cuts the TCP GSO packet pkt into len(bufs) packets of at most MSS
// payload bytes, as a NIC's TSO does: the headers are copied into each, the
// IPv4 ID counts up, the sequence number advances, FIN and PSH stay on the
// last segment and CWR on the first, and every length and checksum is
// recomputed.
func segment(pkt *gstack.PacketBuffer, bufs []channel.Buf) {
	nh := pkt.NetworkHeader().Slice()
	th := pkt.TransportHeader().Slice()
	nl, hl := len(nh), len(nh)+len(th)
	mss := int(pkt.GSOOptions.MSS)
	seq0 := binary.BigEndian.Uint32(th[4:8])
	flags := th[13]
	v4 := pkt.NetworkProtocolNumber == header.IPv4ProtocolNumber
	var id0 uint16
	if v4 {
		id0 = binary.BigEndian.Uint16(nh[4:6])
	}
	// Walk the payload views once, across the segments.
	vl, off := pkt.AsViewList()
	off += hl // skip the headers, which precede the payload
	v := vl.Front()
	for v != nil && off >= v.Size() {
		off -= v.Size()
		v = v.Next()
	}
	left := pkt.Data().Size()
	for i := range bufs {
		b := bufs[i].Data
		copy(b, nh)
		copy(b[nl:], th)
		sz := min(mss, left)
		left -= sz
		for n := hl; n < hl+sz; {
			s := v.AsSlice()[off:]
			c := copy(b[n:hl+sz], s)
			n += c
			off += c
			if off == v.Size() {
				v, off = v.Next(), 0
			}
		}
		b = b[:hl+sz]
		bufs[i].Data = b
		t := b[nl:hl]
		binary.BigEndian.PutUint32(t[4:8], seq0+uint32(i*mss))
		f := flags
		if i < len(bufs)-1 {
			f &^= uint8(header.TCPFlagFin | header.TCPFlagPsh)
		}
		if i > 0 {
			f &^= uint8(header.TCPFlagCwr)
		}
		t[13] = f
		if v4 {
			binary.BigEndian.PutUint16(b[2:4], uint16(hl+sz))
			binary.BigEndian.PutUint16(b[4:6], id0+uint16(i))
			b[10], b[11] = 0, 0
			binary.BigEndian.PutUint16(b[10:12], ^checksum.Checksum(b[:nl], 0))
		} else {
			binary.BigEndian.PutUint16(b[4:6], uint16(hl+sz-header.IPv6MinimumSize))
		}
		finishTCPChecksum(b, nl)
	}
}

// finishTCPChecksum writes the full TCP checksum of the packet b whose TCP
// header starts at nl, replacing the partial (pseudo-header only) checksum
// netstack leaves for GSO.
func finishTCPChecksum(b []byte, nl int) {
	t := b[nl:]
	var src, dst tcpip.Address
	if b[0]>>4 == 4 {
		src, dst = tcpip.AddrFrom4Slice(b[12:16]), tcpip.AddrFrom4Slice(b[16:20])
	} else {
		src, dst = tcpip.AddrFrom16Slice(b[8:24]), tcpip.AddrFrom16Slice(b[24:40])
	}
	t[16], t[17] = 0, 0
	x := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(t)))
	binary.BigEndian.PutUint16(t[16:18], ^checksum.Checksum(t, x))
}

// txKey returns the flow key of an outgoing packet (local = source) and its
// TCP flags, from the headers netstack set. ok is false for packets no flow
// can carry: no transport header, or a protocol without ports.
func txKey(pkt *gstack.PacketBuffer) (k packet.Key, flags packet.TCPFlags, ok bool) {
	nh := pkt.NetworkHeader().Slice()
	th := pkt.TransportHeader().Slice()
	var src, dst netip.Addr
	switch pkt.NetworkProtocolNumber {
	case header.IPv4ProtocolNumber:
		if len(nh) < header.IPv4MinimumSize {
			return k, 0, false
		}
		src, dst = netip.AddrFrom4([4]byte(nh[12:16])), netip.AddrFrom4([4]byte(nh[16:20]))
	case header.IPv6ProtocolNumber:
		if len(nh) < header.IPv6MinimumSize {
			return k, 0, false
		}
		src, dst = netip.AddrFrom16([16]byte(nh[8:24])), netip.AddrFrom16([16]byte(nh[24:40]))
	default:
		return k, 0, false
	}
	var proto uint8
	switch pkt.TransportProtocolNumber {
	case header.TCPProtocolNumber:
		if len(th) < header.TCPMinimumSize {
			return k, 0, false
		}
		proto, flags = packet.ProtoTCP, packet.TCPFlags(th[13])
	case header.UDPProtocolNumber:
		if len(th) < header.UDPMinimumSize {
			return k, 0, false
		}
		proto = packet.ProtoUDP
	default:
		return k, 0, false
	}
	sp, dp := binary.BigEndian.Uint16(th[0:2]), binary.BigEndian.Uint16(th[2:4])
	return packet.MakeKey(proto, netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp)), flags, true
}
