package flow

import (
	"errors"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"github.com/skylane/skylane/packet"
)

// Documentation addresses: 198.18.0.0/15 (RFC 2544) and 2001:db8::/32
// (RFC 3849). The 198.18.0.x and 2001:db8::x addresses are local; the
// 198.19.x.x and 2001:db8:1::x ones are peers.
var (
	v4a    = netip.MustParseAddr("198.18.0.1")
	v4b    = netip.MustParseAddr("198.18.0.2")
	v4peer = netip.MustParseAddr("198.19.0.9")
	v6a    = netip.MustParseAddr("2001:db8::1")
	v6b    = netip.MustParseAddr("2001:db8::2")
	v6peer = netip.MustParseAddr("2001:db8:1::9")
	v4any  = netip.IPv4Unspecified()
	v6any  = netip.IPv6Unspecified()

	tcp, udp = packet.ProtoTCP, packet.ProtoUDP
)

func newTable(tb testing.TB, opts Options) *Table {
	tb.Helper()
	opts.LocalAddrs = append(opts.LocalAddrs, v4a, v4b, v6a, v6b)
	t, err := New(opts)
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

// conn is the key of a connected flow.
func conn(proto uint8, local netip.Addr, lport uint16, remote netip.Addr, rport uint16) packet.Key {
	return packet.MakeKey(proto, netip.AddrPortFrom(local, lport), netip.AddrPortFrom(remote, rport))
}

// lis is a listener key: Listener3 for a local address, Listener2 for
// v4any or v6any.
func lis(proto uint8, local netip.Addr, lport uint16) packet.Key {
	return packet.MakeKey(proto, netip.AddrPortFrom(local, lport), netip.AddrPort{})
}

func mustRegister(tb testing.TB, t *Table, port PortID, k packet.Key, kind Kind) *Entry {
	tb.Helper()
	e, err := t.Register(Request{Port: port, Key: k, Kind: kind})
	if err != nil {
		tb.Fatalf("Register(%d, %v, %v): %v", port, k, kind, err)
	}
	return e
}

func TestRegisterRules(t *testing.T) {
	type req struct {
		port PortID
		key  packet.Key
		kind Kind
	}
	mcast := netip.MustParseAddr("239.1.2.3")
	v4mappedJunk := lis(tcp, v4a, 80)
	v4mappedJunk.Local[0] = 1 // version 4 but not in the v4-mapped form
	tests := []struct {
		name  string
		setup []req // each must succeed
		req   req
		want  error // nil: must succeed
	}{
		// Accepted shapes.
		{"connected tcp4", nil, req{1, conn(tcp, v4a, 40000, v4peer, 80), Connected}, nil},
		{"connected udp6", nil, req{1, conn(udp, v6a, 40000, v6peer, 53), Connected}, nil},
		{"listener3 tcp4", nil, req{1, lis(tcp, v4a, 80), Listener3}, nil},
		{"listener2 tcp6 any", nil, req{1, lis(tcp, v6any, 80), Listener2}, nil},
		{"icmp echo id 0", nil, req{1, conn(packet.ProtoICMP, v4a, 0, v4peer, 0), Connected}, nil},
		{"gre without ports", nil, req{1, conn(47, v4a, 0, v4peer, 0), Connected}, nil},

		// ErrBadKey: the key does not fit its kind, or is malformed.
		{"zero key", nil, req{1, packet.Key{}, Connected}, ErrBadKey},
		{"unknown kind", nil, req{1, conn(tcp, v4a, 40000, v4peer, 80), 0}, ErrBadKey},
		{"listener3 with remote", nil, req{1, conn(tcp, v4a, 80, v4peer, 80), Listener3}, ErrBadKey},
		{"listener2 with local address", nil, req{1, lis(tcp, v4a, 80), Listener2}, ErrBadKey},
		{"connected without remote", nil, req{1, lis(tcp, v4a, 80), Connected}, ErrBadKey},
		{"tcp local port 0", nil, req{1, lis(tcp, v4a, 0), Listener3}, ErrBadKey},
		{"udp connected remote port 0", nil, req{1, conn(udp, v4a, 53, v4peer, 0), Connected}, ErrBadKey},
		{"icmpv6 over ipv4", nil, req{1, conn(packet.ProtoICMPv6, v4a, 7, v4peer, 0), Connected}, ErrBadKey},
		{"icmp over ipv6", nil, req{1, conn(packet.ProtoICMP, v6a, 7, v6peer, 0), Connected}, ErrBadKey},
		{"gre with a port", nil, req{1, lis(47, v4a, 1), Listener3}, ErrBadKey},
		{"v4 address not v4-mapped", nil, req{1, v4mappedJunk, Listener3}, ErrBadKey},

		// ErrMulticast.
		{"multicast v4", nil, req{1, lis(udp, mcast, 5353), Listener3}, ErrMulticast},
		{"broadcast v4", nil, req{1, lis(udp, netip.AddrFrom4([4]byte{255, 255, 255, 255}), 67), Listener3}, ErrMulticast},
		{"multicast v6", nil, req{1, lis(udp, netip.MustParseAddr("ff02::fb"), 5353), Listener3}, ErrMulticast},

		// ErrAddressNotLocal.
		{"foreign address", nil, req{1, lis(tcp, netip.MustParseAddr("198.18.0.99"), 80), Listener3}, ErrAddressNotLocal},
		{"peer's address as local", nil, req{1, conn(tcp, v6peer, 80, v6a, 4000), Connected}, ErrAddressNotLocal},
		{"listener3 on any", nil, req{1, lis(tcp, v4any, 80).Listener3(), Listener3}, ErrAddressNotLocal},
		{"connected from any", nil, req{1, conn(tcp, v4any, 4000, v4peer, 80), Connected}, ErrAddressNotLocal},

		// ErrPortInUse.
		{"duplicate flow",
			[]req{{1, conn(tcp, v4a, 40000, v4peer, 80), Connected}},
			req{1, conn(tcp, v4a, 40000, v4peer, 80), Connected}, ErrPortInUse},
		{"other port's listener",
			[]req{{1, lis(tcp, v4a, 80), Listener3}},
			req{2, lis(tcp, v4b, 80), Listener3}, ErrPortInUse},
		{"connected under other port's listener",
			[]req{{1, lis(tcp, v4any, 80), Listener2}},
			req{2, conn(tcp, v4a, 80, v4peer, 5000), Connected}, ErrPortInUse},
		{"other port's connected flow holds the local port",
			[]req{{1, conn(udp, v6a, 4000, v6peer, 53), Connected}},
			req{2, conn(udp, v6a, 4000, v6peer, 54), Connected}, ErrPortInUse},
		{"other port, other family, same proto/port",
			[]req{{1, lis(tcp, v4any, 80), Listener2}},
			req{2, lis(tcp, v6any, 80), Listener2}, ErrPortInUse},
		{"two listener2 of one port",
			[]req{{1, lis(tcp, v4any, 80), Listener2}},
			req{1, lis(tcp, v4any, 80), Listener2}, ErrPortInUse},
		{"listener3 then listener2",
			[]req{{1, lis(tcp, v4a, 80), Listener3}},
			req{1, lis(tcp, v4any, 80), Listener2}, ErrPortInUse},
		{"listener2 then listener3",
			[]req{{1, lis(tcp, v6any, 80), Listener2}},
			req{1, lis(tcp, v6a, 80), Listener3}, ErrPortInUse},
		{"kernel socket holds the port", nil, req{1, lis(tcp, v4a, 22), Listener3}, ErrKernelPort},

		// Allowed sharing.
		{"connected under own listener",
			[]req{{1, lis(tcp, v4any, 80), Listener2}, {1, conn(tcp, v4a, 80, v4peer, 5000), Connected}},
			req{1, conn(tcp, v4a, 80, v4peer, 5001), Connected}, nil},
		{"listener3 on two addresses of one port",
			[]req{{1, lis(tcp, v4a, 80), Listener3}},
			req{1, lis(tcp, v4b, 80), Listener3}, nil},
		{"listener2 v4 and v6 of one port",
			[]req{{1, lis(tcp, v4any, 80), Listener2}},
			req{1, lis(tcp, v6any, 80), Listener2}, nil},
		{"same port number, other protocol",
			[]req{{1, lis(tcp, v4any, 53), Listener2}},
			req{2, lis(udp, v4any, 53), Listener2}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tab := newTable(t, Options{PortTaken: func(proto uint8, port uint16) bool {
				return proto == tcp && port == 22 // sshd
			}})
			for _, r := range tc.setup {
				mustRegister(t, tab, r.port, r.key, r.kind)
			}
			n := tab.Len()
			e, err := tab.Register(Request{Port: tc.req.port, Key: tc.req.key, Kind: tc.req.kind})
			if tc.want == nil {
				if err != nil || e == nil || !e.Active() || e.Key() != tc.req.key || e.Kind() != tc.req.kind || e.Port() != tc.req.port {
					t.Fatalf("Register = %v, %v; want success", e, err)
				}
				if got := lookup(tab, tc.req.key); got != e {
					t.Errorf("Lookup(own key) = %v, want the new entry", got)
				}
				return
			}
			if !errors.Is(err, tc.want) || e != nil {
				t.Fatalf("Register = %v, %v; want %v", e, err, tc.want)
			}
			if tab.Len() != n {
				t.Errorf("failed Register changed Len from %d to %d", n, tab.Len())
			}
		})
	}
}

