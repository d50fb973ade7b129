package neigh

import (
	"errors"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// NextHops is what a switch needs of next-hop resolution on an Ethernet
// link; Resolver (the nexus answers and asks itself) and Routes (the
// kernel sharing the link resolves) implement it. Every method is safe
// for concurrent use.
type NextHops interface {
	// HandleFrame looks at a received frame before any flow lookup: see
	// Resolver.HandleFrame. consumed frames reach no app.
	HandleFrame(frame, reply []byte) (n int, consumed bool)
	// Resolve returns the MAC to send a packet for dst to: dst's own, or
	// its gateway's. false: not known yet; the caller Holds the packet.
	Resolve(dst netip.Addr) (MAC, bool)
	// Hold copies the IP packet pkt for dst until Poll can send it; false
	// means it was dropped (and counted) at once.
	Hold(dst netip.Addr, pkt []byte) bool
	// Poll writes the frames due into bufs (held packets now resolved,
	// with their Ethernet header, and solicitations) and returns how
	// many; see Resolver.Poll for the buffer contract.
	Poll(bufs [][]byte, sizes []int) int
	// Waiting reports that packets are held for answers that arrive from
	// outside the datapath: the caller should Poll again within a
	// millisecond or so rather than at the next PollInterval.
	Waiting() bool
	// Stats returns the counters.
	Stats() Stats
}

var (
	_ NextHops = (*Resolver)(nil)
	_ NextHops = (*Routes)(nil)
)

// Waiting implements NextHops.Waiting: always false, since a Resolver's
// answers arrive through HandleFrame, after which the switch polls.
func (r *Resolver) Waiting() bool { return false }

// Defaults of RoutesOptions.
const (
	// DefaultRouteTTL is how long a route answer is trusted without a
	// routing event: Skywalk ages its flow routes after 600 s. An expired
	// route is asked again on its next use (and used meanwhile); a route
	// unused for as long is forgotten.
	DefaultRouteTTL = 600 * time.Second
	// DefaultResolveTimeout is how long a held packet waits: the kernel
	// has given up by then (mcast_solicit 3 × retrans_time 1 s).
	DefaultResolveTimeout = 3 * time.Second
	// DefaultRetryInterval is how long a question to the kernel may stay
	// unanswered before it is asked again (a lost request or event).
	DefaultRetryInterval = time.Second
	// DefaultRefreshInterval is the least time between two confirmations
	// asked for one stale neighbour in use: the kernel's
	// delay_first_probe_time, for which one request keeps it probing.
	DefaultRefreshInterval = 5 * time.Second
	// DefaultMaxRoutes bounds the routes cached, one per remote; past it
	// a route with no packet held is evicted (a remote is asked again
	// cheaply, and a flood of new remotes must not lock out new clients).
	DefaultMaxRoutes = 4096
	// DefaultMaxNeighbors bounds the mirror of the kernel's table, which
	// the kernel itself keeps under gc_thresh3 (1024 by default).
	DefaultMaxNeighbors = 16384
	// DefaultRoutesPendingPerAddr and DefaultRoutesMaxPending bound the
	// packets Routes holds, per remote and in all. Larger than a
	// Resolver's: the kernel answers in about a millisecond on a LAN, and
	// the first burst to a new remote (an initial TCP window of 10
	// segments, a UDP burst) should wait, not be lost. Linux holds up to
	// unres_qlen_bytes (208 KiB) per neighbour; 1024 MTU packets are
	// 1.5 MiB at most.
	DefaultRoutesPendingPerAddr = 64
	DefaultRoutesMaxPending     = 1024
	// pendingPoll is how soon the switch should poll while Routes holds
	// packets: answers come from the kernel at any time.
	pendingPoll = time.Millisecond
)

// PendingPoll is how soon a caller should Poll while Waiting: held
// packets leave at most this late after their next hop resolved.
const PendingPoll = pendingPoll

// QueryKind says what a Query asks the kernel.
type QueryKind uint8

const (
	// QueryRoute asks for the route to Addr (a remote): answer with
	// Routes.SetRoute.
	QueryRoute QueryKind = iota + 1
	// QueryNeighbor asks the kernel to resolve Addr (a next hop), or to
	// confirm it if stale: the answer comes as neighbour events
	// (Routes.SetNeighbor).
	QueryNeighbor
)

// Query is a question Routes asks the kernel through RoutesOptions.Ask.
type Query struct {
	Kind QueryKind
	Addr netip.Addr
}

// RoutesOptions configure Routes.
type RoutesOptions struct {
	// MAC is the link's hardware address: the source of released frames.
	// Required.
	MAC MAC
	// Ask passes a question to whoever follows the kernel (neigh/kernel).
	// It is called with Routes' lock held, so it must not block nor call
	// Routes; a question it loses is asked again after RetryInterval.
	// Required.
	Ask func(Query)
	// Timers and bounds; zero means the default.
	RouteTTL        time.Duration
	ResolveTimeout  time.Duration
	RetryInterval   time.Duration
	RefreshInterval time.Duration
	PendingPerAddr  int // default DefaultRoutesPendingPerAddr
	MaxPending      int // default DefaultRoutesMaxPending
	MaxRoutes       int
	MaxNeighbors    int
	// MaxPacket is the longest packet Hold accepts. Default 65535.
	MaxPacket int
	// Now returns the current time. Default time.Now.
	Now func() time.Time
}

// route is the cached route toward one remote (Skywalk's flow route).
type route struct {
	via     netip.Addr // next hop: a gateway, or the remote itself; invalid: unreachable through the link
	known   bool       // the kernel answered
	expires time.Time  // of the answer: asked again on use after it
	asked   time.Time  // last QueryRoute; zero: none unanswered
	used    time.Time  // last Resolve or Hold
	since   time.Time  // when the oldest held packet came
	pending [][]byte   // held packets, oldest first
	waiting bool       // in Routes.waiting
}

// neighbor is the kernel's entry for a next hop, as its events say.
type neighbor struct {
	mac   MAC
	state State     // Reachable, Stale (usable), Incomplete or Failed
	asked time.Time // last QueryNeighbor
}

func (n *neighbor) usable() bool { return n != nil && (n.state == Reachable || n.state == Stale) }

// Routes resolves next hops by following the kernel that shares the link:
// a route per remote (the next hop the kernel's routing table gives:
// gateway or on-link) and the kernel's neighbour table (the MAC of each
// next hop), both kept from the kernel's answers and events, with the
// packets waiting for either held, bounded. It does no I/O: questions
// leave through Options.Ask, answers and events come in through SetRoute,
// ExpireRoutes, SetNeighbor and DeleteNeighbor (neigh/kernel does both
// over netlink). Safe for concurrent use (one mutex).
type Routes struct {
	mu      sync.Mutex
	o       RoutesOptions // immutable after NewRoutes
	routes  map[netip.Addr]*route
	neighs  map[netip.Addr]*neighbor
	waiting []netip.Addr // remotes with packets held, each once
	hold    holdPool
	lastGC  time.Time
	stats   Stats
}

// NewRoutes checks opts and returns a Routes.
func NewRoutes(opts RoutesOptions) (*Routes, error) {
	if opts.MAC == (MAC{}) || opts.MAC[0]&1 != 0 {
		return nil, errors.New("neigh: RoutesOptions.MAC must be a unicast MAC")
	}
	if opts.Ask == nil {
		return nil, errors.New("neigh: RoutesOptions.Ask is required")
	}
	var neg bool
	setDefault(&neg, &opts.RouteTTL, DefaultRouteTTL)
	setDefault(&neg, &opts.ResolveTimeout, DefaultResolveTimeout)
	setDefault(&neg, &opts.RetryInterval, DefaultRetryInterval)
	setDefault(&neg, &opts.RefreshInterval, DefaultRefreshInterval)
	setDefault(&neg, &opts.PendingPerAddr, DefaultRoutesPendingPerAddr)
	setDefault(&neg, &opts.MaxPending, DefaultRoutesMaxPending)
	setDefault(&neg, &opts.MaxRoutes, DefaultMaxRoutes)
	setDefault(&neg, &opts.MaxNeighbors, DefaultMaxNeighbors)
	setDefault(&neg, &opts.MaxPacket, 65535)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if neg {
		return nil, errors.New("neigh: negative option")
	}
	return &Routes{o: opts, routes: make(map[netip.Addr]*route), neighs: make(map[netip.Addr]*neighbor),
		lastGC: opts.Now()}, nil
}

// HandleFrame implements NextHops.HandleFrame: it consumes nothing. ARP
// and NDP belong to the kernel, which answers for the addresses it shares
// with the nexus and whose table Routes follows.
func (r *Routes) HandleFrame(frame, reply []byte) (int, bool) { return 0, false }

// Stats implements NextHops.Stats.
func (r *Routes) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.stats
	st.Pending = uint64(r.hold.held)
	return st
}

