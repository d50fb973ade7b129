package flowswitch

import (
	"fmt"

	"github.com/skylane/skylane/flow"
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