func TestPortTakenHook(t *testing.T) {
	var calls []uint16
	tab := newTable(t, Options{PortTaken: func(proto uint8, port uint16) bool {
		calls = append(calls, port)
		return false
	}})
	mustRegister(t, tab, 1, lis(tcp, v4any, 80), Listener2)
	mustRegister(t, tab, 1, conn(tcp, v4a, 80, v4peer, 5000), Connected) // port held by 1: not asked
	if len(calls) != 1 || calls[0] != 80 {
		t.Errorf("PortTaken calls = %v, want [80]", calls)
	}
}

// TestAdvisoryGrowth: a port's advisory slots are handed out from the
// bottom, lowest free first, up to AdvisorySlots; past it flows are
// registered without a slot (NoAdvisory, counted), and a slot freed by a
// teardown goes to the next flow, so the table's used part follows the
// port's concurrent flows, not its churn.
func TestAdvisoryGrowth(t *testing.T) {
	tab := newTable(t, Options{AdvisorySlots: 4})
	var es []*Entry
	for i := range 6 {
		e := mustRegister(t, tab, 1, conn(udp, v4a, uint16(1000+i), v4peer, 53), Connected)
		want := uint32(i)
		if i >= 4 {
			want = NoAdvisory
		}
		if e.AdvisoryIndex() != want {
			t.Fatalf("flow %d: advisory %d, want %d", i, e.AdvisoryIndex(), want)
		}
		es = append(es, e)
	}
	if got := tab.Limits().NoAdvisory; got != 2 {
		t.Errorf("Limits().NoAdvisory = %d, want 2", got)
	}
	mustRegister(t, tab, 2, conn(udp, v4a, 2000, v4peer, 53), Connected) // other port: own slots
	// Free 3, then 1, and a flow without a slot: the next flows take 1, then 3.
	tab.Teardown(es[3])
	tab.Teardown(es[1])
	tab.Teardown(es[5])
	for _, want := range []uint32{1, 3, NoAdvisory} {
		e := mustRegister(t, tab, 1, conn(udp, v4a, uint16(3000+want%8), v4peer, 53), Connected)
		if e.AdvisoryIndex() != want {
			t.Fatalf("after teardowns: advisory %d, want %d", e.AdvisoryIndex(), want)
		}
	}
}

