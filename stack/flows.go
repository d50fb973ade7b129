package stack

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

// flowRec is one flow the endpoint registered with its port, or is
// registering (pending).
type flowRec struct {
	key  packet.Key // immutable
	kind flow.Kind  // immutable
	auto bool       // immutable: registered on demand for a listener's port
	// id and adv are immutable once pending is false: the flow's ID and
	// its entry in the channel's advisory table.
	id  [16]byte
	adv uint32
	// pending: registered on demand (registrar.go) and not yet answered
	// by the nexus; its packets are held until then. Written with both
	// Endpoint.mu and flowTable.mu held, read under either. done (nil for
	// a flow registered synchronously) is closed when pending ends, err
	// set before: why the flow could not be registered, or nil.
	pending bool
	done    chan struct{}
	err     error
	// held are the flow's packets waiting for its advisory to clear or
	// its registration, oldest first; guarded by Endpoint.mu (not by
	// flowTable.mu). The flow is in Endpoint.holding exactly while held
	// is not empty.
	held []txItem
	// Guarded by flowTable.mu. A TCP 5-tuple can be reused by a new
	// connection while the reaper is deciding the old one is dead: a SYN
	// or a new Register on the flow starts a new life (gen, born), and the
	// reaper tears a flow down only if its life did not change meanwhile.
	born    time.Time
	gen     uint64
	closing bool // saw a FIN or RST: the reaper looks soon
}

// flowTable holds the endpoint's flows. Lookups take a read lock. Changes
// are serialised by reg, held across the port's Register and Teardown
// requests so that two packets of a new flow register it once and a flow is
// never registered again before its teardown reached the nexus.
//
// Lock order: reg, then Endpoint.mu, then mu. A flow leaves the map with
// Endpoint.mu held, so a packet stamped with its ID under Endpoint.mu is on
// the TX ring before the Teardown request is sent (and the nexus drains the
// ring before it tears a flow down).
type flowTable struct {
	reg     sync.Mutex
	mu      sync.RWMutex
	flows   map[packet.Key]*flowRec // guarded by mu (writes also hold reg, but for a new pending flow)
	closing map[packet.Key]struct{} // guarded by mu: TCP flows the reaper checks next
	queue   []*flowRec              // guarded by mu: pending flows the registrar has not taken yet
	kick    chan struct{}           // 1-buffered: the queue has flows
}

func (t *flowTable) init() {
	t.flows = make(map[packet.Key]*flowRec)
	t.closing = make(map[packet.Key]struct{})
	t.kick = make(chan struct{}, 1)
}

func (t *flowTable) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.flows)
}

// find returns the flow an outgoing packet with key k belongs to, as the
// flowswitch will look it up: the 5-tuple's flow, else a listener's, which
// may send only TCP RSTs and SYN-ACKs (docs/design.md §6.3): a handshake
// needs no flow of its own. need is set when k has no flow but comes from
// a listener's port: its 5-tuple must be registered first (the first
// packet of an accepted connection after its handshake, a UDP reply).
func (t *flowTable) find(k packet.Key, flags packet.TCPFlags) (f *flowRec, need bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if f = t.flows[k]; f != nil {
		return f, false
	}
	l := t.flows[k.Listener3()]
	if l == nil {
		l = t.flows[k.Listener2()]
	}
	switch {
	case l == nil:
		return nil, false
	case k.Proto == packet.ProtoTCP && flags&packet.TCPRst != 0:
		return l, false // a listener may answer with a reset
	case k.Proto == packet.ProtoTCP && flags&(packet.TCPSyn|packet.TCPAck|packet.TCPFin) == packet.TCPSyn|packet.TCPAck:
		return l, false // and a SYN (the nexus refuses one with data; netstack sends none)
	}
	return nil, true
}

// ensure makes sure an outgoing packet with key k has a flow: if it comes
// from a listener's port, its 5-tuple becomes a pending flow that the
// registrar registers (registrar.go), without waiting for it here. It
// reports false when the packet must not leave.
func (t *flowTable) ensure(e *Endpoint, k packet.Key, flags packet.TCPFlags) bool {
	f, need := t.find(k, flags)
	if f != nil {
		return true
	}
	if !need {
		e.stats.txNoFlow.Add(1)
		return false
	}
	if k.Proto == packet.ProtoTCP && e.opts.Handshaking != nil && e.opts.Handshaking(k) {
		e.stats.txHandshake.Add(1)
		return false
	}
	t.prepare(k)
	return true
}

