// Package kernel feeds a neigh.Routes from the Linux kernel that shares
// the nexus's interface, over netlink: it mirrors the kernel's neighbour
// table for the link (a dump, then RTM_NEWNEIGH/RTM_DELNEIGH events),
// expires the cached routes on every routing event, and answers the
// questions Routes asks: a route with RTM_GETROUTE (the kernel's own FIB
// lookup: default gateway, more specific routes, policy), a neighbour by
// RTM_NEWNEIGH with NTF_USE, which makes the kernel resolve it (or, if
// stale, confirm it) as if it had a packet for it.
//
// Invariants:
//   - One goroutine, started by Follow and stopped by Close, does every
//     netlink request; Routes' datapath callers never wait on netlink
//     (Ask only queues, bounded, deduplicated).
//   - Sockets are bound to the network namespace Follow was called in,
//     whatever thread the goroutine runs on later.
//   - A subscription that fails (a receive buffer overrun under an event
//     storm) is made again, with the table dumped afresh and every route
//     expired, so the mirror never stays silently stale.
package kernel

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/skylane/skylane/neigh"
)

const (
	// maxQueued bounds the questions waiting for the goroutine; Routes
	// asks a lost one again after its RetryInterval.
	maxQueued = 4096
	// rcvBuf is the subscriptions' receive buffer: room for a burst of
	// some thousands of events (a table dump, a flapping link) before the
	// kernel drops them (ENOBUFS, then a resubscription).
	rcvBuf = 4 << 20
	// resubscribeDelay paces resubscriptions after a failure.
	resubscribeDelay = 100 * time.Millisecond
)

// Options configure Follow.
type Options struct {
	// LinkIndex is the interface the nexus owns. Required.
	LinkIndex int
	// Routes configures the Routes Follow makes; Ask is Follow's own.
	Routes neigh.RoutesOptions
	// Log gets warnings (netlink failures); nil discards them.
	Log *slog.Logger
}

// Stats are the follower's counters.
type Stats struct {
	RouteLookups   uint64 // RTM_GETROUTE requests
	NeighborAsks   uint64 // NTF_USE requests
	Errors         uint64 // requests the kernel refused or that failed
	NeighborEvents uint64 // neighbour entries received for the link
	RouteEvents    uint64 // routing events (each expires the routes)
	Resubscribed   uint64 // subscriptions made again after a failure
	QueueFull      uint64 // questions dropped: the queue was full
}

// Follower keeps a neigh.Routes in step with the kernel.
type Follower struct {
	routes *neigh.Routes
	link   int
	ns     netns.NsHandle // the namespace Follow ran in
	h      *netlink.Handle
	log    *slog.Logger

	mu     sync.Mutex
	queue  []neigh.Query // guarded by mu
	queued map[neigh.Query]bool
	wake   chan struct{} // cap 1

	done   chan struct{}
	exited chan struct{}
	cur    atomic.Pointer[subscription] // the live subscription, for tests that fail it
	stats  struct{ lookups, asks, errs, nevents, revents, resubs, full atomic.Uint64 }
}

// Follow subscribes to the kernel's neighbour and routing events in the
// calling thread's network namespace, and starts the goroutine that
// serves Routes. Close stops it.
func Follow(o Options) (_ *Follower, err error) {
	if o.LinkIndex <= 0 {
		return nil, errors.New("neigh/kernel: Options.LinkIndex is required")
	}
	f := &Follower{link: o.LinkIndex, log: o.Log, queued: make(map[neigh.Query]bool),
		wake: make(chan struct{}, 1), done: make(chan struct{}), exited: make(chan struct{})}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	ro := o.Routes
	ro.Ask = f.ask
	if f.routes, err = neigh.NewRoutes(ro); err != nil {
		return nil, err
	}
	if f.ns, err = netns.Get(); err != nil {
		return nil, fmt.Errorf("neigh/kernel: network namespace: %w", err)
	}
	defer func() {
		if err != nil {
			f.ns.Close()
		}
	}()
	if f.h, err = netlink.NewHandleAt(f.ns); err != nil {
		return nil, fmt.Errorf("neigh/kernel: netlink: %w", err)
	}
	s, err := f.subscribe()
	if err != nil {
		f.h.Close()
		return nil, err
	}
	go f.run(s)
	return f, nil
}

