package stack

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/packet"
)

// txItem is one netstack packet accepted by WritePackets and not yet copied
// into channel buffers. The endpoint holds one reference on pkt.
type txItem struct {
	pkt   *gstack.PacketBuffer
	key   packet.Key      // its flow's key
	flags packet.TCPFlags // its TCP flags
	seg   int             // segmentation size of a super packet (above the MTU), else 0
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
		key, ok = e.frags.fragTxKey(pkt) // a fragment (frag.go)
	}
	if !ok {
		// Not a flow's (ICMP, NDP, IGMP): filtered, as a firewall would,
		// without failing netstack's send.
		e.stats.txNoFlow.Add(1)
		return txItem{}, false, nil
	}
	// A packet above the MTU goes whole as a super packet when it is
	// netstack's TCP GSO and the nexus will take it: it fits one buffer,
	// and its segments (headers plus MSS) fit the MTU.
	seg, size, mtu := 0, pkt.Size(), int(e.mtu.Load())
	if g := pkt.GSOOptions; size > mtu && isTCPGSO(g) {
		seg = int(g.MSS)
		if seg < channel.MinSegSize || size-pkt.Data().Size()+seg > mtu {
			seg = -1
		}
	}
	if (size > mtu && seg <= 0) || size > e.bufLen {
		e.stats.txOversize.Add(1)
		return txItem{}, false, &tcpip.ErrMessageTooLong{}
	}
	if !e.flows.ensure(e, key, flags) {
		return txItem{}, false, nil
	}
	if key.Proto == packet.ProtoTCP {
		e.wins.sent(key, pkt.TransportHeader().Slice())
	}
	return txItem{pkt: pkt, key: key, flags: flags, seg: seg}, true, nil
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
		// Or not registered yet (registrar.go): held until it is.
		if len(f.held) > 0 || f.pending || !e.app.Admissible(f.adv) {
			e.holdLocked(f, it)
			*it = txItem{}
			e.pending = e.pending[1:]
			progress = true
			continue
		}
		if len(e.spare) == 0 {
			// One Alloc for the rest of the queue (up to a TX
			// ring's worth).
			if e.allocLocked(min(len(e.pending), spareMax)); len(e.spare) == 0 {
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

// emitLocked copies it's packet into a spare buffer stamped with the flow
// ID id, queues it for the TX ring, and releases it (the endpoint's
// reference, and *it). There must be a spare buffer.
func (e *Endpoint) emitLocked(it *txItem, id [16]byte) {
	last := len(e.spare) - 1
	e.fill(it, id, &e.spare[last])
	e.ready = append(e.ready, e.spare[last])
	e.spare[last] = channel.Buf{}
	e.spare = e.spare[:last]
	it.pkt.DecRef()
	*it = txItem{}
}

// allocLocked tops the spare buffers up to need, as far as the alloc ring
// allows (App.Alloc asks the nexus for more when it falls short). Spares
// are only what a short Alloc left over: the alloc ring is the hand-ahead,
// sized by the nexus (docs/design.md §2), so the endpoint hoards nothing.
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

// fill copies it's packet into buf, whole (a GSO packet too: the nexus or
// the link segments it), marks it channel.FlagCsumPartial with checksum
// offload, or else completes the TCP checksum netstack left partial for
// GSO, so that a super packet carried whole verifies at the far end, and
// stamps the flow ID and segmentation size into the buffer's user
// metadata.
func (e *Endpoint) fill(it *txItem, id [16]byte, buf *channel.Buf) {
	n := copyPacket(it.pkt, buf.Data)
	buf.Data = buf.Data[:n]
	buf.Flags = 0
	switch {
	case e.opts.ChecksumOffload:
		// Offload: netstack left the checksum (zero, or the pseudo
		// header for GSO) to the wire. Every packet here is TCP or UDP
		// (classify).
		buf.Flags = channel.FlagCsumPartial
	case isTCPGSO(it.pkt.GSOOptions) && it.pkt.GSOOptions.NeedsCsum:
		finishTCPChecksum(buf.Data, len(it.pkt.NetworkHeader().Slice()))
	}
	if it.seg > 0 {
		e.stats.txGSO.Add(1)
	}
	m, err := e.app.Meta(buf.Index)
	if err != nil {
		// Only for a buffer outside the pool, which Alloc never hands
		// out; the channel's error is sticky.
		e.appErr = err
		return
	}
	copy(m[channel.TxMetaFlowIDOff:channel.TxMetaFlowIDOff+channel.TxMetaFlowIDLen], id[:])
	binary.LittleEndian.PutUint16(m[channel.TxMetaSegSizeOff:], uint16(it.seg))
	clear(m[channel.TxMetaSegSizeOff+channel.TxMetaSegSizeLen:]) // reserved: zeros
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
