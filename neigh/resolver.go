package neigh

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// State is a cache entry's state.
type State uint8

const (
	Incomplete State = iota + 1 // solicited, no answer yet
	Reachable                   // confirmed less than ReachableTime ago
	Stale                       // usable, not confirmed lately
	Failed                      // resolution failed (Routes: the kernel's entry says so)
)

func (s State) String() string {
	switch s {
	case Incomplete:
		return "incomplete"
	case Reachable:
		return "reachable"
	case Stale:
		return "stale"
	case Failed:
		return "failed"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Defaults of Options, Linux's where it has one (net.ipv4.neigh.default).
const (
	DefaultReachableTime  = 30 * time.Second // base_reachable_time_ms
	DefaultRetransTime    = time.Second      // retrans_time_ms
	DefaultMaxProbes      = 3                // mcast_solicit / ucast_solicit
	DefaultStaleTime      = 60 * time.Second // gc_stale_time: unused stale entries go
	DefaultPendingPerAddr = 8                // Linux holds 101 (unres_qlen); a few suffice for a SYN and retries
	DefaultMaxPending     = 256
	DefaultMaxEntries     = 1024
	// PollInterval is how often the nexus should call Poll at least: a
	// tenth of RetransTime, so retransmissions are late by at most 10%.
	PollInterval = 100 * time.Millisecond
)

// Options configure a Resolver.
type Options struct {
	// MAC is the link's hardware address. Required.
	MAC MAC
	// Addrs are the addresses the nexus owns on the link: it answers ARP
	// and NS for them, and uses the first of each family as the source of
	// its own solicitations.
	Addrs []netip.Addr
	// Timers and bounds; zero means the default above.
	ReachableTime  time.Duration
	RetransTime    time.Duration
	MaxProbes      int
	StaleTime      time.Duration
	PendingPerAddr int
	MaxPending     int
	MaxEntries     int
	// MaxPacket is the longest packet Hold accepts. Default 65535.
	MaxPacket int
	// Now returns the current time. Default time.Now.
	Now func() time.Time
}

// Stats are a Resolver's counters.
type Stats struct {
	RepliesSent     uint64 // ARP replies and NAs built by HandleFrame
	SolicitsSent    uint64 // ARP requests and NSs returned by Poll
	Resolved        uint64 // entries that went from Incomplete to a MAC
	Failed          uint64 // entries removed after MaxProbes unanswered solicitations
	PendingQueued   uint64 // packets Hold accepted
	PendingSent     uint64 // held packets Poll released after resolution
	PendingOverflow uint64 // packets Hold dropped: queue for the address or in all full, or table full
	PendingExpired  uint64 // held packets dropped because resolution failed (Routes: or the remote is unreachable)
	BadFrames       uint64 // ARP/NDP frames refused by the parsers
	Pending         uint64 // packets held now (a gauge)
	// Routes only (zero for a Resolver). SolicitsSent counts the
	// resolutions and confirmations asked of the kernel, Resolved the
	// waits that ended with held packets sent, Failed those that timed out.
	RouteQueries     uint64 // routes asked of the kernel: new remotes, expired or changed routes
	RouteChanges     uint64 // answers that changed a remote's next hop
	NoRoute          uint64 // packets refused by Hold or dropped after it (also in PendingOverflow or PendingExpired's drops): the kernel routes their destination through another interface, or nowhere
	MACChanges       uint64 // a next hop's MAC replaced by the kernel's newer one (a replaced host)
	RoutesEvicted    uint64 // idle routes evicted to make room for a new remote
	RoutesExpired    uint64 // routes forgotten after RouteTTL unused
	NeighborsIgnored uint64 // kernel neighbour entries not mirrored: MaxNeighbors reached
}

type entry struct {
	state     State
	mac       MAC
	confirmed time.Time // last confirmation (Reachable), or last use
	probes    int       // solicitations sent since the last confirmation
	nextProbe time.Time // when Poll sends the next one; zero: none due
	pending   [][]byte  // held packets, oldest first
}

// Resolver is the neighbour cache and responder of one Ethernet link.
type Resolver struct {
	mu    sync.Mutex
	o     Options // immutable after New, but for Addrs (guarded by mu)
	src4  netip.Addr
	src6  netip.Addr
	owned map[netip.Addr]bool
	ents  map[netip.Addr]*entry
	hold  holdPool
	stats Stats
}

// New checks opts and returns a Resolver.
func New(opts Options) (*Resolver, error) {
	if opts.MAC == (MAC{}) {
		return nil, errors.New("neigh: Options.MAC is required")
	}
	if opts.MAC[0]&1 != 0 {
		return nil, fmt.Errorf("neigh: MAC %x is a group address", opts.MAC)
	}
	var neg bool
	setDefault(&neg, &opts.ReachableTime, DefaultReachableTime)
	setDefault(&neg, &opts.RetransTime, DefaultRetransTime)
	setDefault(&neg, &opts.StaleTime, DefaultStaleTime)
	setDefault(&neg, &opts.MaxProbes, DefaultMaxProbes)
	setDefault(&neg, &opts.PendingPerAddr, DefaultPendingPerAddr)
	setDefault(&neg, &opts.MaxPending, DefaultMaxPending)
	setDefault(&neg, &opts.MaxEntries, DefaultMaxEntries)
	setDefault(&neg, &opts.MaxPacket, 65535)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if neg {
		return nil, errors.New("neigh: negative option")
	}
	r := &Resolver{o: opts, owned: make(map[netip.Addr]bool), ents: make(map[netip.Addr]*entry)}
	addrs := opts.Addrs
	r.o.Addrs = nil
	for _, a := range addrs {
		if err := r.AddAddr(a); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// setDefault sets *v to d if it is zero, and sets *neg if it is negative.
func setDefault[T int | time.Duration](neg *bool, v *T, d T) {
	if *v == 0 {
		*v = d
	}
	if *v < 0 {
		*neg = true
	}
}

// AddAddr makes the Resolver answer for a (an address the nexus owns).
func (r *Resolver) AddAddr(a netip.Addr) error {
	a = a.Unmap()
	if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
		return fmt.Errorf("neigh: cannot own address %v", a)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.owned[a] = true
	if a.Is4() && !r.src4.IsValid() {
		r.src4 = a
	}
	if a.Is6() && !r.src6.IsValid() {
		r.src6 = a
	}
	return nil
}

// RemoveAddr stops answering for a.
func (r *Resolver) RemoveAddr(a netip.Addr) {
	a = a.Unmap()
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.owned, a)
	if r.src4 == a || r.src6 == a {
		r.src4, r.src6 = netip.Addr{}, netip.Addr{}
		for o := range r.owned {
			if o.Is4() && !r.src4.IsValid() {
				r.src4 = o
			}
			if o.Is6() && !r.src6.IsValid() {
				r.src6 = o
			}
		}
	}
}

// Stats returns a snapshot of the counters.
func (r *Resolver) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.stats
	st.Pending = uint64(r.hold.held)
	return st
}

// Lookup returns the entry for ip without touching it: for tests and
// introspection.
func (r *Resolver) Lookup(ip netip.Addr) (MAC, State, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.ents[ip.Unmap()]
	if e == nil {
		return MAC{}, 0, false
	}
	return e.mac, e.state, true
}

// newEntry adds an Incomplete entry for ip, or returns nil when the table
// is full and no stale entry without held packets can make room.
func (r *Resolver) newEntry(ip netip.Addr) *entry {
	if len(r.ents) >= r.o.MaxEntries {
		victim := netip.Addr{}
		for k, e := range r.ents {
			if e.state == Stale && len(e.pending) == 0 {
				victim = k
				break
			}
		}
		if !victim.IsValid() {
			return nil
		}
		delete(r.ents, victim)
	}
	e := &entry{state: Incomplete}
	r.ents[ip] = e
	return e
}

// confirm records mac for e: Reachable when the answer proves
// reachability, Stale otherwise. An entry leaving Incomplete counts as
// resolved; its held packets go out on the next Poll.
func (r *Resolver) confirm(e *entry, mac MAC, reachable bool, now time.Time) {
	if e.state == Incomplete {
		r.stats.Resolved++
	}
	e.mac = mac
	e.confirmed = now
	e.probes = 0
	e.nextProbe = time.Time{}
	e.state = Stale
	if reachable {
		e.state = Reachable
	}
}

// Resolve returns the MAC for the next hop ip, if one is known (Reachable
// or Stale). Using a Stale entry schedules a unicast probe, sent by Poll.
func (r *Resolver) Resolve(ip netip.Addr) (MAC, bool) {
	ip = ip.Unmap()
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.ents[ip]
	if e == nil || e.state == Incomplete {
		return MAC{}, false
	}
	now := r.o.Now()
	if e.state == Reachable && now.Sub(e.confirmed) >= r.o.ReachableTime {
		e.state = Stale
	}
	if e.state == Stale {
		e.confirmed = now // last use: the stale GC counts from here
		if e.nextProbe.IsZero() && e.probes == 0 {
			e.nextProbe = now
		}
	}
	return e.mac, true
}

// Hold keeps a copy of the IP packet pkt until ip, its next hop, is
// resolved (Poll then sends it) or resolution fails (it is dropped and
// counted). A new address gets an Incomplete entry and a solicitation on
// the next Poll. It returns false when the packet was dropped at once: the
// address's queue or all queues are full, the table is full, or the packet
// is longer than MaxPacket. If ip is already resolved, the packet is
// queued and released by the next Poll.
func (r *Resolver) Hold(ip netip.Addr, pkt []byte) bool {
	ip = ip.Unmap()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(pkt) > r.o.MaxPacket || !ip.IsValid() || r.hold.held >= r.o.MaxPending {
		r.stats.PendingOverflow++
		return false
	}
	e := r.ents[ip]
	if e == nil {
		if e = r.newEntry(ip); e == nil {
			r.stats.PendingOverflow++
			return false
		}
		e.nextProbe = r.o.Now()
	}
	if len(e.pending) >= r.o.PendingPerAddr {
		r.stats.PendingOverflow++
		return false
	}
	e.pending = r.hold.push(e.pending, pkt)
	r.stats.PendingQueued++
	return true
}

// Poll advances the timers and writes frames to send into bufs, at most
// min(len(bufs), len(sizes)): solicitations due (broadcast ARP or
// solicited-node NS for Incomplete entries, unicast for probing Stale
// ones), and held packets whose next hop is known, each with an Ethernet
// header. Each bufs[i] must hold a held packet plus 14 bytes; a held
// packet that does not fit is dropped and counted as expired. Frames left
// over when bufs run out come with the next Poll. It returns how many
// frames it wrote.
func (r *Resolver) Poll(bufs [][]byte, sizes []int) int {
	limit := min(len(bufs), len(sizes))
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.o.Now()
	n := 0
	for ip, e := range r.ents {
		switch e.state {
		case Reachable:
			if now.Sub(e.confirmed) >= r.o.ReachableTime {
				e.state = Stale
			}
		case Stale:
			if e.probes == 0 && e.nextProbe.IsZero() && now.Sub(e.confirmed) >= r.o.StaleTime && len(e.pending) == 0 {
				delete(r.ents, ip)
				continue
			}
		}
		if !e.nextProbe.IsZero() && !now.Before(e.nextProbe) {
			if e.probes >= r.o.MaxProbes {
				// No answer to MaxProbes solicitations: give up.
				r.stats.Failed++
				r.stats.PendingExpired += uint64(len(e.pending))
				e.pending = r.hold.drop(e.pending)
				delete(r.ents, ip)
				continue
			}
			if n < limit {
				// Without an owned source address (IPv4) solicit writes
				// nothing, but the probe still counts, so the entry and
				// its held packets expire instead of waiting forever.
				if m := r.solicit(bufs[n], ip, e); m > 0 {
					sizes[n] = m
					n++
					r.stats.SolicitsSent++
				}
				e.probes++
				e.nextProbe = now.Add(r.o.RetransTime)
			}
		}
		if e.state != Incomplete {
			e.pending, n = r.hold.release(e.pending, bufs, sizes, n, limit, e.mac, r.o.MAC, ip, &r.stats)
		}
	}
	return n
}

// solicit writes the solicitation for ip into b: broadcast (ARP) or
// solicited-node multicast (NS) while Incomplete, unicast to the cached MAC
// when probing a Stale entry. It returns 0 if there is no owned source
// address of ip's family to ask from (IPv4), or b is too small.
func (r *Resolver) solicit(b []byte, ip netip.Addr, e *entry) int {
	if ip.Is4() {
		if !r.src4.IsValid() {
			return 0
		}
		a := ARP{EthDst: Broadcast, EthSrc: r.o.MAC, Op: ARPRequest,
			SenderMAC: r.o.MAC, SenderIP: r.src4, TargetIP: ip}
		if e.state != Incomplete {
			a.EthDst = e.mac
		}
		n, _ := PutARP(b, &a)
		return n
	}
	src := r.src6
	m := NDP{EthSrc: r.o.MAC, Src: src, Type: TypeNS, Target: ip, LL: r.o.MAC, HasLL: true}
	if !src.IsValid() {
		m.Src, m.HasLL = netip.IPv6Unspecified(), false // no address of ours yet: ask as DAD does
	}
	if e.state == Incomplete {
		m.Dst, m.EthDst = SolicitedNode(ip)
	} else {
		m.Dst, m.EthDst = ip, e.mac
	}
	n, _ := PutNDP(b, &m)
	return n
}

// putFrame writes an Ethernet header from src to dst and the IP packet p
// (for ip, its next hop or destination: the family names the EtherType)
// into b. It returns 0 if b is too small.
func putFrame(b []byte, dst, src MAC, ip netip.Addr, p []byte) int {
	if len(b) < ethHdrLen+len(p) {
		return 0
	}
	copy(b[0:6], dst[:])
	copy(b[6:12], src[:])
	et := uint16(etherTypeIPv4)
	if ip.Is6() {
		et = etherTypeIPv6
	}
	b[12], b[13] = byte(et>>8), byte(et)
	return ethHdrLen + copy(b[ethHdrLen:], p)
}
