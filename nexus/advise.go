package nexus

import (
	"fmt"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

// Advise sets the advisory of the flow registered under key, whichever port
// holds it (docs/design.md §7): suspended marks it SUSPENDED in the port's advisory
// table, so the app's stack holds the flow's packets back; false clears the
// mark, so it sends them. A change posts an advisory event, which wakes the
// app (its bell, or its channel's eventfd).
//
// The switch's regulation layer (flowswitch.Options.Regulation) drives
// advisories itself, on the worker, as its queue builds and drains. Advise is for tests, tools and
// operators; a regulating queue's next transition of the flow overrides it.
// Errors: ErrNoFlow, ErrClosed.
func (n *Nexus) Advise(key packet.Key, suspended bool) error {
	state := channel.AdvisoryNone
	if suspended {
		state = channel.AdvisorySuspended
	}
	err := n.do(func() error {
		p, e := n.flowOf(key)
		if e == nil {
			return ErrNoFlow
		}
		if e.AdvisoryIndex() == flow.NoAdvisory {
			return fmt.Errorf("flow has no advisory slot (its port had all of flowswitch.Options.AdvisorySlots taken when it registered): %w", ErrNoFlow)
		}
		return p.ch.SetAdvisory(int(e.AdvisoryIndex()), state)
	})
	if err != nil {
		return fmt.Errorf("nexus: advise %v: %w", key, err)
	}
	return nil
}

// FlowStats are one flow's figures as the nexus sees them.
type FlowStats struct {
	Port     string // the owner port's channel name
	Advisory uint32 // the flow's entry in that port's advisory table
	// Counters: In is what the switch delivered to the port, Out what the
	// port sent that passed the transmit checks.
	Counters flow.Counters
}

// Flow returns the figures of the flow registered under key, whichever port
// holds it. Errors: ErrNoFlow, ErrClosed.
func (n *Nexus) Flow(key packet.Key) (FlowStats, error) {
	var fs FlowStats
	err := n.do(func() error {
		p, e := n.flowOf(key)
		if e == nil {
			return ErrNoFlow
		}
		fs = FlowStats{Port: p.ch.Name(), Advisory: e.AdvisoryIndex()}
		n.sw.Do(func() { fs.Counters = e.Counters() })
		return nil
	})
	if err != nil {
		return fs, fmt.Errorf("nexus: flow %v: %w", key, err)
	}
	return fs, nil
}

// flowOf finds the port that registered key, and the flow. Worker only.
func (n *Nexus) flowOf(key packet.Key) (*port, *flow.Entry) {
	for _, p := range n.order {
		if e := p.flows[key]; e != nil {
			return p, e
		}
	}
	return nil, nil
}
