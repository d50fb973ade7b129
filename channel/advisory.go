package channel

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Advisory states of a flow (DESIGN §7), in the flow-advisory table.
const (
	AdvisoryNone      uint32 = 0
	AdvisorySuspended uint32 = 1 // the nexus asks the flow's sender to pause
)

// SetAdvisory writes entry i of the flow-advisory table and, when the state
// changes, posts an EventAdvisory so a waiting app looks at it.
func (c *Channel) SetAdvisory(i int, state uint32) error {
	if c.err != nil {
		return c.err
	}
	if i < 0 || i >= c.desc.Advisories {
		return fmt.Errorf("channel %q: advisory %d outside the table of %d", c.name, i, c.desc.Advisories)
	}
	w := (*uint32)(unsafe.Pointer(&c.adv[i*AdvisoryLen]))
	if atomic.SwapUint32(w, state) != state {
		gen := (*uint32)(unsafe.Pointer(&c.adv[i*AdvisoryLen+4]))
		atomic.AddUint32(gen, 1)
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
