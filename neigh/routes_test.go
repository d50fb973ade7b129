package neigh

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/fuzzbytes"
)

// Addresses of the route tests (documentation and benchmarking ranges):
// a far remote behind the gateway gw4, and on-link peers.
var (
	far4 = netip.MustParseAddr("198.19.0.10")
	gw4  = netip.MustParseAddr("198.18.0.254")
	gw6  = netip.MustParseAddr("fe80::1")
	far6 = netip.MustParseAddr("2001:db8:2::10")
	macC = MAC{0x02, 0, 0, 0, 0, 0x0c}
)

// routesRig is a Routes on a fake clock that records its questions.
type routesRig struct {
	*Routes
	clk *fakeClock
	qs  []Query
}

func newRoutes(t *testing.T, o RoutesOptions) *routesRig {
	t.Helper()
	g := &routesRig{clk: &fakeClock{t: time.Unix(1000, 0)}}
	o.MAC, o.Now = macA, g.clk.Now
	o.Ask = func(q Query) { g.qs = append(g.qs, q) }
	r, err := NewRoutes(o)
	if err != nil {
		t.Fatal(err)
	}
	g.Routes = r
	return g
}

// asked returns the questions since the last call.
func (g *routesRig) asked() []Query {
	q := g.qs
	g.qs = nil
	return q
}

// TestRoutesOnLink: a new remote asks its route, then (on-link: the next
// hop is the remote) its neighbour; the kernel's entry releases the held
// packets in order with the neighbour's MAC, and Resolve gives it after.
func TestRoutesOnLink(t *testing.T) {
	g := newRoutes(t, RoutesOptions{})
	if _, ok := g.Resolve(ip4B); ok {
		t.Fatal("resolved an unknown remote")
	}
	for i := range 2 {
		if !g.Hold(ip4B, []byte{0x45, byte(i)}) {
			t.Fatal("Hold refused")
		}
	}
	if q := g.asked(); !slices.Equal(q, []Query{{QueryRoute, ip4B}}) {
		t.Fatalf("asked %v, want the route once", q)
	}
	if !g.Waiting() || len(poll(g)) != 0 {
		t.Fatal("released before any answer")
	}
	g.SetRoute(ip4B, ip4B)
	if q := g.asked(); !slices.Equal(q, []Query{{QueryNeighbor, ip4B}}) {
		t.Fatalf("asked %v after the route, want the neighbour", q)
	}
	g.SetNeighbor(ip4B, macB, Incomplete)
	if len(poll(g)) != 0 {
		t.Fatal("released to an incomplete neighbour")
	}
	g.SetNeighbor(ip4B, macB, Reachable)
	out := poll(g)
	if len(out) != 2 {
		t.Fatalf("released %d frames, want 2", len(out))
	}
	for i, f := range out {
		if MAC(f[0:6]) != macB || MAC(f[6:12]) != macA || f[12] != 0x08 || f[13] != 0x00 || f[15] != byte(i) {
			t.Fatalf("frame %d: % x", i, f)
		}
	}
	if mac, ok := g.Resolve(ip4B); !ok || mac != macB {
		t.Fatalf("Resolve: %v %v", mac, ok)
	}
	st := g.Stats()
	if st.PendingQueued != 2 || st.PendingSent != 2 || st.Resolved != 1 || st.RouteQueries != 1 || st.SolicitsSent != 1 || g.Waiting() {
		t.Fatalf("stats %+v, waiting %v", st, g.Waiting())
	}
}

// TestRoutesGateway: a far remote (IPv4, and IPv6 through a link-local
// router) resolves to its gateway's MAC; a second remote behind the same
// gateway asks only its route.
func TestRoutesGateway(t *testing.T) {
	g := newRoutes(t, RoutesOptions{})
	g.SetNeighbor(gw6, macC, Reachable) // known from the start (the table's dump)
	g.Hold(far4, []byte{0x45})
	g.Hold(far6, []byte{0x60})
	g.SetRoute(far4, gw4)
	g.SetRoute(far6, gw6)
	if q := g.asked(); !slices.Equal(q, []Query{{QueryRoute, far4}, {QueryRoute, far6}, {QueryNeighbor, gw4}}) {
		t.Fatalf("asked %v", q)
	}
	g.SetNeighbor(gw4, macB, Stale)
	out := poll(g)
	if len(out) != 2 {
		t.Fatalf("released %d, want 2", len(out))
	}
	for _, f := range out {
		want, et := macB, byte(0x00)
		if f[14] == 0x60 {
			want, et = macC, 0xdd
		}
		if MAC(f[0:6]) != want || f[13] != et {
			t.Fatalf("frame % x", f)
		}
	}
	other := netip.MustParseAddr("198.19.0.11")
	g.Hold(other, []byte{0x45})
	g.SetRoute(other, gw4)
	if mac, ok := g.Resolve(other); !ok || mac != macB {
		t.Fatalf("second remote: %v %v", mac, ok)
	}
	if q := g.asked(); !slices.Equal(q, []Query{{QueryRoute, other}}) {
		// The stale gateway was asked to confirm within RefreshInterval.
		t.Fatalf("asked %v", q)
	}
}

