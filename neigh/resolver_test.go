package neigh

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
)

// fakeClock is the injected time: it moves only when the test says.
type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

func newResolver(t *testing.T, o Options) (*Resolver, *fakeClock) {
	t.Helper()
	c := &fakeClock{t: time.Unix(1000, 0)}
	o.MAC, o.Now = macA, c.Now
	if o.Addrs == nil {
		o.Addrs = []netip.Addr{ip4A, ip6A}
	}
	r, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return r, c
}

func poll(r NextHops) [][]byte {
	bufs, sizes := make([][]byte, 16), make([]int, 16)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	n := r.Poll(bufs, sizes)
	out := make([][]byte, n)
	for i := range n {
		out[i] = bufs[i][:sizes[i]]
	}
	return out
}

// TestResolveIPv4: Hold asks (broadcast ARP from an owned address); the
// reply resolves the entry and releases the held packets, in order, with
// the right Ethernet header.
func TestResolveIPv4(t *testing.T) {
	r, _ := newResolver(t, Options{})
	if _, ok := r.Resolve(ip4B); ok {
		t.Fatal("resolved an unknown address")
	}
	pkts := [][]byte{{0x45, 1}, {0x45, 2}}
	for _, p := range pkts {
		if !r.Hold(ip4B, p) {
			t.Fatal("Hold refused")
		}
	}
	out := poll(r)
	if len(out) != 1 {
		t.Fatalf("Poll gave %d frames, want one ARP request", len(out))
	}
	var a ARP
	if err := ParseARP(out[0], &a); err != nil || a.Op != ARPRequest || a.EthDst != Broadcast ||
		a.SenderIP != ip4A || a.SenderMAC != macA || a.TargetIP != ip4B {
		t.Fatalf("request %+v, %v", a, err)
	}
	if _, st, _ := r.Lookup(ip4B); st != Incomplete {
		t.Fatalf("state %v", st)
	}
	reply := make([]byte, NDPFrameLen)
	if n, consumed := r.HandleFrame(gopacketARP(t, ARPReply, macB, ip4B, macA, ip4A, macA), reply); n != 0 || !consumed {
		t.Fatalf("reply handled as %d, %v", n, consumed)
	}
	if mac, ok := r.Resolve(ip4B); !ok || mac != macB {
		t.Fatalf("Resolve: %x, %v", mac, ok)
	}
	out = poll(r)
	if len(out) != 2 {
		t.Fatalf("released %d frames, want 2", len(out))
	}
	for i, f := range out {
		want := append(append(append([]byte{}, macB[:]...), macA[:]...), 0x08, 0x00)
		want = append(want, pkts[i]...)
		if !bytes.Equal(f, want) {
			t.Fatalf("frame %d: % x, want % x", i, f, want)
		}
	}
	if s := r.Stats(); s.Resolved != 1 || s.PendingSent != 2 || s.SolicitsSent != 1 || s.PendingQueued != 2 {
		t.Fatalf("stats %+v", s)
	}
}

// TestResolveFails: with no answer, the request is repeated MaxProbes times
// RetransTime apart; then the entry goes and its packets are dropped and
// counted. The per-address queue is bounded.
func TestResolveFails(t *testing.T) {
	r, c := newResolver(t, Options{PendingPerAddr: 2, MaxProbes: 3})
	r.Hold(ip6B, []byte{0x60, 1})
	r.Hold(ip6B, []byte{0x60, 2})
	if r.Hold(ip6B, []byte{0x60, 3}) {
		t.Fatal("third packet held past PendingPerAddr 2")
	}
	for i := range 3 {
		out := poll(r)
		if len(out) != 1 {
			t.Fatalf("probe %d: %d frames", i, len(out))
		}
		var m NDP
		snm, snmMAC := SolicitedNode(ip6B)
		if err := ParseNDP(out[0], &m); err != nil || m.Type != TypeNS || m.Dst != snm || m.EthDst != snmMAC ||
			m.Src != ip6A || m.Target != ip6B || !m.HasLL || m.LL != macA {
			t.Fatalf("NS %+v, %v", m, err)
		}
		if len(poll(r)) != 0 {
			t.Fatal("solicitation repeated before RetransTime")
		}
		c.Advance(DefaultRetransTime)
	}
	if out := poll(r); len(out) != 0 {
		t.Fatalf("%d frames after giving up", len(out))
	}
	if _, _, ok := r.Lookup(ip6B); ok {
		t.Fatal("failed entry kept")
	}
	if s := r.Stats(); s.Failed != 1 || s.PendingExpired != 2 || s.PendingOverflow != 1 {
		t.Fatalf("stats %+v", s)
	}
	// The buffers are reused: holding again allocates no new one.
	r.Hold(ip6B, []byte{0x60, 4})
	if len(r.hold.free) != 1 {
		t.Fatalf("%d free buffers, want 1 left after reuse", len(r.hold.free))
	}
}