// Routes returns the Routes the follower feeds, for the switch.
func (f *Follower) Routes() *neigh.Routes { return f.routes }

// Stats returns the counters.
func (f *Follower) Stats() Stats {
	s := &f.stats
	return Stats{RouteLookups: s.lookups.Load(), NeighborAsks: s.asks.Load(), Errors: s.errs.Load(),
		NeighborEvents: s.nevents.Load(), RouteEvents: s.revents.Load(), Resubscribed: s.resubs.Load(), QueueFull: s.full.Load()}
}

// Close stops the goroutine and closes the sockets. Routes stays usable
// (its questions go nowhere).
func (f *Follower) Close() error {
	select {
	case <-f.done:
		return nil
	default:
	}
	close(f.done)
	<-f.exited
	f.h.Close()
	return f.ns.Close()
}

// ask implements neigh.RoutesOptions.Ask: it queues q (once) and wakes
// the goroutine, without blocking.
func (f *Follower) ask(q neigh.Query) {
	f.mu.Lock()
	if !f.queued[q] {
		if len(f.queue) >= maxQueued {
			f.mu.Unlock()
			f.stats.full.Add(1)
			return
		}
		f.queued[q] = true
		f.queue = append(f.queue, q)
	}
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// subscription is one pair of event subscriptions; stop closes both.
type subscription struct {
	neighs chan netlink.NeighUpdate
	routes chan netlink.RouteUpdate
	stop   chan struct{}
	failed chan struct{} // closed by the first error
	once   sync.Once
}

// subscribe subscribes to neighbour events (with a dump of the table
// first) and routing events, in the follower's namespace.
func (f *Follower) subscribe() (*subscription, error) {
	s := &subscription{neighs: make(chan netlink.NeighUpdate, 256), routes: make(chan netlink.RouteUpdate, 64),
		stop: make(chan struct{}), failed: make(chan struct{})}
	fail := func(err error) {
		select {
		case <-s.stop: // closed by us
			return
		default:
		}
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			// The table changed during the dump: what we got is still
			// true, and the change comes as an event.
			return
		}
		f.log.Warn("neighbour/route events failed; subscribing again", "err", err)
		s.fail()
	}
	ns := f.ns
	if err := netlink.NeighSubscribeWithOptions(s.neighs, s.stop, netlink.NeighSubscribeOptions{
		Namespace: &ns, ErrorCallback: fail, ListExisting: true, ReceiveBufferSize: rcvBuf, ReceiveBufferForceSize: true,
	}); err != nil {
		close(s.stop)
		return nil, fmt.Errorf("neigh/kernel: subscribe to neighbour events: %w", err)
	}
	if err := netlink.RouteSubscribeWithOptions(s.routes, s.stop, netlink.RouteSubscribeOptions{
		Namespace: &ns, ErrorCallback: fail, ReceiveBufferSize: rcvBuf, ReceiveBufferForceSize: true,
	}); err != nil {
		close(s.stop)
		for range s.neighs {
		}
		return nil, fmt.Errorf("neigh/kernel: subscribe to route events: %w", err)
	}
	return s, nil
}

// fail marks s failed: the follower makes a new subscription.
func (s *subscription) fail() { s.once.Do(func() { close(s.failed) }) }

// close stops s and drains its channels until the subscriptions' own
// goroutines have closed them.
func (s *subscription) close() {
	close(s.stop)
	if s.neighs != nil {
		for range s.neighs {
		}
	}
	if s.routes != nil {
		for range s.routes {
		}
	}
}

