package nexus

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/pool"
)

// port is the worker's side of one application port.
type port struct {
	n      *Nexus
	id     flow.PortID      // immutable
	remote bool             // immutable: woken through its eventfd, by a port waiter
	opts   PortOptions      // immutable: as opened (a takeover opens it again so)
	ch     *channel.Channel // the nexus end; owned by the worker
	app    *Port            // the app's handle: bell and sleep flag
	flows  map[packet.Key]*flow.Entry
	res    map[packet.Key]Reservation // the kernel's reservations of its listener flows (Options.Reserve)

	// Port waiter hand-off: the worker sends on arm, the waiter runs
	// Channel.Wait and answers on woke (after ringing the nexus's bell).
	armCh chan struct{} // 1-buffered; closed to stop the waiter
	woke  chan struct{} // 1-buffered
	armed bool          // worker-owned: a wait is in progress or unanswered
	last  channel.Counters
}

// Port is an application's handle on its nexus port: the app end of the
// port's channel and the control requests of that port. It is what the
// user-space stack (package stack) needs from a nexus; a transport over a
// Unix socket can offer the same methods to another process.
//
// App, Addrs, MTU and Name may be called at any time. Register, Teardown
// and Wake are safe from any goroutine; Wait is for the one goroutine that
// consumes the app's rings.
type Port struct {
	n      *Nexus
	id     flow.PortID // immutable
	name   string      // immutable
	app    *channel.App
	remote bool // immutable: see OpenPort

	sleeping atomic.Bool   // the app is in Wait, after its re-check
	room     atomic.Bool   // the sleeping app waits for room too (TX slots, buffers, free slots), not only for packets and events
	bell     chan struct{} // 1-buffered: rung by the worker or by Wake
	gone     chan struct{} // closed when the nexus closed the port
	goneOnce sync.Once
	close    sync.Once
}

// OpenPort makes a channel for a new application port, adds it to the
// switch and attaches its app end in this process. The caller owns the
// returned Port and must Close it.
//
// The app wakes the worker with Port.Kick, a Go channel send made only
// while the worker sleeps. (A port whose app is in another process is
// woken through its channel's eventfd instead: a port waiter goroutine
// blocks in channel.Channel.Wait while the worker sleeps. The Unix-socket
// transport that hands such ports out is still to come; the tests drive
// that path through an in-process app.)
func (n *Nexus) OpenPort(name string) (*Port, error) { return n.open(name, false, true, PortOptions{}) }

// PortOptions configure a port (OpenPortWith). The zero value is OpenPort's.
type PortOptions struct {
	// Advisories says the port's app honours flow advisories (docs/design.md §7):
	// it holds a flow's packets back while the flow's entry in its
	// channel's advisory table is SUSPENDED, as package stack's endpoint
	// (and so package client) does. With the switch's Regulation, the
	// flows of such a port are then suspended rather than dropped when the
	// transmit queue builds up, and the port is not served past the
	// queue's high-water mark (flowswitch.AddPortOptions.Advisories).
	// Leave it false for an app that does not read its table: its flows
	// would be held back by nothing but the queue's limit.
	Advisories bool
	// Rate caps the port's transmit rate in bits per second of IP bytes
	// (0: no cap) and Burst is the cap's depth in bytes (0: the switch's
	// default). A rate needs the switch's Regulation.
	Rate  int64
	Burst int
	// RxRate caps the port's receive rate the same way (bits per second
	// of IP bytes delivered; what comes faster is dropped before the
	// copy), RxBurst its depth (flowswitch.AddPortOptions.RxRate).
	RxRate  int64
	RxBurst int
	// MaxPool caps the port's packet pool in bytes of buffers: its
	// MaxSegments becomes the most whole segments that fit, at least one,
	// and never more than the nexus's Channel.Pool.MaxSegments (0: that).
	// An app at its cap gets fewer buffers (pool.Stats.AllocFails), not
	// more memory.
	MaxPool int64
}

