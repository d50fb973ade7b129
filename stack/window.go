package stack

import (
	"encoding/binary"
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/skylane/skylane/packet"
)

// Receive windows: netstack may retract its advertised window, and then
// refuse the ACKs its peer sends from inside the window it retracted (the
// package doc tells the story). The endpoint sees every segment netstack
// sends, so it knows the window netstack last advertised and the furthest
// edge it ever advertised; a pure ACK from the peer whose sequence number
// lies past the last advertised window but within that edge gets a
// sequence number netstack accepts before netstack sees it: RCV.NXT when
// the window is zero, else the last byte of the window. netstack then
// takes its acknowledgement (RFC 9293 §3.10.7.4: "special allowance should
// be made to accept valid ACKs"). A pure ACK carries no data: its sequence
// number only decides whether netstack looks at it (netstack takes the
// peer's window from every segment it accepts, whatever its number).

// advert is what netstack last advertised on one TCP connection.
type advert struct {
	ack        uint32 // ACK of the last segment netstack sent: its RCV.NXT then
	last       uint32 // ack + window << scale of that segment: the window's right edge
	edge       uint32 // the furthest right edge it ever advertised
	advertised bool   // last and edge are set
	scale      uint8  // netstack's receive window scale: 0 until both SYNs showed the option
	ourWS      int8   // the window scale netstack's SYN offered; -1: none
}

// windows holds an advert per TCP connection netstack opened or accepted,
// keyed by the local side's 5-tuple: made by netstack's SYN or SYN-ACK,
// gone with the connection's flow (forget).
type windows struct {
	mu sync.Mutex
	m  map[packet.Key]*advert // guarded by mu
}

func (w *windows) forget(k packet.Key) {
	w.mu.Lock()
	delete(w.m, k)
	w.mu.Unlock()
}

// sent records the TCP header th of a segment netstack sends on k.
func (w *windows) sent(k packet.Key, th []byte) {
	if len(th) < header.TCPMinimumSize {
		return
	}
	t := header.TCP(th)
	flags := t.Flags()
	w.mu.Lock()
	defer w.mu.Unlock()
	if flags&header.TCPFlagSyn != 0 {
		// A new connection (or a SYN sent again). RFC 7323 §2.2: scaling
		// is on only when both SYNs carry the option, and netstack's
		// SYN-ACK carries it only when the peer's SYN did; after a SYN,
		// the peer's SYN-ACK decides (received).
		a := &advert{ourWS: -1}
		if ws := header.ParseSynOptions(t.Options(), flags&header.TCPFlagAck != 0).WS; ws >= 0 {
			a.ourWS = int8(min(ws, header.MaxWndScale))
			if flags&header.TCPFlagAck != 0 {
				a.scale = uint8(a.ourWS)
			}
		}
		if w.m == nil {
			w.m = make(map[packet.Key]*advert)
		}
		w.m[k] = a
		return // a SYN's window is never scaled, and it acknowledges no data yet
	}
	if flags&header.TCPFlagAck == 0 || flags&header.TCPFlagRst != 0 {
		return
	}
	a := w.m[k]
	if a == nil {
		return // not seen from its SYN: leave it alone
	}
	a.ack = t.AckNumber()
	a.last = a.ack + uint32(t.WindowSize())<<a.scale
	if !a.advertised || seqAfter(a.last, a.edge) {
		a.edge = a.last
	}
	a.advertised = true
}

// received looks at a TCP segment b (an IP packet, parsed in p) arriving
// on the local 5-tuple k, and rewrites its sequence number as the
// file comment says. It reports whether it did.
func (w *windows) received(k packet.Key, b []byte, p *packet.Parsed) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	a := w.m[k]
	if a == nil {
		return false
	}
	if p.Flags&(packet.TCPSyn|packet.TCPAck) == packet.TCPSyn|packet.TCPAck {
		// The SYN-ACK answering netstack's SYN: scaling is on if it
		// carries the option too.
		if a.ourWS >= 0 && hasWS(b[p.L4Off+header.TCPMinimumSize:p.L4Off+p.L4HdrLen]) {
			a.scale = uint8(a.ourWS)
		}
		return false
	}
	if !a.advertised {
		return false
	}
	// A pure ACK: no data, no SYN, FIN or RST (those keep their numbers).
	if p.Flags&(packet.TCPSyn|packet.TCPFin|packet.TCPRst|packet.TCPUrg) != 0 || p.Flags&packet.TCPAck == 0 ||
		p.L3Off+p.IPLen != p.L4Off+p.L4HdrLen {
		return false
	}
	// netstack accepts an empty segment at RCV.NXT, or anywhere inside a
	// window that is not zero; RCV.NXT is a.ack, or a little past it when
	// netstack took data it has not acknowledged yet, but never past the
	// last edge while the ACK saying so has not been sent.
	to := a.ack
	if a.last != a.ack {
		to = a.last - 1
	}
	if seqAfter(to, p.Seq) || p.Seq == to || seqAfter(p.Seq, a.edge) {
		return false // inside the window already, or past anything advertised
	}
	setSeq(b[p.L4Off:], p.Seq, to)
	return true
}

// rxWindow applies windows.received to a received TCP segment, parsed in
// e.rxParsed, whose copy for netstack is payload. Called with e.mu held,
// from the service goroutine.
func (e *Endpoint) rxWindow(payload *buffer.Buffer) {
	p := &e.rxParsed
	pure := p.L3Off+p.IPLen == p.L4Off+p.L4HdrLen
	if !pure && p.Flags&packet.TCPSyn == 0 {
		return // data: its sequence number stays (see the package doc)
	}
	v, ok := payload.PullUp(0, p.L4Off+p.L4HdrLen) // the copy's own memory
	if !ok {
		return
	}
	if e.wins.received(p.RxKey(), v.AsSlice(), p) {
		e.stats.rxRetractedACKs.Add(1)
	}
}

// hasWS reports whether the TCP options opts hold a window scale option.
func hasWS(opts []byte) bool {
	for i := 0; i < len(opts); {
		switch opts[i] {
		case header.TCPOptionEOL:
			return false
		case header.TCPOptionNOP:
			i++
			continue
		case header.TCPOptionWS:
			return true
		}
		if i+1 >= len(opts) || opts[i+1] < 2 {
			return false
		}
		i += int(opts[i+1])
	}
	return false
}

// setSeq replaces the sequence number old of the TCP header t by seq and
// updates its checksum incrementally (RFC 1624), so it stays valid without
// a pass over the segment.
func setSeq(t []byte, old, seq uint32) {
	binary.BigEndian.PutUint32(t[4:8], seq)
	sum := ^binary.BigEndian.Uint16(t[16:18])
	sum = checksum.Combine(sum, ^uint16(old>>16))
	sum = checksum.Combine(sum, ^uint16(old))
	sum = checksum.Combine(sum, uint16(seq>>16))
	sum = checksum.Combine(sum, uint16(seq))
	binary.BigEndian.PutUint16(t[16:18], ^sum)
}

// seqAfter reports whether sequence number a comes after b (RFC 1982
// serial arithmetic).
func seqAfter(a, b uint32) bool { return int32(a-b) > 0 }