// TestRoutesExpiry: an answer holds RouteTTL; after it the route is used
// and asked again; a route unused for RouteTTL is forgotten; a routing
// change expires every route, and a new next hop takes effect when
// answered.
func TestRoutesExpiry(t *testing.T) {
	const ttl = 600 * time.Second
	g := newRoutes(t, RoutesOptions{})
	g.SetNeighbor(gw4, macB, Reachable)
	g.SetNeighbor(ip4B, macC, Reachable)
	g.Hold(far4, []byte{0x45})
	g.SetRoute(far4, gw4)
	poll(g)
	g.asked()
	g.clk.Advance(ttl - time.Second)
	if _, ok := g.Resolve(far4); !ok || len(g.asked()) != 0 {
		t.Fatal("asked again before RouteTTL")
	}
	g.clk.Advance(time.Second)
	if mac, ok := g.Resolve(far4); !ok || mac != macB {
		t.Fatal("expired route not used meanwhile")
	}
	if q := g.asked(); !slices.Equal(q, []Query{{QueryRoute, far4}}) {
		t.Fatalf("expired: asked %v", q)
	}
	if _, ok := g.Resolve(far4); !ok || len(g.asked()) != 0 {
		t.Fatal("asked twice within RetryInterval")
	}
	g.SetRoute(far4, gw4)
	// The routing table changes: far4 is now on-link (a more specific
	// route), through ip4B's MAC once answered.
	g.ExpireRoutes()
	if mac, _ := g.Resolve(far4); mac != macB {
		t.Fatal("route dropped before the new answer")
	}
	if q := g.asked(); !slices.Equal(q, []Query{{QueryRoute, far4}}) {
		t.Fatalf("after the change: asked %v", q)
	}
	g.SetRoute(far4, ip4B)
	if mac, _ := g.Resolve(far4); mac != macC {
		t.Fatalf("new next hop not used: %v", mac)
	}
	if g.Stats().RouteChanges != 1 {
		t.Fatalf("RouteChanges %d", g.Stats().RouteChanges)
	}
	// Unused for RouteTTL: forgotten, and asked afresh when used again.
	g.clk.Advance(ttl)
	poll(g)
	if g.Stats().RoutesExpired != 1 {
		t.Fatalf("RoutesExpired %d", g.Stats().RoutesExpired)
	}
	if _, ok := g.Resolve(far4); ok {
		t.Fatal("forgotten route still resolves")
	}
	if r, _, n := g.Table(10); n != 0 || len(r) != 0 {
		t.Fatalf("table %v", r)
	}
}

// TestRoutesMACChange: the kernel's new MAC for a neighbour (a replaced
// host) is used by the very next packet; a deleted entry is asked again.
func TestRoutesMACChange(t *testing.T) {
	g := newRoutes(t, RoutesOptions{})
	g.Hold(ip4B, []byte{0x45})
	g.SetRoute(ip4B, ip4B)
	g.SetNeighbor(ip4B, macB, Reachable)
	poll(g)
	g.SetNeighbor(ip4B, macC, Stale)
	if mac, ok := g.Resolve(ip4B); !ok || mac != macC {
		t.Fatalf("after the change: %v %v", mac, ok)
	}
	if g.Stats().MACChanges != 1 {
		t.Fatalf("MACChanges %d", g.Stats().MACChanges)
	}
	g.DeleteNeighbor(ip4B)
	g.asked()
	if _, ok := g.Resolve(ip4B); ok {
		t.Fatal("deleted neighbour still resolves")
	}
	g.Hold(ip4B, []byte{0x45})
	if q := g.asked(); !slices.Equal(q, []Query{{QueryNeighbor, ip4B}}) {
		t.Fatalf("asked %v", q)
	}
}