func flowswitchPortOptions(o PortOptions) flowswitch.AddPortOptions {
	return flowswitch.AddPortOptions{Advisories: o.Advisories, Rate: o.Rate, Burst: o.Burst, RxRate: o.RxRate, RxBurst: o.RxBurst}
}

// OpenPortWith is OpenPort with options: whether the port's app honours
// flow advisories, and a rate cap.
func (n *Nexus) OpenPortWith(name string, o PortOptions) (*Port, error) {
	return n.open(name, false, true, o)
}

// open opens a port. remote: woken through its channel's eventfd by a port
// waiter; attach: attach the app end in this process (false only for an
// app in another process, which gets the channel through RemotePort.Send).
func (n *Nexus) open(name string, remote, attach bool, o PortOptions) (*Port, error) {
	var (
		p   *Port
		err error
	)
	rerr := n.do(func() error {
		if n.linkErr != nil {
			return n.linkErr
		}
		p, err = n.openPort(name, remote, attach, o)
		return err
	})
	if rerr != nil {
		return nil, fmt.Errorf("nexus: open port %q: %w", name, rerr)
	}
	return p, nil
}

func (n *Nexus) openPort(name string, remote, attach bool, o PortOptions) (*Port, error) {
	n.seq++
	co := n.opts.Channel
	co.Name = fmt.Sprintf("%s-%d", name, n.seq)
	co.Pool.Name = ""
	if o.MaxPool > 0 {
		seg := co.Pool.SegmentSize
		if seg == 0 { // the pool's default
			seg = pool.DefaultSegmentSize
			if co.Pool.HugePages {
				seg = pool.HugeSegmentSize
			}
		}
		co.Pool.MaxSegments = int(max(1, min(int64(co.Pool.MaxSegments), o.MaxPool/int64(seg))))
		co.Pool.MinSegments = min(co.Pool.MinSegments, co.Pool.MaxSegments)
	}
	ch, err := channel.New(co)
	if err != nil {
		return nil, err
	}
	var app *channel.App
	if attach {
		if app, err = ch.AttachLocal(); err != nil {
			ch.Close()
			return nil, err
		}
	}
	id, err := n.sw.AddPortWith(ch, flowswitchPortOptions(o))
	if err != nil {
		if app != nil {
			app.Close()
		}
		ch.Close()
		return nil, err
	}
	ap := &Port{n: n, id: id, name: co.Name, app: app, remote: remote, bell: make(chan struct{}, 1), gone: make(chan struct{})}
	p := &port{
		n: n, id: id, ch: ch, app: ap, remote: remote, opts: o,
		flows: make(map[packet.Key]*flow.Entry), res: make(map[packet.Key]Reservation),
		armCh: make(chan struct{}, 1), woke: make(chan struct{}, 1),
		last: ch.Counters(),
	}
	n.ports[id] = p
	n.order = append(n.order, p)
	if remote {
		n.waiters.Add(1)
		go p.waiter()
	}
	return ap, nil
}

// closePort tears down the port's flows, closes its channel and stops its
// waiter. Worker only; the port's waiter must be disarmed.
// It returns the errors of giving the port's flows back to the kernel.
func (n *Nexus) closePort(p *port) error {
	n.sw.RemovePort(p.id) // tears its flows down; the switch forgets the channel
	// Connected flows go before listeners: while the port's listener is
	// steered its connections count as covered, and once they are out of
	// the port's flows, its listener going gives none of them an entry
	// of its own (steer.go).
	var errs []error
	for _, listeners := range []bool{false, true} {
		for k := range p.flows {
			if isListener(k) == listeners {
				errs = append(errs, n.teardownFlow(p, k, nil))
			}
		}
	}
	p.ch.Close()
	if p.remote {
		close(p.armCh)
	}
	delete(n.ports, p.id)
	for i, q := range n.order {
		if q == p {
			n.order = append(n.order[:i], n.order[i+1:]...)
			break
		}
	}
	p.app.goneOnce.Do(func() { close(p.app.gone) })
	return errors.Join(errs...)
}