// Waiting implements NextHops.Waiting.
func (r *Routes) Waiting() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.waiting) > 0
}

// ask passes q on and counts it.
func (r *Routes) ask(q Query) {
	if q.Kind == QueryRoute {
		r.stats.RouteQueries++
	} else {
		r.stats.SolicitsSent++
	}
	r.o.Ask(q)
}

// askRoute asks for f's route unless a question is already out.
func (r *Routes) askRoute(dst netip.Addr, f *route, now time.Time) {
	if !f.asked.IsZero() && now.Sub(f.asked) < r.o.RetryInterval {
		return
	}
	f.asked = now
	r.ask(Query{QueryRoute, dst})
}

// askNeighbor asks the kernel to resolve (or confirm) via, at most every
// every.
func (r *Routes) askNeighbor(via netip.Addr, now time.Time, every time.Duration) {
	n := r.neighs[via]
	if n == nil {
		if len(r.neighs) >= r.o.MaxNeighbors {
			r.stats.PendingOverflow++ // nowhere to keep the answer
			return
		}
		n = &neighbor{state: Incomplete}
		r.neighs[via] = n
	} else if !n.asked.IsZero() && now.Sub(n.asked) < every {
		return
	}
	n.asked = now
	r.ask(Query{QueryNeighbor, via})
}