// TestPortSlots: a port limited to its channel's table gets slots up to
// it and NoAdvisory past it; another port keeps the table's limit.
func TestPortSlots(t *testing.T) {
	tab := newTable(t, Options{AdvisorySlots: 8})
	tab.SetPortSlots(1, 2)
	for i, want := range []uint32{0, 1, NoAdvisory} {
		if e := mustRegister(t, tab, 1, conn(udp, v4a, uint16(1000+i), v4peer, 53), Connected); e.AdvisoryIndex() != want {
			t.Fatalf("port 1 flow %d: advisory %d, want %d", i, e.AdvisoryIndex(), want)
		}
	}
	for i := range 3 {
		if e := mustRegister(t, tab, 2, conn(udp, v4a, uint16(2000+i), v4peer, 53), Connected); e.AdvisoryIndex() != uint32(i) {
			t.Fatalf("port 2 flow %d: advisory %d", i, e.AdvisoryIndex())
		}
	}
}

// TestSlotHeap: the free list gives slots back lowest first, whatever the
// order they were freed in.
func TestSlotHeap(t *testing.T) {
	var h slotHeap
	in := []uint32{9, 3, 7, 1, 8, 2, 2, 0, 6}
	for _, v := range in {
		h.push(v)
	}
	want := []uint32{0, 1, 2, 2, 3, 6, 7, 8, 9}
	for i, w := range want {
		if v := h.pop(); v != w {
			t.Fatalf("pop %d = %d, want %d", i, v, w)
		}
	}
	if len(h) != 0 {
		t.Fatalf("%d left", len(h))
	}
}

