package channel

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Flow advisories (docs/design.md §7). The table has Descriptor.Advisories entries
// of AdvisoryLen bytes: the state word (offset 0) and a generation that
// counts its changes (offset 4). Only the nexus writes it; the app maps it
// read-only and reads each word with one atomic load.
//
// Bit 0 of the state word is SUSPENDED: the nexus asks the flow's sender to
// pause. The other bits are reserved and ignored by App.Admissible, so a
// later state (a rate hint, say) does not stop an older app's flows.
const (
	AdvisoryNone      uint32 = 0
	AdvisorySuspended uint32 = 1 // the nexus asks the flow's sender to pause
)

// FlowInfo is what an app needs to send on a flow it registered over this
// channel: the flow ID to stamp into the user metadata of every packet of
// the flow (TxMetaFlowIDOff), and the flow's entry in the
// channel's advisory table (App.Admissible). The nexus hands it out when
// it registers the flow; both stay fixed for the flow's life.
type FlowInfo struct {
	ID       [16]byte
	Advisory uint32
}

// SetAdvisory writes entry i of the flow-advisory table and, when the state
// changes, posts an EventAdvisory so a waiting app looks at it. The word is
// written before the event is posted: an app that sees the event (or looks
// at the table on its own) reads the new state.
func (c *Channel) SetAdvisory(i int, state uint32) error {
	if c.err != nil {
		return c.err
	}
	if i < 0 || i >= c.desc.Advisories {
		return fmt.Errorf("channel %q: advisory %d outside the table of %d", c.name, i, c.desc.Advisories)
	}
	w := (*uint32)(unsafe.Pointer(&c.adv[i*AdvisoryLen]))
	if old := atomic.SwapUint32(w, state); old != state {
		gen := (*uint32)(unsafe.Pointer(&c.adv[i*AdvisoryLen+4]))
		atomic.AddUint32(gen, 1)
		switch was, is := old&AdvisorySuspended != 0, state&AdvisorySuspended != 0; {
		case is && !was:
			c.c.Suspends++
		case was && !is:
			c.c.Resumes++
		}
		c.Post(Event{Kind: EventAdvisory, Arg: uint32(i)})
	}
	return nil
}

// Advisory reads entry i of the flow-advisory table (read-only to the app):
// the flow's state and how many times it changed.
func (a *App) Advisory(i int) (state, generation uint32, err error) {
	if i < 0 || i >= a.desc.Advisories {
		return 0, 0, fmt.Errorf("channel %q: advisory %d outside the table of %d", a.desc.Name, i, a.desc.Advisories)
	}
	b := a.maps[1].Bytes()
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[i*AdvisoryLen]))),
		atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[i*AdvisoryLen+4]))), nil
}

// Admissible reports whether the flow with advisory entry i may send now:
// false only while the nexus has it SUSPENDED. It is one atomic load, cheap
// enough for every packet, and safe from any goroutine until Close.
//
// An index outside the table reads as admissible. The advisory is a request
// to pause, not a gate: the nexus never relies on it (a flow that ignores
// it meets the queue's drops, as traffic without an advisory does), whereas
// an app that held a flow on an entry the nexus can never clear would stall
// that flow for good. The index comes from the nexus (FlowInfo.Advisory)
// and the table's size from the descriptor, both checked here, so no value
// in shared memory can make this read outside the mapping.
func (a *App) Admissible(i uint32) bool {
	if i >= uint32(a.desc.Advisories) || a.closed.Load() {
		return true
	}
	b := a.maps[1].Bytes()
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[i*AdvisoryLen])))&AdvisorySuspended == 0
}