// Resolve implements NextHops.Resolve: the MAC of dst's next hop when its
// route and that neighbour are known. An expired route is asked again and
// used meanwhile; a stale neighbour is used and the kernel asked to
// confirm it.
func (r *Routes) Resolve(dst netip.Addr) (MAC, bool) {
	dst = dst.Unmap()
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.routes[dst]
	if f == nil || !f.known || !f.via.IsValid() {
		return MAC{}, false
	}
	now := r.o.Now()
	f.used = now
	if !now.Before(f.expires) {
		r.askRoute(dst, f, now)
	}
	n := r.neighs[f.via]
	if !n.usable() {
		return MAC{}, false
	}
	if n.state == Stale {
		r.askNeighbor(f.via, now, r.o.RefreshInterval)
	}
	return n.mac, true
}

// Hold implements NextHops.Hold. A new remote gets a route entry and its
// question; a packet for a remote the kernel does not route through the
// link is refused (NoRoute) until the answer expires or the routes change.
func (r *Routes) Hold(dst netip.Addr, pkt []byte) bool {
	dst = dst.Unmap()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(pkt) > r.o.MaxPacket || !dst.IsValid() || r.hold.held >= r.o.MaxPending {
		r.stats.PendingOverflow++
		return false
	}
	now := r.o.Now()
	f := r.routes[dst]
	if f == nil {
		if f = r.newRoute(); f == nil {
			r.stats.PendingOverflow++
			return false
		}
		r.routes[dst] = f
		r.askRoute(dst, f, now)
	}
	f.used = now
	if f.known && !f.via.IsValid() {
		if now.Before(f.expires) {
			r.stats.NoRoute++
			return false
		}
		r.askRoute(dst, f, now)
	}
	if len(f.pending) >= r.o.PendingPerAddr {
		r.stats.PendingOverflow++
		return false
	}
	if f.known && f.via.IsValid() && !r.neighs[f.via].usable() {
		r.askNeighbor(f.via, now, r.o.RetryInterval)
	}
	if len(f.pending) == 0 {
		f.since = now
	}
	f.pending = r.hold.push(f.pending, pkt)
	if !f.waiting {
		f.waiting = true
		r.waiting = append(r.waiting, dst)
	}
	r.stats.PendingQueued++
	return true
}