func TestAdvisoryIndicesDistinct(t *testing.T) {
	const n = 2048
	tab := newTable(t, Options{})
	seen := make(map[uint32]bool)
	for i := range n {
		e := mustRegister(t, tab, 7, conn(tcp, v6a, 443, v6peer, uint16(10000+i)), Connected)
		if e.AdvisoryIndex() >= n || seen[e.AdvisoryIndex()] {
			t.Fatalf("flow %d: advisory index %d repeated or out of range", i, e.AdvisoryIndex())
		}
		seen[e.AdvisoryIndex()] = true
	}
}

// TestFlowLimits: past MaxPortFlows a port's Register fails with
// ErrTooManyFlows, other ports go on; past MaxFlows every port's does;
// each refusal is counted and leaves the table as it was.
func TestFlowLimits(t *testing.T) {
	tab := newTable(t, Options{MaxPortFlows: 2, MaxFlows: 3})
	a := mustRegister(t, tab, 1, conn(udp, v4a, 1000, v4peer, 53), Connected)
	mustRegister(t, tab, 1, conn(udp, v4a, 1001, v4peer, 53), Connected)
	k := conn(udp, v4a, 1002, v4peer, 53)
	if _, err := tab.Register(Request{1, k, Connected}); !errors.Is(err, ErrTooManyFlows) {
		t.Fatalf("third flow of port 1: err = %v, want ErrTooManyFlows", err)
	}
	if lookup(tab, k) != nil || tab.Len() != 2 || tab.PortLen(1) != 2 {
		t.Fatal("a refused flow changed the table")
	}
	mustRegister(t, tab, 2, conn(udp, v4a, 2000, v4peer, 53), Connected) // port 2: its own budget
	if _, err := tab.Register(Request{3, conn(udp, v4a, 3000, v4peer, 53), Connected}); !errors.Is(err, ErrTooManyFlows) {
		t.Fatalf("fourth flow of the table: err = %v, want ErrTooManyFlows", err)
	}
	if l := tab.Limits(); l.PortFull != 1 || l.TableFull != 1 {
		t.Errorf("Limits() = %+v, want one refusal of each", l)
	}
	tab.Teardown(a)
	mustRegister(t, tab, 1, k, Connected) // room again
}

func TestLookupOrder(t *testing.T) {
	tab := newTable(t, Options{})
	// Listener on tcp4 *:80 and on tcp6 [2001:db8::1]:80, port 1.
	l2 := mustRegister(t, tab, 1, lis(tcp, v4any, 80), Listener2)
	l3 := mustRegister(t, tab, 1, lis(tcp, v6a, 80), Listener3)
	// One accepted connection each.
	c4 := mustRegister(t, tab, 1, conn(tcp, v4b, 80, v4peer, 5000), Connected)
	c6 := mustRegister(t, tab, 1, conn(tcp, v6a, 80, v6peer, 5000), Connected)

	tests := []struct {
		key  packet.Key
		want *Entry
	}{
		{conn(tcp, v4b, 80, v4peer, 5000), c4},  // 5-tuple beats listener2
		{conn(tcp, v4b, 80, v4peer, 5001), l2},  // other source port: listener2
		{conn(tcp, v4a, 80, v4peer, 5000), l2},  // other local address: listener2
		{conn(tcp, v6a, 80, v6peer, 5000), c6},  // 5-tuple beats listener3
		{conn(tcp, v6a, 80, v6peer, 5001), l3},  // other source port: listener3
		{conn(tcp, v6b, 80, v6peer, 5000), nil}, // no listener on 2001:db8::2
		{conn(tcp, v4b, 81, v4peer, 5000), nil}, // other local port
		{conn(udp, v4b, 80, v4peer, 5000), nil}, // other protocol
	}
	for _, tc := range tests {
		for range 2 { // the second time from the cache
			if got := lookup(tab, tc.key); got != tc.want {
				t.Errorf("Lookup(%v) = %v, want %v", tc.key, got, tc.want)
			}
		}
	}

	tab.Teardown(c4)
	if got := lookup(tab, conn(tcp, v4b, 80, v4peer, 5000)); got != l2 {
		t.Errorf("after teardown of the 5-tuple: Lookup = %v, want the listener", got)
	}
}

