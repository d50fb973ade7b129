package stack

import (
	"runtime"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/packet"
)

// Receive path: the service goroutine polls the port and sleeps in
// Port.Wait when a poll found nothing; each poll takes channel events, sends
// what WritePackets left queued and what resumed flows held, and delivers
// one RX batch to netstack.

// serve is the service goroutine: it polls the port and sleeps in
// Port.Wait when a poll found nothing.
func (e *Endpoint) serve() {
	defer e.wg.Done()
	for {
		select {
		case <-e.stop:
			return
		default:
		}
		if e.poll() || e.spin() {
			continue
		}
		if err := e.port.Wait(e.poll, 0); err != nil {
			e.fail(err)
			<-e.stop // nothing more to serve: wait to be stopped
			return
		}
	}
}

// spin polls for up to the busy-poll budget (Options.BusyPoll), yielding
// the CPU between polls, and reports whether a poll found work.
func (e *Endpoint) spin() bool {
	if e.opts.BusyPoll <= 0 {
		return false
	}
	for end := time.Now().Add(e.opts.BusyPoll); time.Now().Before(end); {
		runtime.Gosched()
		if e.poll() {
			return true
		}
	}
	return false
}

func (e *Endpoint) fail(err error) {
	e.mu.Lock()
	if e.appErr == nil {
		e.appErr = err
	}
	e.mu.Unlock()
}

// poll does one round of the service goroutine's work: channel events, the
// queued TX packets, and one RX batch delivered to netstack. It reports
// whether it did anything.
func (e *Endpoint) poll() bool {
	select {
	case <-e.stop:
		return true // let serve see it
	default:
	}
	e.mu.Lock()
	if e.appErr != nil || e.stopped {
		e.mu.Unlock()
		return false
	}
	did := false
	if n, err := e.app.Events(e.events); err != nil {
		e.appErr = err
	} else if n > 0 {
		// Segment events are handled by App.Events itself; an
		// advisory's flow is looked at by flushLocked below, in the
		// table, which says where the flow stands now.
		e.countAdvisories(e.events[:n])
		did = true
	}
	if len(e.freeq) > 0 {
		did = e.freeLocked(nil) || did
	}
	if len(e.pending) > 0 || len(e.ready) > 0 || len(e.holding) > 0 {
		did = e.flushLocked() || did
	}
	n := 0
	if e.appErr == nil {
		var err error
		if n, err = e.app.Receive(e.rxBufs); err != nil {
			e.appErr = err
			n = 0
		}
	}
	for i, b := range e.rxBufs[:n] {
		e.rxPkts[i], e.rxProtos[i] = nil, 0
		switch header.IPVersion(b.Data) {
		case header.IPv4Version:
			e.rxProtos[i] = header.IPv4ProtocolNumber
		case header.IPv6Version:
			e.rxProtos[i] = header.IPv6ProtocolNumber
		default:
			continue
		}
		frag := false
		if e.opts.ChecksumOffload && b.Flags&channel.FlagCsumValid == 0 {
			// netstack was told not to verify (Capabilities): a
			// packet from a device is verified here, before
			// rxWindow may rewrite it; a TCP or UDP fragment with
			// the rest of its datagram (fragcsum.go).
			if !packet.ChecksumsValid(b.Data) {
				e.stats.rxBadChecksum.Add(1)
				continue
			}
			p := &e.rxParsed
			frag = packet.Parse(b.Data, packet.RawIP, p) == nil && p.IsFragment() &&
				(p.Proto == packet.ProtoTCP || p.Proto == packet.ProtoUDP)
		}
		if frag {
			pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buffer.MakeWithData(b.Data)})
			e.rxFrag(&e.rxParsed, b.Data, pkt, e.rxProtos[i])
			e.rxProtos[i] = 0 // held, not dropped
			continue
		}
		payload := buffer.MakeWithData(b.Data)
		if e.rxHint(b.Data) {
			e.rxWindow(&payload)
		}
		e.rxPkts[i] = gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: payload})
	}
	if n > 0 {
		e.freeLocked(e.rxBufs[:n])
		clear(e.rxBufs[:n])
	}
	extra := e.rxExtra
	e.rxExtra = nil
	e.mu.Unlock()
	if n == 0 {
		return did
	}
	e.stats.rxPolls.Add(1)
	e.dmu.RLock()
	d := e.dispatcher
	e.dmu.RUnlock()
	var pkts, bytes uint64
	for i, pkt := range e.rxPkts[:n] {
		if pkt == nil {
			if e.rxProtos[i] != 0 { // else held (fragcsum.go)
				e.stats.rxDropped.Add(1)
			}
			continue
		}
		if d != nil {
			pkts++
			bytes += uint64(pkt.Size())
			d.DeliverNetworkPacket(e.rxProtos[i], pkt)
		} else {
			e.stats.rxDropped.Add(1)
		}
		pkt.DecRef()
		e.rxPkts[i] = nil
	}
	for _, h := range extra {
		if d != nil {
			pkts++
			bytes += uint64(h.pkt.Size())
			d.DeliverNetworkPacket(h.proto, h.pkt)
		} else {
			e.stats.rxDropped.Add(1)
		}
		h.pkt.DecRef()
	}
	e.stats.rxPackets.Add(pkts)
	e.stats.rxBytes.Add(bytes)
	return true
}

// freeLocked gives bufs back to the nexus, after any earlier ones that did
// not fit the free ring; what does not fit now waits in freeq. It reports
// whether any buffer went back.
func (e *Endpoint) freeLocked(bufs []channel.Buf) bool {
	if len(e.freeq) > 0 || e.appErr != nil {
		e.freeq = append(e.freeq, bufs...)
		bufs = e.freeq
	}
	if e.appErr != nil {
		return false
	}
	k, err := e.app.Free(bufs)
	if err != nil {
		e.appErr = err
		return false
	}
	e.port.Kick()
	if k < len(bufs) {
		rest := append([]channel.Buf(nil), bufs[k:]...)
		e.freeq = rest
	} else {
		clear(e.freeq)
		e.freeq = e.freeq[:0]
	}
	return k > 0
}

// rxHint marks a TCP flow as closing when a received segment carries FIN
// or RST, so the reaper looks at it soon. It reports whether b is a TCP
// segment, parsed in e.rxParsed.
func (e *Endpoint) rxHint(b []byte) bool {
	p := &e.rxParsed
	if packet.Parse(b, packet.RawIP, p) != nil || !p.HasL4 || p.Proto != packet.ProtoTCP {
		return false
	}
	if p.Flags&(packet.TCPFin|packet.TCPRst) != 0 {
		e.flows.hint(p.RxKey())
	}
	return true
}