// TestRoutesStaleRefresh: a stale neighbour in use is confirmed through
// the kernel at most every RefreshInterval; a reachable one never.
func TestRoutesStaleRefresh(t *testing.T) {
	g := newRoutes(t, RoutesOptions{})
	g.Hold(ip4B, []byte{0x45})
	g.SetRoute(ip4B, ip4B)
	g.SetNeighbor(ip4B, macB, Reachable)
	poll(g)
	g.asked()
	for range 3 {
		g.Resolve(ip4B)
	}
	if q := g.asked(); len(q) != 0 {
		t.Fatalf("reachable: asked %v", q)
	}
	g.SetNeighbor(ip4B, macB, Stale)
	g.clk.Advance(DefaultRefreshInterval) // the last question is older than that
	for range 3 {
		if _, ok := g.Resolve(ip4B); !ok {
			t.Fatal("stale neighbour not used")
		}
	}
	if q := g.asked(); !slices.Equal(q, []Query{{QueryNeighbor, ip4B}}) {
		t.Fatalf("stale: asked %v, want one confirmation", q)
	}
	g.clk.Advance(DefaultRefreshInterval)
	g.Resolve(ip4B)
	if len(g.asked()) != 1 {
		t.Fatal("no second confirmation after RefreshInterval")
	}
}

// TestRoutesHoldBounds: the hold queue is bounded per remote and in all;
// refusals are counted, and what was held waits at most ResolveTimeout,
// asked again every RetryInterval meanwhile.
func TestRoutesHoldBounds(t *testing.T) {
	g := newRoutes(t, RoutesOptions{PendingPerAddr: 2, MaxPending: 3})
	got := []bool{g.Hold(ip4B, []byte{1}), g.Hold(ip4B, []byte{2}), g.Hold(ip4B, []byte{3}),
		g.Hold(far4, []byte{4}), g.Hold(far4, []byte{5})}
	if !slices.Equal(got, []bool{true, true, false, true, false}) {
		t.Fatalf("held %v", got)
	}
	if st := g.Stats(); st.PendingOverflow != 2 || st.PendingQueued != 3 || st.Pending != 3 {
		t.Fatalf("stats %+v", st)
	}
	if !g.Hold(ip4B, make([]byte, 65535)) == g.Hold(ip4B, make([]byte, 65536)) {
		t.Fatal("MaxPacket not enforced")
	}
	g.asked()
	g.clk.Advance(DefaultRetryInterval)
	poll(g)
	if q := g.asked(); len(q) != 2 {
		t.Fatalf("unanswered questions asked again: %v", q)
	}
	g.clk.Advance(DefaultResolveTimeout)
	poll(g)
	st := g.Stats()
	if st.PendingExpired != 3 || st.Failed != 2 || g.Waiting() {
		t.Fatalf("after the timeout: %+v", st)
	}
	if !g.Hold(ip4B, []byte{6}) {
		t.Fatal("the queue did not empty")
	}
}

// TestRoutesUnreachable: a remote the kernel routes elsewhere loses its
// held packets and is refused until the negative answer expires.
func TestRoutesUnreachable(t *testing.T) {
	g := newRoutes(t, RoutesOptions{})
	g.Hold(far4, []byte{1})
	g.SetRoute(far4, netip.Addr{})
	if len(poll(g)) != 0 || g.Stats().NoRoute != 1 {
		t.Fatalf("NoRoute %d", g.Stats().NoRoute)
	}
	g.asked()
	if g.Hold(far4, []byte{2}) || g.Stats().NoRoute != 2 {
		t.Fatal("held for an unreachable remote")
	}
	g.clk.Advance(DefaultRetryInterval)
	if !g.Hold(far4, []byte{3}) {
		t.Fatal("refused after the negative answer expired")
	}
	if q := g.asked(); !slices.Equal(q, []Query{{QueryRoute, far4}}) {
		t.Fatalf("asked %v", q)
	}
}

// TestRoutesEvict: a full table evicts an idle route for a new remote, and
// refuses one only when every route holds packets.
func TestRoutesEvict(t *testing.T) {
	g := newRoutes(t, RoutesOptions{MaxRoutes: 2})
	g.Hold(ip4B, []byte{1})
	g.SetRoute(ip4B, ip4B)
	g.SetNeighbor(ip4B, macB, Reachable)
	poll(g) // ip4B idle now
	g.Hold(far4, []byte{2})
	if !g.Hold(far6, []byte{3}) || g.Stats().RoutesEvicted != 1 {
		t.Fatalf("no eviction: %+v", g.Stats())
	}
	if _, ok := g.Resolve(ip4B); ok {
		t.Fatal("evicted route still resolves")
	}
	if g.Hold(ip4B, []byte{4}) {
		t.Fatal("held with every route busy")
	}
	r, nb, n := g.Table(10)
	if n != 2 || len(r) != 2 || len(nb) != 0 {
		t.Fatalf("table %v %v %d", r, nb, n)
	}
}

