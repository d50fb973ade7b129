package flowswitch

import (
	"fmt"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
)

// stallCheck runs every stallEvery: a port whose app left its RX ring
// undrained while packets waited for it, for StallTimeout, is defunct
// (channel.ReasonStalled: the app is told, the channel's memory returned)
// and removed.
//
// The channel does not expose its RX ring's occupancy, so "packets wait"
// and "undrained" are read from its counters: packets wait when the
// channel refused some (RxDrops: ring full; AllocFails: the app holds
// every buffer) since the app last showed it drains, and the app drains
// when RxPackets (the ring had room) or Reclaimed (it freed buffers)
// moves. A slow app that drains at all is not stalled; an idle one with
// nothing arriving is not either. The stall is timed from the first check
// that sees a refusal with no drain since, so it is declared within the
// timeout plus two check periods of the first refusal. The one stall it
// cannot see is a ring that holds packets without ever filling (nothing
// is refused): that needs the ring's occupancy from the channel.
func (s *Switch) stallCheck(now int64) {
	r := s.reg
	if r.stallEvery == 0 || now < r.nextStall {
		return
	}
	r.nextStall = now + r.stallEvery
	for id, p := range s.ports {
		if p == nil {
			continue
		}
		c := p.ch.Counters()
		consumed := c.RxPackets + c.Reclaimed
		refused := c.RxDrops + c.AllocFails
		if consumed != p.reg.lastConsumed {
			p.reg.lastConsumed, p.reg.refusedBase = consumed, refused
		}
		waiting := int(min(refused-p.reg.refusedBase, 1<<30))
		if !p.reg.stall.Check(waiting, consumed, now) {
			continue
		}
		r.stats.Stalled++
		p.ch.Defunct(channel.ReasonStalled, fmt.Sprintf("rx ring undrained for %v while packets waited", r.stallTimeout))
		s.removePort(flow.PortID(id))
	}
}