// drainTX sends what the port's TX ring holds, up to one ring's worth (an
// app that keeps filling it waits for the next round like everyone else).
func (n *Nexus) drainTX(p *port) {
	if n.linkErr != nil {
		return
	}
	for range n.opts.Channel.TxSize/flowswitch.TxBatch + 1 {
		k, err := n.sw.TxOnce(p.id)
		if err != nil && !errors.Is(err, channel.ErrDefunct) {
			n.failLink(err)
		}
		if k < flowswitch.TxBatch || err != nil {
			return
		}
	}
}

// waiter blocks in Channel.Wait each time the worker arms it.
func (p *port) waiter() {
	defer p.n.waiters.Done()
	for range p.armCh {
		p.ch.Wait(0) // an error means defunct or closed: the worker sees it in Sync
		select {
		case p.n.bell <- struct{}{}:
		default: // a ring is pending already
		}
		p.woke <- struct{}{}
	}
}

func (p *port) arm() {
	if !p.remote || p.armed || p.ch.Err() != nil {
		return // a defunct channel's Wait returns at once: do not spin on it
	}
	p.armed = true
	p.armCh <- struct{}{}
}

// disarm makes sure the waiter is out of Channel.Wait: kick it unless it
// answered already, and wait for its answer.
func (p *port) disarm() {
	if !p.armed {
		return
	}
	select {
	case <-p.woke:
	default:
		p.ch.Kick()
		<-p.woke
	}
	p.armed = false
}

// ring rings the app's bell if the channel's counters moved since the last
// look and the app is asleep (or about to be: it re-checks after arming):
// for packets or events, or for any change if it waits for room (see
// Port.Wait).
func (p *port) ring() {
	c := p.ch.Counters()
	if c == p.last {
		return
	}
	news := c.RxPackets != p.last.RxPackets || c.Events != p.last.Events
	p.last = c
	if p.app.sleeping.Load() && (news || p.app.room.Load()) {
		select {
		case p.app.bell <- struct{}{}:
		default:
		}
	}
}

// App returns the app end of the port's channel (nil for a RemotePort's).
// The Port owns it: Close closes it.
func (p *Port) App() *channel.App { return p.app }

// Name returns the port's channel name.
func (p *Port) Name() string { return p.name }

// Addrs returns the interface's addresses: the local addresses the port's
// flows may use.
func (p *Port) Addrs() []netip.Addr { return p.n.Addrs() }

// MTU returns the largest IP packet the port may send.
func (p *Port) MTU() int { return p.n.mtu }

// Ephemeral returns the local port range, [lo, hi], the app's outgoing
// connections take (Options.Ephemeral), or zero: its stack's default.
func (p *Port) Ephemeral() [2]uint16 { return p.n.opts.Ephemeral }

// Register registers a flow for this port before any of its packets move
// and returns what the app needs to send on it: the flow ID it writes into
// the metadata of every packet of the flow (channel.TxMetaFlowIDOff) and
// the flow's entry in the channel's advisory table (channel.App.Admissible).
// The entry starts admissible: a slot a torn-down flow left suspended is
// cleared before it is handed out again. If the link steers flows
// (netif.FlowSteerer), the flow is in its steering map before Register
// returns, and out of it once the flow is torn down, by Teardown or when
// the port closes (Close, a defunct channel, a failed link, the nexus's
// Close); a link without steering, or a key it cannot steer, leaves the
// kernel seeing the flow too. The errors wrap the flow package's (flow.ErrPortInUse,
// flow.ErrTooManyFlows, ...), or ErrClosed. A flow registered while the
// port's advisory slots are all taken gets flow.NoAdvisory.
func (p *Port) Register(key packet.Key, kind flow.Kind) (channel.FlowInfo, error) {
	var fi channel.FlowInfo
	err := p.n.do(func() error {
		q := p.n.ports[p.id]
		if q == nil {
			return ErrClosed
		}
		var err error
		fi, err = p.n.registerFlow(q, key, kind)
		return err
	})
	if err != nil {
		return fi, fmt.Errorf("port %s: %w", p.name, err)
	}
	return fi, nil
}