// put inserts e into tab's index behind Register's back, counting its kind
// as Register does.
func put(tab *Table, e *Entry) {
	e.hash = e.key.Hash()
	tab.idx.insert(e, e.hash)
	switch e.kind {
	case Listener3:
		tab.nL3++
	case Listener2:
		tab.nL2++
	}
	tab.lastEntry = nil
}

// TestLookupListener3BeatsListener2 checks the mask order directly: Register
// never lets a Listener3 and a Listener2 of one protocol, family and port
// coexist, so the entries are put into the index by hand.
func TestLookupListener3BeatsListener2(t *testing.T) {
	tab := newTable(t, Options{})
	k := conn(udp, v6a, 53, v6peer, 3333)
	e2 := &Entry{key: k.Listener2(), kind: Listener2, state: Active}
	e3 := &Entry{key: k.Listener3(), kind: Listener3, state: Active}
	e5 := &Entry{key: k, kind: Connected, state: Active}
	put(tab, e2)
	if got := lookup(tab, k); got != e2 {
		t.Fatalf("only listener2: Lookup = %v", got)
	}
	put(tab, e3)
	if got := lookup(tab, k); got != e3 {
		t.Fatalf("listener3 and listener2: Lookup = %v, want listener3", got)
	}
	put(tab, e5)
	if got := lookup(tab, k); got != e5 {
		t.Fatalf("all three: Lookup = %v, want 5-tuple", got)
	}
}

func TestSourcePortsAreDistinctFlows(t *testing.T) {
	tab := newTable(t, Options{})
	a := mustRegister(t, tab, 1, conn(udp, v4a, 4789, v4peer, 1000), Connected)
	b := mustRegister(t, tab, 1, conn(udp, v4a, 4789, v4peer, 1001), Connected)
	if a == b || a.Token() == b.Token() || a.AdvisoryIndex() == b.AdvisoryIndex() {
		t.Fatal("two flows share an entry, token or advisory slot")
	}
	// Alternate, so the cache sees every change of key.
	for range 3 {
		if lookup(tab, conn(udp, v4a, 4789, v4peer, 1000)) != a || lookup(tab, conn(udp, v4a, 4789, v4peer, 1001)) != b {
			t.Fatal("packets differing in the source port found the wrong flow")
		}
	}
	if lookup(tab, conn(udp, v4a, 4789, v4peer, 1002)) != nil {
		t.Fatal("an unregistered source port found a flow")
	}
}

func TestCache(t *testing.T) {
	tab := newTable(t, Options{})
	k := conn(tcp, v4a, 8080, v4peer, 6000)

	// A cached listener is replaced when a more specific flow arrives.
	l := mustRegister(t, tab, 1, lis(tcp, v4a, 8080), Listener3)
	if lookup(tab, k) != l {
		t.Fatal("listener not found")
	}
	c := mustRegister(t, tab, 1, k, Connected)
	if got := lookup(tab, k); got != c {
		t.Fatalf("after registering the 5-tuple, Lookup = %v (stale cache)", got)
	}

	// A cached flow that is torn down is never returned.
	tab.Teardown(c)
	if got := lookup(tab, k); got != l {
		t.Fatalf("after teardown of the cached 5-tuple, Lookup = %v, want listener", got)
	}
	tab.Teardown(l)
	for range 2 {
		if got := lookup(tab, k); got != nil {
			t.Fatalf("after teardown of all, Lookup = %v", got)
		}
	}

	// The cache checks the entry's state on its own, not only relying on
	// Teardown clearing it: remove an entry behind the table's back.
	c2 := mustRegister(t, tab, 1, k, Connected)
	if lookup(tab, k) != c2 {
		t.Fatal("re-registered flow not found")
	}
	c2.state = TornDown
	tab.idx.remove(c2, c2.hash)
	if got := lookup(tab, k); got != nil {
		t.Fatalf("cache returned %v, a torn-down entry", got)
	}
	c2.state = Active
	tab.idx.insert(c2, c2.hash)

	// TeardownPort clears a cached entry too.
	if lookup(tab, k) != c2 {
		t.Fatal("flow not found")
	}
	tab.TeardownPort(1)
	if got := lookup(tab, k); got != nil {
		t.Fatalf("after TeardownPort, Lookup = %v", got)
	}
}

