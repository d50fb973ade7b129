package kernel

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/skylane/skylane/internal/nettest"
	"github.com/skylane/skylane/neigh"
)

// waitBound bounds every wait for the kernel here: a resolution on a veth
// takes a millisecond; the kernel gives up after 3 s.
const waitBound = 5 * time.Second

// follow starts a Follower on v's local end, in its namespace.
func follow(t *testing.T, v *nettest.Veth) *Follower {
	t.Helper()
	var f *Follower
	err := v.Local.Do(func() (err error) {
		f, err = Follow(Options{LinkIndex: v.LocalIndex, Routes: neigh.RoutesOptions{MAC: neigh.MAC(v.LocalMAC)}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Error(err)
		}
	})
	return f
}

// release holds one packet for dst and polls until it leaves, returning
// the destination MAC of its frame.
func release(t *testing.T, r *neigh.Routes, dst netip.Addr) neigh.MAC {
	t.Helper()
	pkt := []byte{0x45}
	if dst.Is6() {
		pkt[0] = 0x60
	}
	if !r.Hold(dst, pkt) {
		t.Fatalf("Hold %v refused: %+v", dst, r.Stats())
	}
	bufs, sizes := [][]byte{make([]byte, 64)}, []int{0}
	deadline := time.Now().Add(waitBound)
	for time.Now().Before(deadline) {
		if r.Poll(bufs, sizes) == 1 {
			return neigh.MAC(bufs[0][:6])
		}
		time.Sleep(time.Millisecond) // polling the datapath's way, bounded
	}
	t.Fatalf("%v not resolved within %v: %+v", dst, waitBound, r.Stats())
	return neigh.MAC{}
}

func run(t *testing.T, ns *nettest.NS, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	if out, err := ns.Command(ctx, args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v: %s", args, err, out)
	}
}

// TestFollowResolves: with nothing in the kernel's tables yet, an on-link
// peer (IPv4 and IPv6) and far remotes behind it (through a route via its
// global address, and an IPv6 route via a link-local router address)
// resolve to the peer's MAC, by the kernel's ARP and NDP.
func TestFollowResolves(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	run(t, v.Peer, "ip", "-6", "addr", "add", "fe80::2/64", "dev", v.PeerName, "nodad")
	run(t, v.Local, "ip", "route", "add", "198.19.0.0/24", "via", v.PeerAddr.Addr().String())
	run(t, v.Local, "ip", "-6", "route", "add", "2001:db8:2::/64", "via", "fe80::2", "dev", v.LocalName)
	f := follow(t, v)
	r := f.Routes()
	for _, dst := range []netip.Addr{v.PeerAddr.Addr(), v.PeerAddr6.Addr(),
		netip.MustParseAddr("198.19.0.7"), netip.MustParseAddr("2001:db8:2::7")} {
		if mac := release(t, r, dst); mac != neigh.MAC(v.PeerMAC) {
			t.Errorf("%v: MAC %v, want the peer's %v", dst, mac, v.PeerMAC)
		}
	}
	routes, nbs, _ := r.Table(10)
	vias := map[netip.Addr]netip.Addr{}
	for _, x := range routes {
		vias[x.Remote] = x.Via
	}
	if vias[netip.MustParseAddr("198.19.0.7")] != v.PeerAddr.Addr() || vias[netip.MustParseAddr("2001:db8:2::7")] != netip.MustParseAddr("fe80::2") {
		t.Errorf("routes %+v", routes)
	}
	if len(nbs) != 3 {
		t.Errorf("next hops in use %+v, want 3", nbs)
	}
	if st := f.Stats(); st.RouteLookups != 4 || st.NeighborAsks < 3 || st.Errors != 0 || st.Resubscribed != 0 {
		t.Errorf("follower stats %+v", st)
	}
}

// TestFollowUnreachable: a remote the kernel routes elsewhere (no route,
// or a local address) is refused, counted, without waiting the timeout.
func TestFollowUnreachable(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	r := follow(t, v).Routes()
	for _, dst := range []netip.Addr{netip.MustParseAddr("203.0.113.9"), v.LocalAddr.Addr()} {
		r.Hold(dst, []byte{0x45})
	}
	bufs, sizes := [][]byte{make([]byte, 64)}, []int{0}
	deadline := time.Now().Add(waitBound)
	for r.Stats().NoRoute < 2 && time.Now().Before(deadline) {
		r.Poll(bufs, sizes)
		time.Sleep(time.Millisecond)
	}
	if st := r.Stats(); st.NoRoute != 2 || st.PendingSent != 0 || st.Failed != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestFollowMACChange: the peer changes its MAC (a replaced host) and
// talks again; the kernel learns the new MAC from its ARP request, and
// Routes resolves to it at once, counting the change.
func TestFollowMACChange(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	r := follow(t, v).Routes()
	peer := v.PeerAddr.Addr()
	if mac := release(t, r, peer); mac != neigh.MAC(v.PeerMAC) {
		t.Fatalf("MAC %v", mac)
	}
	newMAC := net.HardwareAddr{0x02, 0x5c, 0, 0, 0, 0x42}
	run(t, v.Peer, "ip", "link", "set", "dev", v.PeerName, "address", newMAC.String())
	// The peer's kernel flushed its cache: its next packet asks for us.
	if err := v.Peer.Do(func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(v.LocalAddr.Addr(), 9).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("hello"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitBound)
	for {
		if mac, ok := r.Resolve(peer); ok && mac == neigh.MAC(newMAC) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still not the new MAC after %v: %+v", waitBound, r.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	if r.Stats().MACChanges == 0 {
		t.Fatal("MACChanges not counted")
	}
}

// TestFollowRouteChange: a new, more specific route changes a cached
// remote's next hop once the routing event expires the cache.
func TestFollowRouteChange(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	run(t, v.Peer, "ip", "addr", "add", "198.18.0.3/24", "dev", v.PeerName)
	run(t, v.Local, "ip", "route", "add", "198.19.0.0/16", "via", v.PeerAddr.Addr().String())
	f := follow(t, v)
	r := f.Routes()
	far := netip.MustParseAddr("198.19.1.1")
	release(t, r, far)
	run(t, v.Local, "ip", "route", "add", "198.19.1.0/24", "via", "198.18.0.3")
	want := netip.MustParseAddr("198.18.0.3")
	deadline := time.Now().Add(waitBound)
	for {
		r.Resolve(far) // the use after the event asks again
		routes, _, _ := r.Table(10)
		if len(routes) == 1 && routes[0].Via == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("next hop not changed: %+v %+v", routes, f.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	if r.Stats().RouteChanges != 1 {
		t.Fatalf("RouteChanges %d", r.Stats().RouteChanges)
	}
}

// TestFollowClose: Close stops the goroutine and closes every socket; a
// second Close is a no-op, and Routes stays usable.
func TestFollowClose(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	before := nettest.OpenFDs(t)
	var f *Follower
	if err := v.Local.Do(func() (err error) {
		f, err = Follow(Options{LinkIndex: v.LocalIndex, Routes: neigh.RoutesOptions{MAC: neigh.MAC(v.LocalMAC)}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f.Routes().Hold(v.PeerAddr.Addr(), []byte{0x45})
	if after := nettest.OpenFDs(t); after != before {
		t.Fatalf("%d fds open, %d before", after, before)
	}
	if _, err := Follow(Options{}); err == nil {
		t.Fatal("no link index accepted")
	}
}

// TestState maps every NUD state.
func TestState(t *testing.T) {
	for nud, want := range map[int]neigh.State{
		netlink.NUD_REACHABLE: neigh.Reachable, netlink.NUD_PERMANENT: neigh.Reachable, netlink.NUD_NOARP: neigh.Reachable,
		netlink.NUD_STALE: neigh.Stale, netlink.NUD_DELAY: neigh.Stale, netlink.NUD_PROBE: neigh.Stale,
		netlink.NUD_FAILED: neigh.Failed, netlink.NUD_INCOMPLETE: neigh.Incomplete, netlink.NUD_NONE: neigh.Incomplete,
	} {
		if got := State(nud); got != want {
			t.Errorf("NUD %#x: %v, want %v", nud, got, want)
		}
	}
}

// TestFollowResubscribe: when the event subscription fails (as it does on
// a receive buffer overrun), the follower subscribes again, dumps the
// table afresh and expires the routes: a MAC change after it is followed,
// and the cached route is asked again.
func TestFollowResubscribe(t *testing.T) {
	nettest.RequirePriv(t)
	v := nettest.NewVeth(t, nettest.VethOptions{})
	f := follow(t, v)
	r := f.Routes()
	peer := v.PeerAddr.Addr()
	release(t, r, peer)
	queries := r.Stats().RouteQueries
	f.cur.Load().fail()
	deadline := time.Now().Add(waitBound)
	for f.Stats().Resubscribed == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no resubscription after %v", waitBound)
		}
		time.Sleep(time.Millisecond)
	}
	newMAC := net.HardwareAddr{0x02, 0x5c, 0, 0, 0, 0x43}
	run(t, v.Local, "ip", "neigh", "replace", peer.String(), "lladdr", newMAC.String(), "dev", v.LocalName, "nud", "reachable")
	for {
		if mac, ok := r.Resolve(peer); ok && mac == neigh.MAC(newMAC) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new subscription does not follow the table: %+v %+v", r.Stats(), f.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	if r.Stats().RouteQueries == queries {
		t.Error("routes not asked again after the resubscription")
	}
}