// TestRoutesTable: the table lists routes, most recently used first, and
// the next hops in use.
func TestRoutesTable(t *testing.T) {
	g := newRoutes(t, RoutesOptions{})
	g.SetNeighbor(gw4, macB, Reachable)
	for _, d := range []netip.Addr{far4, ip4B} {
		g.Hold(d, []byte{0x45})
		g.clk.Advance(time.Millisecond)
	}
	g.SetRoute(far4, gw4)
	g.SetRoute(ip4B, ip4B)
	routes, nbs, n := g.Table(10)
	if n != 2 || routes[0].Remote != ip4B || routes[1].Via != gw4 || routes[1].MAC != macB.String() || routes[0].Held != 1 {
		t.Fatalf("routes %+v", routes)
	}
	if len(nbs) != 2 || nbs[1].Addr != gw4 || nbs[1].State != "reachable" || nbs[0].State != "incomplete" {
		t.Fatalf("neighbours %+v", nbs)
	}
	if r, _, _ := g.Table(1); len(r) != 1 {
		t.Fatal("max not honoured")
	}
}

func TestRoutesOptions(t *testing.T) {
	for _, o := range []RoutesOptions{
		{Ask: func(Query) {}},
		{MAC: macA},
		{MAC: MAC{1}, Ask: func(Query) {}},
		{MAC: macA, Ask: func(Query) {}, RouteTTL: -1},
	} {
		if _, err := NewRoutes(o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

// FuzzRoutes replays sequences of datapath calls, kernel answers and
// events, and clock steps, checking the invariants: a released frame or a
// Resolve never carries a zero or group MAC (even when the kernel's entry
// has one), held packets stay within the bounds, every held packet is
// accounted for (sent, expired or still held), and a remote's packets
// leave in the order they were held.
func FuzzRoutes(f *testing.F) {
	f.Add([]byte{0, 1, 1, 1, 1, 3, 1, 1, 5, 2, 0, 6})
	f.Add([]byte{0, 2, 0, 2, 1, 2, 3, 2, 2, 2, 1, 5, 3, 0, 6, 7, 40, 6, 4, 6})
	f.Fuzz(func(t *testing.T, b []byte) {
		g := newRoutes(t, RoutesOptions{PendingPerAddr: 3, MaxPending: 5, MaxRoutes: 3})
		r := fuzzbytes.New(b)
		addrs := []netip.Addr{ip4B, far4, gw4, far6, gw6}
		macs := []MAC{{}, macB, macC, {0x03, 0, 0, 0, 0, 0x0d}}
		pick := func() int { return int(r.Byte()) % len(addrs) }
		var next, last [5]int // per remote: the next sequence number held, the last one seen on the wire (+1)
		for step := 0; !r.Done() && step < 200; step++ {
			switch r.Byte() % 8 {
			case 0:
				d := pick()
				hdr := byte(0x45)
				if addrs[d].Is6() {
					hdr = 0x60
				}
				g.Hold(addrs[d], []byte{hdr, byte(d), byte(next[d])})
				next[d]++
			case 1:
				d, via := addrs[pick()], addrs[pick()]
				if r.Byte()%4 == 0 {
					via = netip.Addr{}
				}
				g.SetRoute(d, via)
			case 2:
				g.SetNeighbor(addrs[pick()], macs[int(r.Byte())%len(macs)], State(1+r.Byte()%4))
			case 3:
				g.DeleteNeighbor(addrs[pick()])
			case 4:
				g.ExpireRoutes()
			case 5:
				g.clk.Advance(time.Duration(r.Byte()) * 50 * time.Millisecond)
			case 6:
				for _, fr := range poll(g) {
					if mac := MAC(fr[0:6]); mac == (MAC{}) || mac[0]&1 != 0 || MAC(fr[6:12]) != macA {
						t.Fatalf("frame with MACs % x", fr[:12])
					}
					d, n := int(fr[15]), int(fr[16])
					if d >= len(addrs) || n < last[d] || n >= next[d] {
						t.Fatalf("frame % x: out of order (last %d) or never held (next %d)", fr, last[d], next[d])
					}
					last[d] = n + 1
				}
			case 7:
				if mac, ok := g.Resolve(addrs[pick()]); ok && (mac == (MAC{}) || mac[0]&1 != 0) {
					t.Fatalf("Resolve gave MAC %v", mac)
				}
			}
			st := g.Stats()
			if g.hold.held > 5 || st.PendingQueued != st.PendingSent+st.PendingExpired+uint64(g.hold.held) {
				t.Fatalf("held %d, stats %+v", g.hold.held, st)
			}
		}
	})
}