// newRoute returns a new route entry, evicting one with nothing held when
// the table is full (the least recently used of a few looked at), or nil.
func (r *Routes) newRoute() *route {
	if len(r.routes) >= r.o.MaxRoutes {
		var (
			victim netip.Addr
			oldest time.Time
			looked int
		)
		// Map order is random: the oldest of the first 8 idle entries is
		// close enough to LRU, at a bounded cost per new remote.
		for k, f := range r.routes {
			if len(f.pending) > 0 {
				continue
			}
			if !victim.IsValid() || f.used.Before(oldest) {
				victim, oldest = k, f.used
			}
			if looked++; looked == 8 {
				break
			}
		}
		if !victim.IsValid() {
			return nil
		}
		delete(r.routes, victim)
		r.stats.RoutesEvicted++
	}
	return &route{}
}

// Poll implements NextHops.Poll: it releases the held packets whose route
// and next hop are known, drops those that waited ResolveTimeout (or whose
// remote turned out unreachable), asks again what stayed unanswered
// RetryInterval, and forgets routes unused for RouteTTL.
func (r *Routes) Poll(bufs [][]byte, sizes []int) int {
	limit := min(len(bufs), len(sizes))
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.o.Now()
	n := 0
	keep := r.waiting[:0]
	for _, dst := range r.waiting {
		f := r.routes[dst]
		if f == nil || len(f.pending) == 0 {
			continue
		}
		switch nb := r.neighs[f.via]; {
		case f.known && f.via.IsValid() && nb.usable():
			r.stats.Resolved++
			f.since = now // for what the buffers leave for the next Poll
			f.pending, n = r.hold.release(f.pending, bufs, sizes, n, limit, nb.mac, r.o.MAC, dst, &r.stats)
		case f.known && !f.via.IsValid():
			r.stats.NoRoute += uint64(len(f.pending))
			r.stats.PendingExpired += uint64(len(f.pending))
			f.pending = r.hold.drop(f.pending)
		case now.Sub(f.since) >= r.o.ResolveTimeout:
			r.stats.Failed++
			r.stats.PendingExpired += uint64(len(f.pending))
			f.pending = r.hold.drop(f.pending)
		case !f.known:
			r.askRoute(dst, f, now)
		default:
			r.askNeighbor(f.via, now, r.o.RetryInterval)
		}
		if len(f.pending) > 0 {
			keep = append(keep, dst)
		} else {
			f.waiting = false
		}
	}
	clear(r.waiting[len(keep):])
	r.waiting = keep
	if now.Sub(r.lastGC) >= time.Second {
		r.lastGC = now
		for dst, f := range r.routes {
			if len(f.pending) == 0 && now.Sub(f.used) >= r.o.RouteTTL {
				delete(r.routes, dst)
				r.stats.RoutesExpired++
			}
		}
	}
	return n
}

// SetRoute records the kernel's answer to QueryRoute for dst: via is its
// next hop (a gateway, or dst itself on-link), invalid when the kernel
// routes dst through another interface or nowhere. A positive answer holds
// for RouteTTL, a negative one for RetryInterval. If packets wait, the
// next hop is asked at once.
func (r *Routes) SetRoute(dst, via netip.Addr) {
	dst, via = dst.Unmap(), via.Unmap()
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.routes[dst]
	if f == nil {
		return // evicted meanwhile
	}
	now := r.o.Now()
	if f.known && f.via != via {
		r.stats.RouteChanges++
	}
	f.known, f.via, f.asked = true, via, time.Time{}
	if via.IsValid() {
		f.expires = now.Add(r.o.RouteTTL)
		if len(f.pending) > 0 && !r.neighs[via].usable() {
			r.askNeighbor(via, now, r.o.RetryInterval)
		}
	} else {
		f.expires = now.Add(r.o.RetryInterval)
	}
}

