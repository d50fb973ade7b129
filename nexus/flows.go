package nexus

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/packet"
)

// Flow registration on the worker. A port registers a flow before any of
// its packets move (docs/design.md §4); an app that accepts many
// connections registers their flows in batches (RegisterBatch), one
// request to the worker for all the connections its stack completed
// meanwhile, so a busy listener costs the worker one hand-off per batch,
// not one per connection. Handshakes need no flow of their own: a listener
// flow may send SYN-ACKs and RSTs (flowswitch's transmit checks), so a
// half-open connection holds no nexus state.

// registerFlow registers key for q: the flow table's entry, its advisory
// entry cleared, its steering. Worker only.
func (n *Nexus) registerFlow(q *port, key packet.Key, kind flow.Kind) (channel.FlowInfo, error) {
	e, err := n.sw.Register(q.id, key, kind)
	if err != nil {
		if errors.Is(err, flow.ErrTooManyFlows) {
			n.limitLog.hit(n.log, q.app.name, err)
		}
		return channel.FlowInfo{}, portHint(err)
	}
	// The flow table hands a freed advisory slot out again; its last
	// state is the old flow's. A new flow has not been regulated yet,
	// and the app must not hold it on a mark nobody will clear. (A
	// no-op, and no event, when clear.)
	if adv := e.AdvisoryIndex(); adv != flow.NoAdvisory {
		if err := q.ch.SetAdvisory(int(adv), channel.AdvisoryNone); err != nil {
			n.sw.Teardown(e)
			return channel.FlowInfo{}, fmt.Errorf("clear advisory %d: %w", adv, err)
		}
	}
	// The kernel's stack gives the port up before the device hands the
	// flow's packets to user space.
	var res Reservation
	if kind != flow.Connected && n.opts.Reserve != nil {
		if res, err = n.opts.Reserve(key); err != nil {
			n.sw.Teardown(e)
			return channel.FlowInfo{}, portHint(err)
		}
	}
	// Only now may the device hand the flow's packets to user space
	// alone; the app sends nothing before Register returns.
	if err := n.steerFlow(key); err != nil {
		n.sw.Teardown(e)
		closeRes(res)
		if errors.Is(err, flow.ErrTooManyFlows) {
			n.limitLog.hit(n.log, q.app.name, err)
		}
		return channel.FlowInfo{}, err
	}
	q.flows[key] = e
	if res != nil {
		q.res[key] = res
	}
	return channel.FlowInfo{ID: e.ID(), Advisory: e.AdvisoryIndex()}, nil
}

// RegisterBatch registers keys, all of kind, for this port in one request
// to the worker: Register for each, in order, each with its own outcome
// (errs[i] nil or wrapping what Register returns). An app's stack uses it
// for the connections its listeners accepted (package stack).
func (p *Port) RegisterBatch(keys []packet.Key, kind flow.Kind) ([]channel.FlowInfo, []error) {
	fis := make([]channel.FlowInfo, len(keys))
	errs := make([]error, len(keys))
	err := p.n.do(func() error {
		q := p.n.ports[p.id]
		if q == nil {
			return ErrClosed
		}
		for i, k := range keys {
			fis[i], errs[i] = p.n.registerFlow(q, k, kind)
		}
		return nil
	})
	for i := range errs {
		if err != nil {
			errs[i] = err
		}
		if errs[i] != nil {
			errs[i] = fmt.Errorf("port %s: %w", p.name, errs[i])
		}
	}
	return fis, errs
}

// TeardownBatch tears down keys, flows this port registered, in one
// request to the worker: Teardown for each (the packets the app put on its
// TX ring before it asked are sent first), each with its own outcome. An
// app's stack uses it for the connections its reaper found closed.
func (p *Port) TeardownBatch(keys []packet.Key) []error {
	errs := make([]error, len(keys))
	err := p.n.do(func() error {
		q := p.n.ports[p.id]
		if q == nil {
			return ErrClosed
		}
		p.n.drainTX(q)
		for i, k := range keys {
			e := q.flows[k]
			if e == nil {
				errs[i] = ErrNoFlow
				continue
			}
			errs[i] = p.n.teardownFlow(q, k, e)
		}
		return nil
	})
	for i, k := range keys {
		if err != nil {
			errs[i] = err
		}
		if errs[i] != nil {
			errs[i] = fmt.Errorf("port %s: teardown %v: %w", p.name, k, errs[i])
		}
	}
	return errs
}

// teardownFlow tears down q's flow key (entry e): out of the table, its
// kernel reservation closed (the kernel's local listener stops first, so
// no local connection is accepted for a flow that is gone), then given
// back to the kernel's path. Worker only.
func (n *Nexus) teardownFlow(q *port, key packet.Key, e *flow.Entry) error {
	if e != nil {
		n.sw.Teardown(e)
	}
	delete(q.flows, key)
	var rerr error
	if res := q.res[key]; res != nil {
		delete(q.res, key)
		if err := res.Close(); err != nil {
			rerr = fmt.Errorf("release the kernel's port: %w", err)
		}
	}
	return errors.Join(rerr, n.unsteerFlow(key))
}

func closeRes(res Reservation) {
	if res != nil {
		res.Close()
	}
}

// HostListener returns a duplicate of the kernel socket that reserves the
// listener flow key of this port (Options.Reserve): it accepts the TCP
// connections, or receives the UDP datagrams, of processes on the nexus's
// own host to the flow's address and port, which never cross the device
// (they go through the kernel's loopback); on a UDP one the app also
// sends its answers to them. It returns nil, nil when the flow has no
// such socket (no kernel shares the device), and ErrNoFlow for a key the
// port did not register. The caller owns the file.
func (p *Port) HostListener(key packet.Key) (*os.File, error) {
	var f *os.File
	err := p.n.do(func() error {
		q := p.n.ports[p.id]
		if q == nil {
			return ErrClosed
		}
		if q.flows[key] == nil {
			return ErrNoFlow
		}
		res := q.res[key]
		if res == nil {
			return nil
		}
		var err error
		f, err = res.Listener()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("port %s: host listener %v: %w", p.name, key, err)
	}
	return f, nil
}

// burstLog logs a limit's hits once per burst: the first hit after
// burstQuiet without one, then, while hits go on, at most once per
// burstEvery with the count since the last line. Worker only.
type burstLog struct {
	first, last, logged time.Time
	n                   uint64 // hits since the last line
}

const (
	burstQuiet = time.Second
	burstEvery = 10 * time.Second
)

func (b *burstLog) hit(log *slog.Logger, port string, err error) {
	now := time.Now()
	b.n++
	newBurst := now.Sub(b.last) >= burstQuiet
	b.last = now
	if !newBurst && now.Sub(b.logged) < burstEvery {
		return
	}
	if newBurst {
		b.first = now
	}
	log.Warn("nexus: flow limit hit: connections are refused with a reset until flows close; raise flowswitch.Options.MaxPortFlows or MaxFlows if memory allows",
		"port", port, "hits", b.n, "burst", now.Sub(b.first).Round(time.Millisecond), "err", err)
	b.logged, b.n = now, 0
}
