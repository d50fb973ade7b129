package nexus_test

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
)

// steerLink is a memif link that records its steering map as a
// netif.FlowSteerer would hold it (the map itself, with its BPF program,
// is netif/steer's, tested there and end to end on AF_XDP in e2e).
type steerLink struct {
	netif.Link
	mu  sync.Mutex
	set map[packet.Key]bool
	max int // entries it takes; 0: any number
}

func (l *steerLink) SteerFlow(k packet.Key) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max > 0 && len(l.set) >= l.max && !l.set[k] {
		return fmt.Errorf("steer: add %v: %w", k, netif.ErrSteerFull)
	}
	l.set[k] = true
	return nil
}

func (l *steerLink) UnsteerFlow(k packet.Key) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.set, k)
	return nil
}

func (l *steerLink) has(k packet.Key) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.set[k]
}

func (l *steerLink) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.set)
}

// TestSteeringCoveredByListener: accepted connections under a steered
// listener take no entry of their own in the steering map (the listener's
// covers them), outgoing ones do; when the listener goes, the connections
// it covered get their own entries before its entry goes; a closed port
// leaves no entry.
func TestSteeringCoveredByListener(t *testing.T) {
	a, b, err := memif.NewPair(memif.Options{Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sl := &steerLink{Link: a, set: map[packet.Key]bool{}}
	n, err := nexus.New(nexus.Options{Link: sl, Addrs: []netip.Addr{local}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	web, err := n.OpenPort("web")
	if err != nil {
		t.Fatal(err)
	}
	defer web.Close()
	lis := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(local, 80), netip.AddrPort{}).Listener3()
	if _, err := web.Register(lis, flow.Listener3); err != nil {
		t.Fatal(err)
	}
	const conns = 100
	var accepted []packet.Key
	for i := range conns {
		accepted = append(accepted, packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(local, 80), netip.AddrPortFrom(peer, uint16(20000+i))))
	}
	registerAll(t, web, accepted)
	out := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(local, 40000), netip.AddrPortFrom(peer, 443))
	if _, err := web.Register(out, flow.Connected); err != nil {
		t.Fatal(err)
	}
	check := func(when string, steered, covered int) {
		t.Helper()
		st, err := n.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.Steered != steered || st.Covered != covered || sl.len() != steered {
			t.Fatalf("%s: %d steered (map %d), %d covered; want %d, %d", when, st.Steered, sl.len(), st.Covered, steered, covered)
		}
	}
	check("listener, its connections, a dial", 2, conns)
	for i, err := range web.TeardownBatch(accepted[:conns/2]) {
		if err != nil {
			t.Fatalf("teardown %d: %v", i, err)
		}
	}
	check("half the connections closed", 2, conns/2)
	if err := web.Teardown(lis); err != nil {
		t.Fatal(err)
	}
	check("listener closed", 2+conns/2-1, 0)
	for _, k := range accepted[conns/2:] {
		if !sl.has(k) {
			t.Fatalf("%v lost its steering with its listener", k)
		}
	}
	if sl.has(lis) {
		t.Fatal("the closed listener is still steered")
	}

	// A new listener, new connections under it, and the port's close.
	if _, err := web.Register(lis, flow.Listener3); err != nil {
		t.Fatal(err)
	}
	more := make([]packet.Key, 10)
	for i := range more {
		more[i] = packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(local, 80), netip.AddrPortFrom(peer, uint16(30000+i)))
	}
	registerAll(t, web, more)
	check("listener again", 2+conns/2, len(more))
	if err := web.Close(); err != nil {
		t.Fatal(err)
	}
	check("ports closed", 0, 0)
	if sl.len() != 0 {
		t.Fatalf("%d entries left", sl.len())
	}
}

// registerAll registers keys as connected flows of p, in one batch.
func registerAll(t *testing.T, p *nexus.Port, keys []packet.Key) {
	t.Helper()
	_, errs := p.RegisterBatch(keys, flow.Connected)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("register %v: %v", keys[i], err)
		}
	}
}

// TestSteeringMapFull: a flow the steering map has no room for is refused
// as one past the flow limits (flow.ErrTooManyFlows, counted), and leaves
// no flow behind; accepted connections, covered by their listener, still
// register.
func TestSteeringMapFull(t *testing.T) {
	a, b, err := memif.NewPair(memif.Options{Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sl := &steerLink{Link: a, set: map[packet.Key]bool{}, max: 2}
	n, err := nexus.New(nexus.Options{Link: sl, Addrs: []netip.Addr{local}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	p, err := n.OpenPort("app")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	lis := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(local, 80), netip.AddrPort{}).Listener3()
	if _, err := p.Register(lis, flow.Listener3); err != nil {
		t.Fatal(err)
	}
	dial := func(port uint16) packet.Key {
		return packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(local, port), netip.AddrPortFrom(peer, 443))
	}
	if _, err := p.Register(dial(40000), flow.Connected); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Register(dial(40001), flow.Connected); !errors.Is(err, flow.ErrTooManyFlows) || !errors.Is(err, netif.ErrSteerFull) {
		t.Fatalf("a dial past the steering map's room: %v, want flow.ErrTooManyFlows and netif.ErrSteerFull", err)
	}
	registerAll(t, p, []packet.Key{packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(local, 80), netip.AddrPortFrom(peer, 50000))})
	st, err := n.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.SteerFull != 1 || st.Flows != 3 || st.Covered != 1 {
		t.Fatalf("stats: %d refused for the map, %d flows, %d covered; want 1, 3, 1", st.SteerFull, st.Flows, st.Covered)
	}
}
