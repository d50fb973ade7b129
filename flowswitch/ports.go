package flowswitch

import (
	"fmt"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/regulate"
)

// Control methods. Each takes the switch's lock, so it is safe from any
// goroutine while a datapath method (Round, RxOnce, ...) runs on another: it
// waits for the end of the current step and takes effect between two input
// batches, when no flow has packets queued.

// AddPort binds a new user port to ch and returns its ID; IDs are never
// reused. From now on the switch owns ch's nexus end (it calls Alloc,
// Deliver, TakeTX and Sync on it from the datapath): the caller may only
// Close it, after RemovePort. Give ch at least
// Options.AdvisorySlots advisory entries.
//
// The port's app is taken not to honour flow advisories: with Regulation
// its flows are dropped early rather than suspended. AddPortWith says
// otherwise.
func (s *Switch) AddPort(ch *channel.Channel) flow.PortID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addPort(ch)
}

func (s *Switch) addPort(ch *channel.Channel) flow.PortID {
	id := flow.PortID(len(s.ports))
	p := &port{
		id:      id,
		ch:      ch,
		bufSize: ch.Pool().BufferSize(),
		pending: make([]channel.Buf, 0, s.batch),
	}
	if s.reg != nil {
		p.reg.stall, _ = regulate.NewStallDetector(s.reg.stallTimeout)
	}
	p.reg.segsPerSlot = max(1, (p.bufSize+s.tx.mtu-1)/s.tx.mtu)
	s.ports = append(s.ports, p)
	// Never an advisory index the channel's table does not have.
	s.table.SetPortSlots(id, ch.Advisories())
	return id
}

// RemovePort unbinds port p (its channel closed or defunct, or its app
// gone): every flow of p is torn down, and the switch no longer touches
// p's channel, which the caller then closes. The datapath's owner calls it
// when the port's channel turns defunct (channel.Channel.Sync fails).
// Errors: ErrNoPort.
func (s *Switch) RemovePort(p flow.PortID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.portOf(p) == nil {
		return fmt.Errorf("remove port %d: %w", p, ErrNoPort)
	}
	s.removePort(p)
	return nil
}

// removePort is RemovePort with s.mu held, for a port that exists.
func (s *Switch) removePort(id flow.PortID) {
	p := s.ports[id]
	// Port event (docs/design.md §5.3): the port's queued packets are released.
	// Control runs between input batches, so this only matters if a
	// datapath step ever removes a port mid-batch; the buffers go back to
	// the pool either way.
	if len(p.pending) > 0 {
		p.ch.Release(p.pending)
		clear(p.pending)
		p.pending = p.pending[:0]
	}
	for _, e := range s.table.TeardownPort(id) {
		s.forget(e, nil) // its queued packets go; its table goes with the channel
	}
	s.table.SetPortSlots(id, -1)
	s.ports[id] = nil
	s.stats.PortsRemoved++
	// Stats sums the live ports' ring drops: keep this one's.
	s.stats.RxRingDrops += p.ch.Counters().RxDrops
}

// portOf returns port id, or nil if it is HostPort, unknown or removed.
func (s *Switch) portOf(id flow.PortID) *port {
	if int(id) >= len(s.ports) {
		return nil
	}
	return s.ports[id]
}

// Register registers a flow for port (see flow.Table.Register for the
// checks and errors). The port must have been returned by AddPort and not
// removed (ErrNoPort). The entry's immutable accessors (ID, Token,
// AdvisoryIndex, Port, Key, Kind) may be read from any goroutine; its
// counters and state only inside Do, or from Snapshot.
func (s *Switch) Register(p flow.PortID, key packet.Key, kind flow.Kind) (*flow.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.portOf(p) == nil {
		return nil, fmt.Errorf("register on port %d: %w", p, ErrNoPort)
	}
	e, err := s.table.Register(flow.Request{Port: p, Key: key, Kind: kind})
	if err == nil {
		s.listen.registered(key, kind, s.now())
	}
	return e, err
}

// Teardown tears flow e down (flow.Table.Teardown): its packets are no
// longer delivered, and packets its port still sends with its flow ID and
// key are counted as TxDrops.TornDown. With Regulation, its packets still
// in the AQM are discarded (Forgotten) and its advisory entry cleared.
// Tearing down twice does nothing.
func (s *Switch) Teardown(e *flow.Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e == nil || !e.Active() {
		return
	}
	p := s.portOf(e.Port())
	if p != nil {
		p.tx.torn.add(e.ID(), e.Key())
	}
	s.table.Teardown(e)
	s.forget(e, p)
}

// Do runs f with the switch's lock held: between two datapath steps (two
// Rounds), with none running. Inside f, the flow table (Table) and the mutable
// parts of its entries (Counters, LastFlags, State) may be read. f must not
// call the Switch's methods: they take the same lock.
func (s *Switch) Do(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

// Table returns the switch's flow table. It is guarded by the switch's
// lock: use it inside Do, or while no datapath method runs.
func (s *Switch) Table() *flow.Table { return s.table }

// tornRecent is how many recently torn-down flows a port remembers, so that
// a packet its app still sends on one counts as TxDrops.TornDown rather
// than as a spoof (NoFlow, SrcPort): 16 covers the connections a stack
// closes between two transmit syncs; an older one counts by what it now
// looks like. The record is searched only for packets that failed the
// flow lookup, so its size costs nothing on the valid path.
const tornRecent = 16

// tornFlows is a port's ring of recently torn-down flows.
type tornFlows struct {
	ids  [tornRecent][16]byte
	keys [tornRecent]packet.Key
	n    int // records written; the newest is at (n-1) % tornRecent
}

func (t *tornFlows) add(id [16]byte, k packet.Key) {
	i := t.n % tornRecent
	t.ids[i], t.keys[i] = id, k
	t.n++
}

// has reports whether a torn-down flow with this ID had key k, or was a
// listener whose key k's listener masks give.
func (t *tornFlows) has(id *[16]byte, k *packet.Key) bool {
	for i := range min(t.n, tornRecent) {
		if t.ids[i] != *id {
			continue
		}
		tk := &t.keys[i]
		if tk.Equal(k) {
			return true
		}
		l3, l2 := k.Listener3(), k.Listener2()
		return tk.Equal(&l3) || tk.Equal(&l2)
	}
	return false
}
