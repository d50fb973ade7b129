package stack

import (
	"errors"
	"fmt"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

// Flows of accepted connections (and of UDP replies) are registered on
// demand, in batches, off the datapath. A handshake needs no flow of its
// own: the listener's flow may send SYN-ACKs and RSTs, and netstack keeps
// half-open connections (SYN cookies past its backlog), so a SYN costs the
// nexus nothing. The first other packet of a 5-tuple from a listener's port
// (an ACK or data of an accepted connection, a UDP reply), or the client's
// Accept (Prepare), whichever comes first, makes the 5-tuple a pending
// flow: its packets are held in it (as for a suspended flow, advisory.go)
// and the registrar goroutine registers every pending flow in one request
// to the port (BatchRegistrar, else one Register each), then sends what
// they held. So netstack's goroutines never wait for the nexus, and a busy
// listener costs the nexus one request per batch.
//
// A flow the nexus refuses (its limits: flow.ErrTooManyFlows) drops what it
// held (TxRegisterFail) and is handed to Options.Refuse, which resets the
// connection: its peer gets a RST, sent on the listener's flow.

// BatchRegistrar is a Port that registers many flows in one request
// (nexus.Port does): RegisterBatch returns, for each key, what Register
// would have.
type BatchRegistrar interface {
	RegisterBatch(keys []packet.Key, kind flow.Kind) ([]channel.FlowInfo, []error)
}

// BatchTearer is a Port that tears down many flows in one request
// (nexus.Port does): TeardownBatch returns, for each key, what Teardown
// would have.
type BatchTearer interface {
	TeardownBatch(keys []packet.Key) []error
}

// errForgotten ends a pending flow torn down before it was registered (its
// connection closed or the endpoint stopped).
var errForgotten = errors.New("stack: flow released before the nexus registered it")

// endPending ends f's pending state with err. Endpoint.mu and flowTable.mu
// are held.
func (f *flowRec) endPending(err error) {
	f.err = err
	f.pending = false
	close(f.done)
}

// prepare returns k's flow, making it a pending flow for the registrar if
// the endpoint has none. It takes only t.mu: netstack's goroutines call it.
func (t *flowTable) prepare(k packet.Key) *flowRec {
	t.mu.Lock()
	f := t.flows[k]
	if f == nil {
		f = &flowRec{key: k, kind: flow.Connected, auto: true, pending: true,
			done: make(chan struct{}), born: time.Now()}
		t.flows[k] = f
		t.queue = append(t.queue, f)
	}
	t.mu.Unlock()
	select {
	case t.kick <- struct{}{}:
	default:
	}
	return f
}

// Prepare starts registering the 5-tuple flow of key, a connection one of
// the endpoint's listeners accepted (oriented to the local side), unless
// the endpoint holds it already, and returns a function that waits until
// the flow is registered: nil, or why not (wrapping flow.ErrTooManyFlows
// when the nexus's limits refused it; the connection was then handed to
// Options.Refuse). Calling Prepare for each accepted connection as it is
// accepted lets the registrar batch them.
func (e *Endpoint) Prepare(key packet.Key) (wait func() error) {
	t := &e.flows
	t.mu.RLock()
	f := t.flows[key]
	t.mu.RUnlock()
	if f == nil {
		f = t.prepare(key)
	}
	if f.done == nil {
		return func() error { return nil }
	}
	return func() error {
		select {
		case <-f.done:
			if f.err != nil {
				return fmt.Errorf("stack: register accepted %v: %w", key, f.err)
			}
			return nil
		case <-e.stop:
			return ErrStopped
		}
	}
}

// registrar is the goroutine that registers pending flows.
func (e *Endpoint) registrar() {
	defer e.wg.Done()
	for {
		select {
		case <-e.stop:
			return
		case <-e.flows.kick:
		}
		for e.flows.registerPending(e) {
		}
	}
}

// registerPending registers the pending flows queued so far, in one batch,
// and sends what they held. It reports whether there were any.
func (t *flowTable) registerPending(e *Endpoint) bool {
	t.reg.Lock()
	t.mu.Lock()
	batch := t.queue
	t.queue = nil
	queued := len(batch)
	// The flows forgotten since they were queued (reg was not held) are
	// not registered: forgetLocked ended them.
	n := 0
	for _, f := range batch {
		if t.flows[f.key] == f && f.pending {
			batch[n] = f
			n++
		}
	}
	batch = batch[:n]
	t.mu.Unlock()
	if len(batch) == 0 {
		t.reg.Unlock()
		return queued > 0 // look again: more may have come
	}
	keys := make([]packet.Key, len(batch))
	for i, f := range batch {
		keys[i] = f.key
	}
	fis, errs := t.registerBatch(e, keys)
	// Counted before anything the batch decided shows (a datagram sent,
	// a refusal counted or reported).
	e.stats.registerBatches.Add(1)
	var refused []*flowRec
	e.mu.Lock()
	t.mu.Lock()
	for i, f := range batch {
		if errs[i] != nil {
			if len(f.held) > 0 {
				e.stats.txRegisterFail.Add(uint64(f.dropHeld()))
				e.unholdLocked(f)
			}
			delete(t.flows, f.key)
			delete(t.closing, f.key)
			// Counted before endPending wakes the Accept that
			// reports the refusal: whoever sees it sees the count.
			e.stats.flowsRefused.Add(1)
			if errors.Is(errs[i], flow.ErrTooManyFlows) {
				e.stats.flowLimitHits.Add(1)
			}
			f.endPending(errs[i])
			refused = append(refused, f)
			continue
		}
		f.id, f.adv = fis[i].ID, fis[i].Advisory
		f.endPending(nil)
	}
	t.mu.Unlock()
	if len(refused) < len(batch) {
		e.stats.flowsRegistered.Add(uint64(len(batch) - len(refused)))
		e.stats.flowsAuto.Add(uint64(len(batch) - len(refused)))
		e.flushLocked() // what the flows held, now that they have IDs
	}
	e.mu.Unlock()
	t.reg.Unlock()
	for _, f := range refused {
		if e.opts.Refuse != nil {
			e.opts.Refuse(f.key, f.err)
		}
	}
	return true
}

// registerBatch registers keys as Connected flows at the port, in one
// request if it can.
func (t *flowTable) registerBatch(e *Endpoint, keys []packet.Key) ([]channel.FlowInfo, []error) {
	if br, ok := e.port.(BatchRegistrar); ok {
		return br.RegisterBatch(keys, flow.Connected)
	}
	fis := make([]channel.FlowInfo, len(keys))
	errs := make([]error, len(keys))
	for i, k := range keys {
		fis[i], errs[i] = e.port.Register(k, flow.Connected)
	}
	return fis, errs
}