// ErrNoFlow is returned by Teardown for a key the port did not register:
// the contract's control.ErrNoFlow, which apps test in any process.
var ErrNoFlow = control.ErrNoFlow

// Teardown tears down a flow this port registered under key. The packets
// the app put on its TX ring before it asked are sent first: a flow goes
// after its last packets, not under them.
func (p *Port) Teardown(key packet.Key) error {
	err := p.n.do(func() error {
		q := p.n.ports[p.id]
		if q == nil {
			return ErrClosed
		}
		e := q.flows[key]
		if e == nil {
			return ErrNoFlow
		}
		p.n.drainTX(q)
		// The flow's last packets went first; now the kernel gets its
		// port and packets again.
		return p.n.teardownFlow(q, key, e)
	})
	if err != nil {
		return fmt.Errorf("port %s: teardown %v: %w", p.name, key, err)
	}
	return nil
}

// Wait blocks the app's ring consumer until the nexus may have work for it:
// packets on the RX ring, events on the event ring (segments added or
// removed, flow advisories) and, if the app's last Alloc, Send or Free
// came up short (channel.App.Short), TX slots freed, buffers handed or
// reclaimed; or until Wake, the timeout (0: none) or the port's closing
// (ErrClosed). An app that is not short is not woken for what the nexus
// took from its rings: in a request/response exchange that wake-up would
// find nothing to do, and it is a goroutine hand-off per packet.
//
// The protocol is the rings' need-wakeup one: Wait first says the app is
// about to sleep, then calls check, which must look at the rings (e.g. try
// to receive) and report whether it found work; only if not does Wait
// block. A change the nexus makes after check looked rings the bell, one
// made before is what check finds, so no wake-up is lost. A short app
// says it waits for room too and then calls check once more, for the same
// reason.
func (p *Port) Wait(check func() bool, timeout time.Duration) error {
	p.sleeping.Store(true)
	defer p.sleeping.Store(false)
	if check() {
		return nil
	}
	if p.app.Short() != 0 {
		p.room.Store(true)
		defer p.room.Store(false)
		if check() {
			return nil
		}
	}
	var fire <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		fire = t.C
	}
	select {
	case <-p.bell:
	case <-fire:
	case <-p.gone:
		return ErrClosed
	}
	return nil
}

// Kick tells the nexus the app put work on its rings: packets on the TX
// ring, buffers on the free ring, the alloc ring drained. It costs an
// atomic load while the worker is busy, and wakes it when it sleeps. Call
// it after Send, after Free, and after an Alloc that came up short. Safe
// from any goroutine.
func (p *Port) Kick() {
	if p.remote {
		return // the channel's own eventfd kicks (App.Send, Free, Alloc)
	}
	if p.n.parked.Load() {
		select {
		case p.n.bell <- struct{}{}:
		default:
		}
	}
}

// Wake makes a Wait in progress (or the next one) return. Safe from any
// goroutine.
func (p *Port) Wake() {
	select {
	case p.bell <- struct{}{}:
	default:
	}
}

// Close tears down the port's flows (and gives them back to the kernel),
// closes its channel and then its app end. Call it once the app stopped using App. Safe to call more than once.
func (p *Port) Close() error {
	var err error
	p.close.Do(func() {
		rerr := p.n.do(func() error {
			if q := p.n.ports[p.id]; q != nil {
				q.disarm()
				return p.n.closePort(q)
			}
			return nil
		})
		if rerr != nil && !errors.Is(rerr, ErrClosed) {
			err = rerr
		}
		p.goneOnce.Do(func() { close(p.gone) })
		if p.app == nil {
			return // a RemotePort's: the app end is in the app's process
		}
		if cerr := p.app.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("port %s: close app end: %w", p.name, cerr)
		}
	})
	return err
}