func TestLookupDoesNotAllocate(t *testing.T) {
	tab := newTable(t, Options{})
	mustRegister(t, tab, 1, lis(tcp, v6any, 443), Listener2)
	mustRegister(t, tab, 1, conn(tcp, v6a, 443, v6peer, 7000), Connected)
	keys := []packet.Key{
		conn(tcp, v6a, 443, v6peer, 7000), // 5-tuple
		conn(tcp, v6a, 443, v6peer, 7001), // listener2
		conn(tcp, v6a, 444, v6peer, 7001), // miss
	}
	for _, k := range keys {
		if n := testing.AllocsPerRun(100, func() { tab.Lookup(&k); tab.Lookup(&keys[0]) }); n != 0 {
			t.Errorf("Lookup(%v): %v allocs", k, n)
		}
	}
}

func TestTeardownReleases(t *testing.T) {
	tab := newTable(t, Options{AdvisorySlots: 1})
	k := lis(udp, v4a, 500)
	e := mustRegister(t, tab, 1, k, Listener3)
	tok := e.Token()
	if tab.ByToken(tok) != e || tab.Len() != 1 {
		t.Fatal("ByToken or Len wrong after Register")
	}
	tab.Teardown(e)
	tab.Teardown(e) // twice: no effect
	if e.State() != TornDown || e.Active() {
		t.Fatalf("state = %v, want torn-down", e.State())
	}
	if tab.ByToken(tok) != nil || tab.Len() != 0 || lookup(tab, conn(udp, v4a, 500, v4peer, 9)) != nil {
		t.Fatal("torn-down entry still reachable")
	}
	// The port and the single advisory slot are free for another port.
	e2 := mustRegister(t, tab, 2, k, Listener3)
	if e2.AdvisoryIndex() != 0 {
		t.Errorf("advisory index = %d, want 0", e2.AdvisoryIndex())
	}
	// And port 1's slot: it has none in use now.
	mustRegister(t, tab, 1, lis(udp, v4a, 501), Listener3)
	// Tokens stay unique across reuse.
	if e2.Token() == tok {
		t.Errorf("token %d reused at once", tok)
	}
	// Tearing down an entry of another table does nothing.
	other := newTable(t, Options{})
	other.Teardown(e2)
	if !e2.Active() || lookup(tab, conn(udp, v4a, 500, v4peer, 9)) != e2 {
		t.Error("Teardown on another table affected the entry")
	}
	tab.Teardown(nil)
}

func TestTeardownPort(t *testing.T) {
	tab := newTable(t, Options{})
	var mine []*Entry
	mine = append(mine, mustRegister(t, tab, 1, lis(tcp, v4any, 80), Listener2))
	for i := range 3 {
		mine = append(mine, mustRegister(t, tab, 1, conn(tcp, v4a, 80, v4peer, uint16(5000+i)), Connected))
	}
	theirs := mustRegister(t, tab, 2, conn(udp, v6a, 5353, v6peer, 5353), Connected)

	got := tab.TeardownPort(1)
	if len(got) != len(mine) {
		t.Fatalf("TeardownPort returned %d entries, want %d", len(got), len(mine))
	}
	set := make(map[*Entry]bool)
	for _, e := range got {
		set[e] = true
	}
	for _, e := range mine {
		if !set[e] || e.Active() {
			t.Errorf("%v: returned %v, active %v", e.Key(), set[e], e.Active())
		}
	}
	if tab.Len() != 1 || !theirs.Active() || lookup(tab, theirs.Key()) != theirs {
		t.Error("other port's flow affected")
	}
	if got := tab.TeardownPort(1); got != nil {
		t.Errorf("second TeardownPort = %v", got)
	}
	mustRegister(t, tab, 3, lis(tcp, v4any, 80), Listener2) // port 80 is free again
}

func TestForEachByTokenLen(t *testing.T) {
	tab := newTable(t, Options{})
	want := make(map[*Entry]bool)
	for i := range 10 {
		e := mustRegister(t, tab, PortID(i%3), conn(udp, v4b, uint16(2000+i), v4peer, 53), Connected)
		want[e] = true
		if tab.ByToken(e.Token()) != e || e.Token() == 0 {
			t.Fatalf("ByToken(%d) wrong", e.Token())
		}
	}
	if tab.Len() != 10 {
		t.Fatalf("Len = %d", tab.Len())
	}
	n := 0
	tab.ForEach(func(e *Entry) bool {
		if !want[e] {
			t.Errorf("ForEach visited unknown %v", e.Key())
		}
		n++
		tab.Teardown(e) // allowed during ForEach
		return true
	})
	if n != 10 || tab.Len() != 0 {
		t.Errorf("ForEach visited %d, Len after = %d", n, tab.Len())
	}
	mustRegister(t, tab, 1, lis(udp, v4any, 1), Listener2)
	mustRegister(t, tab, 1, lis(udp, v4any, 2), Listener2)
	n = 0
	tab.ForEach(func(*Entry) bool { n++; return false })
	if n != 1 {
		t.Errorf("ForEach did not stop: %d calls", n)
	}
}

