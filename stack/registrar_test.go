package stack_test

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/skylane/skylane/channel"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/stack"
)

// gatedPort is a nexus port whose batch registrations wait for the test's
// gate and may be refused, and are recorded.
type gatedPort struct {
	*nexus.Port
	gate    chan struct{} // closed: registrations go ahead
	refuse  func(packet.Key) bool
	mu      sync.Mutex
	batches [][]packet.Key
}

func (g *gatedPort) RegisterBatch(keys []packet.Key, kind flow.Kind) ([]channel.FlowInfo, []error) {
	<-g.gate
	g.mu.Lock()
	g.batches = append(g.batches, append([]packet.Key(nil), keys...))
	g.mu.Unlock()
	fis, errs := g.Port.RegisterBatch(keys, kind)
	for i, k := range keys {
		if errs[i] == nil && g.refuse != nil && g.refuse(k) {
			g.Port.Teardown(k)
			fis[i], errs[i] = channel.FlowInfo{}, flow.ErrTooManyFlows
		}
	}
	return fis, errs
}

// TestRegistrarBatches: the replies of a UDP listener to 32 remotes each
// need a flow of their own. Netstack's writes return at once while the
// nexus has not answered (the registrar is held at a gate): nothing reaches
// the wire, the flows wait pending with their datagrams. Once the gate
// opens, the flows are registered in at most two batches (the first may
// have been taken with the first flow alone), the datagrams of the
// accepted flows go out, and those of the refused flows are dropped and
// counted, each refused flow handed to Options.Refuse once.
func TestRegistrarBatches(t *testing.T) {
	const n = 32
	gp := &gatedPort{gate: make(chan struct{}), refuse: func(k packet.Key) bool { return k.RemotePort%4 == 0 }}
	var refusedMu sync.Mutex
	refused := map[packet.Key]int{}
	r := newRigWrapped(t, stack.Options{Refuse: func(k packet.Key, err error) {
		if !errors.Is(err, flow.ErrTooManyFlows) {
			t.Errorf("Refuse(%v, %v): not the limit's error", k, err)
		}
		refusedMu.Lock()
		refused[k]++
		refusedMu.Unlock()
	}}, func(p *nexus.Port) stack.Port { gp.Port = p; return gp })

	lis := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(local, 53), netip.AddrPort{})
	if err := r.ep.Register(lis, flow.Listener3); err != nil {
		t.Fatal(err)
	}
	laddr := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(local.As4()), Port: 53}
	c, err := gonet.DialUDP(r.ns, &laddr, nil, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			to := &net.UDPAddr{IP: peer.AsSlice(), Port: 1000 + i}
			if _, err := c.WriteTo([]byte{byte(i)}, to); err != nil {
				t.Errorf("write %d: %v", i, err)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("netstack's writes waited for the nexus")
	}
	if got := r.ep.Flows(); got != 1+n {
		t.Errorf("%d flows in the endpoint while the nexus is held, want the listener and %d pending", got, n)
	}
	if fl, pk := r.ep.Suspended(); fl != n || pk != n {
		t.Errorf("%d flows hold %d packets while pending, want %d and %d", fl, pk, n, n)
	}
	if st, err := r.n.Stats(); err != nil || st.Switch.TxPackets != 0 {
		t.Fatalf("%d packets left before their flows were registered (%v)", st.Switch.TxPackets, err)
	}

	close(gp.gate)
	wantOut := n - n/4
	got := map[uint16]bool{}
	for len(got) < wantOut {
		_, port, seq := r.readUDP(t)
		if port%4 == 0 || int(seq) != int(port)-1000 {
			t.Fatalf("datagram to port %d (seq %d) on the wire", port, seq)
		}
		got[port] = true
	}
	deadline := time.Now().Add(10 * time.Second)
	// Refuse is called last, after the counts: once it has been called
	// for every refused flow, everything else of the batches shows.
	refusals := func() int {
		refusedMu.Lock()
		defer refusedMu.Unlock()
		return len(refused)
	}
	for refusals() < n/4 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	st := r.ep.Stats()
	if st.FlowsAuto != uint64(wantOut) || st.FlowsRefused != n/4 || st.FlowLimitHits != n/4 || st.TxRegisterFail != n/4 {
		t.Errorf("stats: %d auto, %d refused, %d limit hits, %d dropped; want %d, %d, %d, %d",
			st.FlowsAuto, st.FlowsRefused, st.FlowLimitHits, st.TxRegisterFail, wantOut, n/4, n/4, n/4)
	}
	gp.mu.Lock()
	nb, keys := len(gp.batches), 0
	for _, b := range gp.batches {
		keys += len(b)
	}
	gp.mu.Unlock()
	if nb > 2 || keys != n || st.RegisterBatches != uint64(nb) {
		t.Errorf("%d batches (%d counted) of %d keys in all, want at most 2 of %d", nb, st.RegisterBatches, keys, n)
	}
	refusedMu.Lock()
	defer refusedMu.Unlock()
	if len(refused) != n/4 {
		t.Errorf("Refuse called for %d flows, want %d", len(refused), n/4)
	}
	for k, c := range refused {
		if c != 1 || k.RemotePort%4 != 0 {
			t.Errorf("Refuse(%v) %d times", k, c)
		}
	}
	if fl, _ := r.ep.Suspended(); fl != 0 {
		t.Errorf("%d flows still hold packets", fl)
	}
}
