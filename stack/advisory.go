package stack

import "github.com/skylane/skylane/channel"

// Flow advisories (docs/design.md §7). When the nexus's transmit queue builds up
// behind a flow, it marks the flow SUSPENDED in the channel's advisory table
// and posts an event; when the queue drains, it clears the mark and posts
// another. The endpoint reads the table as it takes each packet from its
// queue (one atomic load, channel.App.Admissible), so a suspension acts
// from the very next packet, whether or not the event was seen yet:
//
//   - A packet of a suspended flow is held in the flow's own queue
//     (flowRec.held) instead of going to the TX ring, with its PacketBuffer
//     reference; up to Options.MaxHeld per flow, beyond which it is dropped
//     and counted (TCP retransmits it). Netstack counts it as sent, hears no
//     acknowledgement, and stops at its window: the TCP sender is held back
//     without a packet lost in the nexus. Other flows are not held.
//   - Once a flow holds packets, its later packets queue behind them even
//     if the table shows it admissible, so the flow's order is kept.
//   - Held flows are looked at on every poll of the service goroutine that
//     finds them: an advisory event wakes it (the event ring is part of
//     what Port.Wait waits for), and a flow the table shows admissible sends
//     what it held, oldest first, as buffers allow, before newer packets.
//   - A flow torn down drops what it held (TxNoFlow); Stop drops everything
//     held (TxClosed). Every path releases the reference.

// holdLocked queues it's packet on f's held queue, taking over the
// endpoint's reference (*it is no longer valid), or drops it when f holds
// MaxHeld packets already. Endpoint.mu is held.
func (e *Endpoint) holdLocked(f *flowRec, it *txItem) {
	if len(f.held) >= e.opts.MaxHeld {
		e.stats.txHeldDrops.Add(1)
		it.pkt.DecRef()
		return
	}
	if len(f.held) == 0 {
		e.holding = append(e.holding, f)
		e.stats.flowsHeld.Add(1)
	}
	f.held = append(f.held, *it)
	e.stats.txHeld.Add(1)
}

// resumeLocked sends the packets of each held flow the advisory table shows
// admissible again, oldest first, as far as buffers allow; a flow that sent
// all it held stops holding. Endpoint.mu is held. It reports whether it
// sent anything.
func (e *Endpoint) resumeLocked() bool {
	progress := false
	for i := 0; i < len(e.holding); {
		f := e.holding[i]
		if f.pending || !e.app.Admissible(f.adv) {
			i++
			continue
		}
		for len(f.held) > 0 {
			it := &f.held[0]
			if len(e.spare) == 0 {
				if e.allocLocked(min(len(f.held), spareMax)); len(e.spare) == 0 || e.appErr != nil {
					return progress // out of buffers: the rest waits, held
				}
			}
			e.emitLocked(it, f.id)
			f.held = f.held[1:]
			e.stats.txHeldSent.Add(1)
			progress = true
		}
		e.unholdLocked(f) // swaps the last flow into i
		e.stats.flowsResumed.Add(1)
	}
	return progress
}

// unholdLocked takes f, whose held queue is empty (or was just dropped),
// off the holding list. Endpoint.mu is held.
func (e *Endpoint) unholdLocked(f *flowRec) {
	f.held = nil // drop the backing array: holding is the exception
	for i, g := range e.holding {
		if g == f {
			last := len(e.holding) - 1
			e.holding[i] = e.holding[last]
			e.holding[last] = nil
			e.holding = e.holding[:last]
			return
		}
	}
}

// dropHeld releases the references of every packet f holds and returns how
// many there were; f stays on the holding list (the caller takes it off, or
// clears the list). Endpoint.mu is held.
func (f *flowRec) dropHeld() int {
	n := len(f.held)
	for i := range f.held {
		f.held[i].pkt.DecRef()
		f.held[i] = txItem{}
	}
	f.held = nil
	return n
}

// countAdvisories counts the advisory events among evs. The events need no
// other handling: the table is the truth and every poll reads it.
func (e *Endpoint) countAdvisories(evs []channel.Event) {
	n := 0
	for _, ev := range evs {
		if ev.Kind == channel.EventAdvisory {
			n++
		}
	}
	if n > 0 {
		e.stats.advisoryEvents.Add(uint64(n))
	}
}