func TestFlowIDs(t *testing.T) {
	tab := newTable(t, Options{AdvisorySlots: 4096})
	seen := make(map[[16]byte]bool)
	var ones int
	const n = 2000
	for i := range n {
		e := mustRegister(t, tab, 1, conn(tcp, v6b, 443, v6peer, uint16(1024+i)), Connected)
		id := e.ID()
		if seen[id] {
			t.Fatalf("flow ID %x repeated", id)
		}
		seen[id] = true
		for _, b := range id {
			for ; b != 0; b &= b - 1 {
				ones++
			}
		}
	}
	// Random IDs have half their 128 bits set: n*64 ± a few standard
	// deviations (sqrt(n*32) ≈ 253).
	if mean := n * 64; ones < mean-2000 || ones > mean+2000 {
		t.Errorf("%d bits set in %d IDs, want about %d", ones, n, mean)
	}
}

func TestCounters(t *testing.T) {
	tab := newTable(t, Options{})
	e := mustRegister(t, tab, 1, conn(tcp, v4a, 40000, v4peer, 443), Connected)
	e.CountOut(60, packet.TCPSyn)
	e.CountIn(60, packet.TCPSyn|packet.TCPAck)
	e.CountOut(1500, packet.TCPAck|packet.TCPPsh)
	e.AddIn(3, 300, packet.TCPAck)
	e.AddOut(2, 3000, packet.TCPAck|packet.TCPPsh)
	want := Counters{PacketsIn: 4, BytesIn: 360, PacketsOut: 4, BytesOut: 4560}
	if got := e.Counters(); got != want {
		t.Errorf("Counters = %+v, want %+v", got, want)
	}
	if in, out := e.LastFlags(); in != packet.TCPAck || out != packet.TCPAck|packet.TCPPsh {
		t.Errorf("LastFlags = %v, %v", in, out)
	}
}

func TestAllowSYN(t *testing.T) {
	tab := newTable(t, Options{})
	e := mustRegister(t, tab, 1, conn(tcp, v4a, 40000, v4peer, 443), Connected)
	other := mustRegister(t, tab, 1, conn(tcp, v4a, 40001, v4peer, 443), Connected)
	t0 := time.Now()
	for i := range SYNBurst {
		if !e.AllowSYN(t0) {
			t.Fatalf("SYN %d of the burst refused", i+1)
		}
	}
	for _, dt := range []time.Duration{0, time.Millisecond, 49 * time.Millisecond} {
		if e.AllowSYN(t0.Add(dt)) {
			t.Fatalf("SYN %d at +%v allowed", SYNBurst+1, dt)
		}
	}
	if !other.AllowSYN(t0) {
		t.Fatal("another flow's bucket was drained")
	}
	// 50 ms refill one SYN.
	if !e.AllowSYN(t0.Add(50*time.Millisecond)) || e.AllowSYN(t0.Add(50*time.Millisecond)) {
		t.Fatal("refill after 50 ms is not exactly one SYN")
	}
	// A clock going backwards adds nothing.
	if e.AllowSYN(t0.Add(-time.Hour)) {
		t.Fatal("clock going backwards refilled the bucket")
	}
	// Over a second the bucket refills, but never above the burst.
	t1 := t0.Add(10 * time.Second)
	n := 0
	for e.AllowSYN(t1) {
		n++
	}
	if n != SYNBurst {
		t.Fatalf("after 10 s idle, %d SYNs allowed, want %d", n, SYNBurst)
	}
	// A steady 20/s over 5 s is all allowed.
	for i := 1; i <= 5*SYNRate; i++ {
		if !e.AllowSYN(t1.Add(time.Duration(i) * time.Second / SYNRate)) {
			t.Fatalf("steady SYN %d refused", i)
		}
	}
}