// stamp returns the flow of a packet about to be put on the TX ring or
// held (Endpoint.mu is held): the flow may have been reaped since ensure,
// then the packet is dropped. A SYN starts a new life of a 5-tuple flow; a
// FIN or RST marks it closing.
func (t *flowTable) stamp(k packet.Key, flags packet.TCPFlags) (*flowRec, bool) {
	f, _ := t.find(k, flags)
	if f == nil {
		return nil, false
	}
	if f.key == k && k.Proto == packet.ProtoTCP && flags&(packet.TCPSyn|packet.TCPFin|packet.TCPRst) != 0 {
		t.mu.Lock()
		if flags&packet.TCPSyn != 0 {
			t.reviveLocked(f)
		} else {
			t.hintLocked(f)
		}
		t.mu.Unlock()
	}
	return f, true
}

// reviveLocked starts a new life of f. t.mu is held for writing.
func (t *flowTable) reviveLocked(f *flowRec) {
	f.gen++
	f.born = time.Now()
	f.closing = false
	delete(t.closing, f.key)
}

// hintLocked marks a TCP 5-tuple flow as closing. t.mu is held for writing.
func (t *flowTable) hintLocked(f *flowRec) {
	if f.kind == flow.Connected && !f.closing {
		f.closing = true
		t.closing[f.key] = struct{}{}
	}
}

// hint marks the flow of k, if any, as closing (a FIN or RST received).
func (t *flowTable) hint(k packet.Key) {
	t.mu.Lock()
	if f := t.flows[k]; f != nil {
		t.hintLocked(f)
	}
	t.mu.Unlock()
}

// register registers k with the port and records it. A flow the endpoint
// holds already is returned, starting a new life when registered
// explicitly (a dial reusing the 5-tuple of a connection not yet reaped).
// When the port is at its flow limit it reaps dead TCP flows once and
// retries.
func (t *flowTable) register(e *Endpoint, k packet.Key, kind flow.Kind, auto bool) (*flowRec, error) {
	f, err := t.registerOnce(e, k, kind, auto)
	if errors.Is(err, flow.ErrTooManyFlows) && e.opts.Alive != nil && t.reap(e, true) > 0 {
		f, err = t.registerOnce(e, k, kind, auto)
	}
	return f, err
}

func (t *flowTable) registerOnce(e *Endpoint, k packet.Key, kind flow.Kind, auto bool) (*flowRec, error) {
	t.reg.Lock()
	defer t.reg.Unlock()
	t.mu.Lock()
	f := t.flows[k]
	if f != nil && f.kind == kind && !auto {
		t.reviveLocked(f)
	}
	t.mu.Unlock()
	if f != nil {
		if f.kind != kind {
			return nil, fmt.Errorf("register %v as %s: held as %s: %w", k, kind, f.kind, flow.ErrPortInUse)
		}
		return f, nil
	}
	select {
	case <-e.stop:
		return nil, ErrStopped
	default:
	}
	fi, err := e.port.Register(k, kind)
	if err != nil {
		return nil, err
	}
	f = &flowRec{key: k, kind: kind, id: fi.ID, adv: fi.Advisory, born: time.Now(), auto: auto}
	t.mu.Lock()
	t.flows[k] = f
	t.mu.Unlock()
	e.stats.flowsRegistered.Add(1)
	if auto {
		e.stats.flowsAuto.Add(1)
	}
	return f, nil
}

// release tears k down (and, for a UDP listener, the reply flows registered
// on demand from its port).
func (t *flowTable) release(e *Endpoint, k packet.Key) error {
	t.reg.Lock()
	defer t.reg.Unlock()
	var keys []packet.Key
	e.mu.Lock()
	t.mu.Lock()
	f := t.flows[k]
	if f != nil {
		if f.kind != flow.Connected && k.Proto == packet.ProtoUDP {
			for ck, c := range t.flows {
				if c.auto && c.kind == flow.Connected && ck.Proto == k.Proto && ck.Version == k.Version &&
					ck.LocalPort == k.LocalPort && (f.kind == flow.Listener2 || ck.Local == k.Local) {
					keys = append(keys, ck)
				}
			}
		}
		keys = append(keys, k)
		n := 0
		for _, ck := range keys {
			if t.forgetLocked(e, ck) {
				keys[n] = ck
				n++
			}
		}
		keys = keys[:n]
	}
	t.mu.Unlock()
	e.mu.Unlock()
	if f == nil {
		return fmt.Errorf("release %v: not registered by this stack", k)
	}
	return t.teardown(e, keys)
}

// forgetLocked removes k from the table and reports whether the nexus has
// it registered (it is not pending: reg is held, so the registrar is not
// registering it). reg, Endpoint.mu and t.mu are held. The packets the
// flow held go with it (counted as TxNoFlow): its ID is about to be torn
// down, and the nexus would refuse them.
func (t *flowTable) forgetLocked(e *Endpoint, k packet.Key) bool {
	f := t.flows[k]
	if f == nil {
		return false
	}
	if len(f.held) > 0 {
		e.stats.txNoFlow.Add(uint64(f.dropHeld()))
		e.unholdLocked(f)
	}
	delete(t.flows, k)
	delete(t.closing, k)
	e.wins.forget(k)
	if f.pending {
		f.endPending(errForgotten)
		return false
	}
	return true
}

