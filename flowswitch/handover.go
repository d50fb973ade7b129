package flowswitch

import (
	"encoding/json"
	"fmt"

	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

// RestoreFlows registers a port's flows as another nexus saved them
// (flow.Table.Restore): same flow IDs and advisory slots, so the port's
// app carries on with what it holds. A takeover calls it once per port,
// right after AddPortWith. Errors: ErrNoPort, and Restore's.
func (s *Switch) RestoreFlows(p flow.PortID, saved []flow.Saved) ([]*flow.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.portOf(p) == nil {
		return nil, fmt.Errorf("restore flows on port %d: %w", p, ErrNoPort)
	}
	return s.table.Restore(p, saved)
}

// SaveStats returns the switch's own counters, for the nexus taking over
// (RestoreStats): not the ones Stats derives from the channels, the flow
// table, the neighbour resolver and the regulation layer, which carry
// their own.
func (s *Switch) SaveStats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// RestoreStats makes st, what SaveStats returned in the nexus this one
// takes over from, the switch's own counters, so that they keep growing
// across a takeover. Call it before the first Round.
func (s *Switch) RestoreStats(st Stats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st.FlowLimits, st.L2, st.Regulation = flow.Limits{}, L2Stats{}, RegulationStats{}
	s.stats = st
}

// UnmarshalJSON implements json.Unmarshaler: the object MarshalJSON
// writes (reasons by name); a name this version does not know is
// ignored.
func (p *ParseDrops) UnmarshalJSON(b []byte) error {
	var m map[string]uint64
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*p = ParseDrops{}
	for r := packet.Reason(1); r < packet.NumReasons; r++ {
		p[r] = m[r.String()]
	}
	return nil
}