func TestKindStateStrings(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{Connected.String(), "connected"}, {Listener3.String(), "listener3"},
		{Listener2.String(), "listener2"}, {Kind(9).String(), "kind(9)"},
		{Active.String(), "active"}, {TornDown.String(), "torn-down"}, {State(0).String(), "state(0)"},
	} {
		if tc.got != tc.want {
			t.Errorf("String = %q, want %q", tc.got, tc.want)
		}
	}
}

func TestNewRefusesBadLocalAddr(t *testing.T) {
	for _, a := range []netip.Addr{{}, v4any, netip.MustParseAddr("224.0.0.1")} {
		if _, err := New(Options{LocalAddrs: []netip.Addr{a}}); err == nil {
			t.Errorf("New with local address %v: no error", a)
		}
	}
	// v4-mapped local addresses count as IPv4.
	tab, err := New(Options{LocalAddrs: []netip.Addr{netip.AddrFrom16(v4a.As16())}})
	if err != nil {
		t.Fatal(err)
	}
	mustRegister(t, tab, 1, lis(tcp, v4a, 80), Listener3)
}

// lookup is tab.Lookup of a key value, for keys built in the call.
func lookup(tab *Table, k packet.Key) *Entry { return tab.Lookup(&k) }

// TestEntryLayout pins the layout Entry's comment describes: the receive
// path's fields in the first cache line, the counters in the second, and a
// size that is a Go size class of whole lines (so entries start on a line).
func TestEntryLayout(t *testing.T) {
	var e Entry
	if s := unsafe.Sizeof(e); s != 192 {
		t.Errorf("sizeof(Entry) = %d, want 192", s)
	}
	if o := unsafe.Offsetof(e.mark) + unsafe.Sizeof(e.mark); o > 64 {
		t.Errorf("the mark ends at byte %d, past the first line", o)
	}
	if o := unsafe.Offsetof(e.counters); o != 64 {
		t.Errorf("counters at byte %d, want 64", o)
	}
}

// LookupBatch on a table large enough that many keys sit past their home
// slot agrees with Lookup on hits, repeats, listener hits and misses, in
// batches of every size up to 64, and allocates nothing once warm.
func TestLookupBatchLarge(t *testing.T) {
	const n = 5000
	tab := newTable(t, Options{AdvisorySlots: n})
	keys := make([]packet.Key, 0, 3*n)
	for i := range n {
		k := conn(udp, v4a, 53, netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), uint16(1000+i))
		if i%2 == 0 { // half the keys registered, the others misses
			mustRegister(t, tab, 1, k, Connected)
		}
		keys = append(keys, k, k) // and every key twice in a row
	}
	mustRegister(t, tab, 2, lis(tcp, v4any, 80), Listener2)
	for i := range n {
		keys = append(keys, conn(tcp, v4a, 80, v4peer, uint16(1000+i))) // listener hits
	}
	out := make([]*Entry, 64)
	for size := 1; size <= 64; size++ {
		for start := 0; start < len(keys); start += size {
			batch := keys[start:min(start+size, len(keys))]
			tab.LookupBatch(batch, out)
			for i := range batch {
				if want := tab.Lookup(&batch[i]); out[i] != want {
					t.Fatalf("batch of %d at %d: LookupBatch[%d] = %v, Lookup = %v", size, start, i, out[i], want)
				}
			}
		}
	}
	if a := testing.AllocsPerRun(100, func() { tab.LookupBatch(keys[:64], out) }); a != 0 {
		t.Errorf("LookupBatch: %v allocations", a)
	}
}

// Version changes with every Register and Teardown that changes the table,
// and with nothing else.
func TestVersion(t *testing.T) {
	tab := newTable(t, Options{})
	v := tab.Version()
	k := conn(udp, v4a, 53, v4peer, 1000)
	e := mustRegister(t, tab, 1, k, Connected)
	if tab.Version() == v {
		t.Fatal("Register did not change the version")
	}
	v = tab.Version()
	if _, err := tab.Register(Request{Port: 1, Key: k, Kind: Connected}); err == nil {
		t.Fatal("second Register succeeded")
	}
	tab.Lookup(&k)
	if tab.Version() != v {
		t.Fatal("a refused Register or a Lookup changed the version")
	}
	tab.Teardown(e)
	if tab.Version() == v {
		t.Fatal("Teardown did not change the version")
	}
	v = tab.Version()
	tab.Teardown(e)
	if tab.Version() != v {
		t.Fatal("a second Teardown changed the version")
	}
}