// ExpireRoutes marks every cached route expired: the kernel's routes
// changed, so each is asked again on its next use (and used meanwhile, as
// a packet in flight would be).
func (r *Routes) ExpireRoutes() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.o.Now()
	for _, f := range r.routes {
		if f.known && f.expires.After(now) {
			f.expires = now
		}
	}
}

// SetNeighbor records the kernel's entry for ip: its MAC and state
// (Reachable for confirmed or static entries, Stale for usable ones the
// kernel would check, Incomplete while it resolves, Failed when it gave
// up). A new MAC for a known neighbour (a replaced host) takes effect at
// once, and is counted. A zero or group MAC makes the entry Incomplete.
func (r *Routes) SetNeighbor(ip netip.Addr, mac MAC, st State) {
	ip = ip.Unmap()
	if (st == Reachable || st == Stale) && (mac == MAC{} || mac[0]&1 != 0) {
		st = Incomplete // a zero or group MAC is no next hop's: never send to it
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.neighs[ip]
	if n == nil {
		if len(r.neighs) >= r.o.MaxNeighbors {
			r.stats.NeighborsIgnored++
			return
		}
		n = &neighbor{}
		r.neighs[ip] = n
	}
	if st == Reachable || st == Stale {
		if n.usable() && n.mac != mac {
			r.stats.MACChanges++
		}
		n.mac = mac
	}
	n.state = st
}

// DeleteNeighbor forgets the kernel's entry for ip (the kernel removed
// it); the next packet for it asks again.
func (r *Routes) DeleteNeighbor(ip netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.neighs, ip.Unmap())
}

// RouteInfo is one cached route, as Table lists it.
type RouteInfo struct {
	Remote  netip.Addr `json:"remote"`
	Via     netip.Addr `json:"via"`                // next hop: the remote itself on-link; invalid (JSON "") when unreachable or unknown
	Known   bool       `json:"known"`              // the kernel answered
	MAC     string     `json:"mac,omitempty"`      // the next hop's, when usable
	State   string     `json:"state,omitempty"`    // the next hop's neighbour state
	Expires float64    `json:"expires_in_seconds"` // until the answer is asked again (≤ 0: on next use)
	Held    int        `json:"held"`               // packets waiting
}

// NeighborInfo is one next hop in use, as Table lists it.
type NeighborInfo struct {
	Addr   netip.Addr `json:"addr"`
	MAC    string     `json:"mac,omitempty"`
	State  string     `json:"state"`
	Routes int        `json:"routes"` // cached routes through it
}

// Table returns up to max cached routes (the most recently used first)
// and the next hops they use, and the number of routes in all.
func (r *Routes) Table(max int) (routes []RouteInfo, neighbors []NeighborInfo, total int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.o.Now()
	type kv struct {
		dst netip.Addr
		f   *route
	}
	all := make([]kv, 0, len(r.routes))
	for k, f := range r.routes {
		all = append(all, kv{k, f})
	}
	slices.SortFunc(all, func(a, b kv) int {
		if c := b.f.used.Compare(a.f.used); c != 0 {
			return c
		}
		return a.dst.Compare(b.dst)
	})
	vias := map[netip.Addr]int{}
	for i, x := range all {
		if x.f.via.IsValid() {
			vias[x.f.via]++
		}
		if i >= max {
			continue
		}
		ri := RouteInfo{Remote: x.dst, Via: x.f.via, Known: x.f.known, Held: len(x.f.pending),
			Expires: x.f.expires.Sub(now).Seconds()}
		if n := r.neighs[x.f.via]; n != nil {
			ri.State = n.state.String()
			if n.usable() {
				ri.MAC = n.mac.String()
			}
		}
		routes = append(routes, ri)
	}
	for via, k := range vias {
		ni := NeighborInfo{Addr: via, State: "none", Routes: k}
		if n := r.neighs[via]; n != nil {
			ni.State = n.state.String()
			if n.usable() {
				ni.MAC = n.mac.String()
			}
		}
		neighbors = append(neighbors, ni)
	}
	slices.SortFunc(neighbors, func(a, b NeighborInfo) int { return a.Addr.Compare(b.Addr) })
	if len(neighbors) > max {
		neighbors = neighbors[:max]
	}
	return routes, neighbors, len(all)
}