// teardown tears keys down at the port, after they left the table. reg is
// held, so none of them is registered again before the nexus forgot it.
func (t *flowTable) teardown(e *Endpoint, keys []packet.Key) error {
	var first error
	e.stats.flowsReleased.Add(uint64(len(keys)))
	if bt, ok := e.port.(BatchTearer); ok && len(keys) > 1 {
		// One request for the lot: the reaper holds reg meanwhile, and
		// the registrar waits for it.
		for _, err := range bt.TeardownBatch(keys) {
			if err != nil && first == nil {
				first = err
			}
		}
		return first
	}
	for _, k := range keys {
		if err := e.port.Teardown(k); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// releaseAll tears down every flow (Stop).
func (t *flowTable) releaseAll(e *Endpoint) {
	t.reg.Lock()
	defer t.reg.Unlock()
	e.mu.Lock()
	t.mu.Lock()
	keys := make([]packet.Key, 0, len(t.flows))
	for k := range t.flows {
		if t.forgetLocked(e, k) {
			keys = append(keys, k)
		}
	}
	t.mu.Unlock()
	e.mu.Unlock()
	t.teardown(e, keys) // the port may be closed already: its flows went with it
}

// reaper tears down the TCP flows whose connection netstack has let go,
// every ReapInterval for the flows that saw a FIN or RST and every 64
// intervals for all of them (connections that died without either).
func (e *Endpoint) reaper() {
	defer e.wg.Done()
	tick := time.NewTicker(e.opts.ReapInterval)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-e.stop:
			return
		case <-tick.C:
		}
		e.flows.reap(e, n%64 == 0)
	}
}

// reap checks the closing TCP flows, or all TCP 5-tuple flows when all is
// set, and tears down those netstack no longer has a live connection for.
// A flow younger than Grace that netstack does not know is kept: it is
// being dialed or accepted. A flow that started a new life while it was
// being checked is kept. It returns how many flows it tore down.
//
// Options.Alive is called with no lock held: it takes netstack's locks,
// and a netstack goroutine holding those may be registering a flow.
func (t *flowTable) reap(e *Endpoint, all bool) int {
	type cand struct {
		f   *flowRec
		gen uint64
	}
	now := time.Now()
	var cands []cand
	t.mu.RLock()
	if all {
		for _, f := range t.flows {
			if f.kind == flow.Connected && f.key.Proto == packet.ProtoTCP {
				cands = append(cands, cand{f, f.gen})
			}
		}
	} else {
		for k := range t.closing {
			f := t.flows[k]
			cands = append(cands, cand{f, f.gen})
		}
	}
	t.mu.RUnlock()
	dead := cands[:0]
	for _, c := range cands {
		if e.opts.Alive(c.f.key) {
			continue
		}
		t.mu.RLock()
		young := !c.f.closing && now.Sub(c.f.born) < e.opts.Grace
		t.mu.RUnlock()
		if !young {
			dead = append(dead, c)
		}
	}
	if len(dead) == 0 {
		return 0
	}
	t.reg.Lock()
	defer t.reg.Unlock()
	var keys []packet.Key
	e.mu.Lock()
	t.mu.Lock()
	for _, c := range dead {
		if t.flows[c.f.key] == c.f && c.f.gen == c.gen && t.forgetLocked(e, c.f.key) {
			keys = append(keys, c.f.key)
		}
	}
	t.mu.Unlock()
	e.mu.Unlock()
	t.teardown(e, keys)
	e.stats.flowsReaped.Add(uint64(len(keys)))
	return len(keys)
}

// Register registers a flow with the port before any of its packets move
// (a listener before Listen, a 5-tuple before Connect) and records it, so
// the endpoint stamps its ID on every packet of the flow. TCP 5-tuple flows
// are reaped once netstack lets their connection go (Options.Alive); every
// other flow stays until Release or Stop.
func (e *Endpoint) Register(key packet.Key, kind flow.Kind) error {
	_, err := e.flows.register(e, key, kind, false)
	if err != nil {
		return fmt.Errorf("stack: %w", err)
	}
	return nil
}

// Release tears down a flow registered with Register; releasing a UDP
// listener also releases the reply flows registered from its port.
func (e *Endpoint) Release(key packet.Key) error {
	if err := e.flows.release(e, key); err != nil {
		return fmt.Errorf("stack: %w", err)
	}
	return nil
}

// Reap runs the reaper over all TCP flows now and returns how many it tore
// down (tests and shutdown use it; the reaper goroutine does it anyway).
func (e *Endpoint) Reap() int {
	if e.opts.Alive == nil {
		return 0
	}
	return e.flows.reap(e, true)
}