func (f *Follower) run(s *subscription) {
	defer close(f.exited)
	f.cur.Store(s)
	var retry <-chan time.Time
	for {
		var neighs <-chan netlink.NeighUpdate
		var routes <-chan netlink.RouteUpdate
		var failed <-chan struct{}
		if s != nil {
			neighs, routes, failed = s.neighs, s.routes, s.failed
		}
		select {
		case <-f.done:
			if s != nil {
				s.close()
			}
			return
		case u, ok := <-neighs:
			if !ok {
				s.neighs = nil
				continue
			}
			f.neighbor(u)
		case _, ok := <-routes:
			if !ok {
				s.routes = nil
				continue
			}
			f.stats.revents.Add(1)
			f.routes.ExpireRoutes()
		case <-failed:
			s.close()
			s, retry = nil, time.After(resubscribeDelay)
		case <-retry:
			retry = nil
			var err error
			if s, err = f.subscribe(); err != nil {
				f.log.Warn("neighbour/route events: subscribing again failed; retrying", "err", err)
				retry = time.After(time.Second)
				continue
			}
			f.cur.Store(s)
			f.stats.resubs.Add(1)
			f.routes.ExpireRoutes() // events may have been lost
		case <-f.wake:
			f.answer()
		}
	}
}

// neighbor applies one neighbour event for the link.
func (f *Follower) neighbor(u netlink.NeighUpdate) {
	n := &u.Neigh
	if n.LinkIndex != f.link || (n.Family != unix.AF_INET && n.Family != unix.AF_INET6) {
		return
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return
	}
	f.stats.nevents.Add(1)
	if u.Type == unix.RTM_DELNEIGH {
		f.routes.DeleteNeighbor(ip)
		return
	}
	var mac neigh.MAC
	st := State(n.State)
	if len(n.HardwareAddr) == len(mac) {
		mac = neigh.MAC(n.HardwareAddr)
	} else if st == neigh.Reachable || st == neigh.Stale {
		st = neigh.Incomplete // usable but no Ethernet address: not for us
	}
	f.routes.SetNeighbor(ip, mac, st)
}

// State maps a kernel NUD state to neigh's: confirmed or static entries
// are Reachable; those the kernel would check before trusting again
// (stale, delay, probe) Stale; failed ones Failed; the rest Incomplete.
func State(nud int) neigh.State {
	switch {
	case nud&(netlink.NUD_REACHABLE|netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0:
		return neigh.Reachable
	case nud&(netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE) != 0:
		return neigh.Stale
	case nud&netlink.NUD_FAILED != 0:
		return neigh.Failed
	}
	return neigh.Incomplete
}

// answer serves the queued questions.
func (f *Follower) answer() {
	f.mu.Lock()
	qs := f.queue
	f.queue = nil
	clear(f.queued)
	f.mu.Unlock()
	for _, q := range qs {
		switch q.Kind {
		case neigh.QueryRoute:
			f.stats.lookups.Add(1)
			f.routes.SetRoute(q.Addr, f.lookup(q.Addr))
		case neigh.QueryNeighbor:
			f.stats.asks.Add(1)
			// NTF_USE: neigh_event_send on the entry (made if absent),
			// as a packet of the kernel's own would.
			err := f.h.NeighSet(&netlink.Neigh{LinkIndex: f.link, IP: net.IP(q.Addr.AsSlice()), Flags: netlink.NTF_USE})
			if err != nil {
				f.stats.errs.Add(1)
				f.log.Warn("asking the kernel to resolve a neighbour failed", "addr", q.Addr, "err", err)
			}
		}
	}
}

// lookup returns dst's next hop through the link by the kernel's routing
// table: the gateway, or dst itself on-link; invalid when the kernel
// routes dst elsewhere (another interface, a local or blackhole route) or
// has no route.
func (f *Follower) lookup(dst netip.Addr) netip.Addr {
	rs, err := f.h.RouteGet(net.IP(dst.AsSlice()))
	if err != nil || len(rs) == 0 {
		if err != nil && !errors.Is(err, unix.ENETUNREACH) && !errors.Is(err, unix.EHOSTUNREACH) {
			f.stats.errs.Add(1)
			f.log.Warn("route lookup failed", "dst", dst, "err", err)
		}
		return netip.Addr{}
	}
	r := rs[0]
	if r.LinkIndex != f.link || (r.Type != unix.RTN_UNICAST && r.Type != 0) {
		return netip.Addr{}
	}
	if gw, ok := netip.AddrFromSlice(r.Gw); ok && gw.IsValid() && !gw.IsUnspecified() {
		return gw.Unmap()
	}
	return dst
}