// TestStaleAndProbe: a Reachable entry turns Stale after ReachableTime;
// using it sends one unicast probe; a solicited NA makes it Reachable; with
// no answer it goes after MaxProbes; an unused Stale entry is collected.
func TestStaleAndProbe(t *testing.T) {
	r, c := newResolver(t, Options{})
	reply := make([]byte, NDPFrameLen)
	// The peer asks for us: we answer and learn it (Stale: unconfirmed).
	ns := gopacketNDP(t, TypeNS, ip6B, ip6A, ip6A, macB, macA, 0, &macB)
	n, consumed := r.HandleFrame(ns, reply)
	if !consumed || n == 0 {
		t.Fatalf("NS handled as %d, %v", n, consumed)
	}
	var na NDP
	if err := ParseNDP(reply[:n], &na); err != nil || na.Type != TypeNA || na.Target != ip6A || na.Dst != ip6B ||
		na.EthDst != macB || na.Flags != FlagSolicited|FlagOverride || na.LL != macA {
		t.Fatalf("NA %+v, %v", na, err)
	}
	if mac, st, _ := r.Lookup(ip6B); st != Stale || mac != macB {
		t.Fatalf("learned %x %v", mac, st)
	}
	// Using it schedules a unicast probe.
	if _, ok := r.Resolve(ip6B); !ok {
		t.Fatal("stale entry not usable")
	}
	out := poll(r)
	var m NDP
	if len(out) != 1 || ParseNDP(out[0], &m) != nil || m.Dst != ip6B || m.EthDst != macB {
		t.Fatalf("probe: %d frames, %+v", len(out), m)
	}
	// A solicited NA confirms it.
	r.HandleFrame(gopacketNDP(t, TypeNA, ip6B, ip6A, ip6B, macB, macA, FlagSolicited, &macB), reply)
	if _, st, _ := r.Lookup(ip6B); st != Reachable {
		t.Fatalf("after NA: %v", st)
	}
	c.Advance(DefaultReachableTime)
	poll(r)
	if _, st, _ := r.Lookup(ip6B); st != Stale {
		t.Fatalf("after ReachableTime: %v", st)
	}
	c.Advance(DefaultStaleTime)
	poll(r)
	if _, _, ok := r.Lookup(ip6B); ok {
		t.Fatal("unused stale entry not collected")
	}
}

// TestResponder: ARP requests and NSs for owned addresses are answered,
// others are consumed silently; frames that are not ARP/NDP pass.
func TestResponder(t *testing.T) {
	r, _ := newResolver(t, Options{})
	reply := make([]byte, NDPFrameLen)
	n, consumed := r.HandleFrame(gopacketARP(t, ARPRequest, macB, ip4B, MAC{}, ip4A, Broadcast), reply)
	var a ARP
	if !consumed || ParseARP(reply[:n], &a) != nil || a.Op != ARPReply || a.EthDst != macB ||
		a.SenderIP != ip4A || a.SenderMAC != macA || a.TargetIP != ip4B || a.TargetMAC != macB {
		t.Fatalf("ARP reply %+v (%d, %v)", a, n, consumed)
	}
	if mac, st, _ := r.Lookup(ip4B); mac != macB || st != Reachable {
		t.Fatal("requester not learned (RFC 826)")
	}
	other := netip.MustParseAddr("198.18.0.99")
	if n, consumed := r.HandleFrame(gopacketARP(t, ARPRequest, macB, ip4B, MAC{}, other, Broadcast), reply); n != 0 || !consumed {
		t.Fatalf("request for another address: %d, %v", n, consumed)
	}
	// DAD probe for our address: NA to all-nodes, not solicited.
	n, _ = r.HandleFrame(gopacketNDP(t, TypeNS, netip.IPv6Unspecified(), ip6A, ip6A, macB, macA, 0, nil), reply)
	var m NDP
	if ParseNDP(reply[:n], &m) != nil || m.Dst != allNodes || m.Flags != FlagOverride {
		t.Fatalf("DAD answer %+v", m)
	}
	if _, _, ok := r.Lookup(netip.IPv6Unspecified()); ok {
		t.Fatal("learned the unspecified address")
	}
	ipv4udp := append(append(append([]byte{}, macA[:]...), macB[:]...), 0x08, 0x00, 0x45)
	if n, consumed := r.HandleFrame(ipv4udp, reply); n != 0 || consumed {
		t.Fatal("consumed an IPv4 frame")
	}
	r.RemoveAddr(ip4A)
	if n, _ := r.HandleFrame(gopacketARP(t, ARPRequest, macB, ip4B, MAC{}, ip4A, Broadcast), reply); n != 0 {
		t.Fatal("answered for a removed address")
	}
}

// TestTableBound: the table holds MaxEntries; a stale entry without held
// packets makes room, otherwise Hold refuses and counts.
func TestTableBound(t *testing.T) {
	r, _ := newResolver(t, Options{MaxEntries: 2})
	r.Hold(netip.MustParseAddr("198.18.0.10"), []byte{1})
	r.Hold(netip.MustParseAddr("198.18.0.11"), []byte{1})
	if r.Hold(netip.MustParseAddr("198.18.0.12"), []byte{1}) {
		t.Fatal("table grew past MaxEntries")
	}
	if s := r.Stats(); s.PendingOverflow != 1 {
		t.Fatalf("stats %+v", s)
	}
	if _, err := New(Options{}); err == nil {
		t.Fatal("New without a MAC")
	}
	if _, err := New(Options{MAC: MAC{1}}); err == nil {
		t.Fatal("New with a group MAC")
	}
}
