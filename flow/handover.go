package flow

import (
	"fmt"

	"github.com/skylane/skylane/packet"
)

// Saved is an entry as a nexus hands it to the one taking over from it:
// what the port's app holds (the flow ID it writes in every packet's
// metadata, the advisory slot it reads) must stay the same.
type Saved struct {
	Key      packet.Key `json:"key"`
	Kind     Kind       `json:"kind"`
	ID       [16]byte   `json:"id"`
	Advisory uint32     `json:"adv"`
	Counters Counters   `json:"counters"`
}

// Save returns e as Saved.
func (e *Entry) Save() Saved {
	return Saved{Key: e.key, Kind: e.kind, ID: e.id, Advisory: e.adv, Counters: e.counters}
}

// Restore registers a port's saved flows with their IDs and advisory
// slots, all checked as Register checks them (and each slot below the
// port's slot limit, used once); the port must hold no flow yet. On error
// the flows restored so far are torn down again.
func (t *Table) Restore(p PortID, saved []Saved) ([]*Entry, error) {
	if t.ports[p] != nil {
		return nil, fmt.Errorf("restore flows of port %d: it has flows already", p)
	}
	out := make([]*Entry, 0, len(saved))
	fail := func(err error) ([]*Entry, error) {
		for _, e := range out {
			t.Teardown(e)
		}
		return nil, err
	}
	// The kernel's sockets were checked when the flows were first
	// registered; a kernel socket that took a port since (it cannot see
	// the app's) must not cost the app its connection.
	taken := t.opts.PortTaken
	t.opts.PortTaken = nil
	defer func() { t.opts.PortTaken = taken }()
	used := make(map[uint32]bool)
	var next uint32
	for _, s := range saved {
		if s.Advisory != NoAdvisory {
			if s.Advisory >= t.slots(p) || used[s.Advisory] {
				return fail(fmt.Errorf("restore %v: advisory slot %d taken or outside the port's %d", s.Key, s.Advisory, t.slots(p)))
			}
			used[s.Advisory] = true
			next = max(next, s.Advisory+1)
		}
		e, err := t.Register(Request{Port: p, Key: s.Key, Kind: s.Kind})
		if err != nil {
			return fail(fmt.Errorf("restore: %w", err))
		}
		out = append(out, e)
	}
	// The slots as saved: those in use, the free ones below the highest.
	ps := t.ports[p]
	if ps == nil {
		return out, nil
	}
	ps.free, ps.next = nil, next
	for v := range next {
		if !used[v] {
			ps.free.push(v)
		}
	}
	for i, e := range out {
		e.id, e.adv, e.counters = saved[i].ID, saved[i].Advisory, saved[i].Counters
	}
	return out, nil
}
