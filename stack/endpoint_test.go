package stack_test

import (
	"net/netip"
	"runtime"
	"sync"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/flowswitch"
	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/netif/memif"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/stack"
)

var (
	local = netip.MustParseAddr("198.18.0.1")
	peer  = netip.MustParseAddr("198.18.0.2")
)

// rig is one netstack on one nexus port; unless a test reads the peer end
// of the wire, the wire fills and tail-drops as a real one would.
type rig struct {
	wire netif.Link // the peer's end
	n    *nexus.Nexus
	port *nexus.Port
	ep   *stack.Endpoint
	ns   *gstack.Stack
}

func newRig(t *testing.T, o stack.Options) *rig { t.Helper(); return newRigWrapped(t, o, nil) }

// newRigWrapped is newRig whose endpoint sees the nexus port through wrap,
// if not nil.
func newRigWrapped(t *testing.T, o stack.Options, wrap func(*nexus.Port) stack.Port) *rig {
	t.Helper()
	return newRigOn(t, o, wrap, memif.Options{QueueLen: 64}, nexus.Options{})
}

// newRigOn is newRigWrapped on a wire made with mo, by a nexus made with
// no (its Link and Addrs set here).
func newRigOn(t *testing.T, o stack.Options, wrap func(*nexus.Port) stack.Port, mo memif.Options, no nexus.Options) *rig {
	t.Helper()
	a, b, err := memif.NewPair(mo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	r := &rig{wire: b}
	no.Link, no.Addrs = a, []netip.Addr{local}
	if r.n, err = nexus.New(no); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.n.Close() })
	if r.port, err = r.n.OpenPort("rig"); err != nil {
		t.Fatal(err)
	}
	o.Port, o.MTU = r.port, r.port.MTU()
	if wrap != nil {
		o.Port = wrap(r.port)
	}
	if r.ep, err = stack.New(o); err != nil {
		t.Fatal(err)
	}
	r.ns = gstack.New(gstack.Options{
		NetworkProtocols:   []gstack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []gstack.TransportProtocolFactory{udp.NewProtocol},
	})
	if terr := r.ns.CreateNIC(1, r.ep); terr != nil {
		t.Fatal(terr)
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddrFrom4(local.As4()).WithPrefix()}
	if terr := r.ns.AddProtocolAddress(1, pa, gstack.AddressProperties{}); terr != nil {
		t.Fatal(terr)
	}
	r.ns.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}})
	t.Cleanup(func() {
		r.ns.Close()
		r.ep.Stop()
		r.ns.Wait()
		r.port.Close()
	})
	return r
}

// TestFloodThenStop floods the TX path from several goroutines (so packets
// queue behind a full ring), then stops the endpoint mid-flood: Stop
// releases every queued packet (TestMain's leak check would catch one
// reference kept), tears every flow down at the nexus and holds no
// buffer. No packet the endpoint sent was refused by the flowswitch.
func TestFloodThenStop(t *testing.T) {
	r := newRig(t, stack.Options{MaxPending: 256})
	const senders = 4
	var conns []*gonet.UDPConn
	for i := range senders {
		laddr := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(local.As4()), Port: uint16(5000 + i)}
		raddr := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(peer.As4()), Port: 9}
		key := packet.MakeKey(packet.ProtoUDP, netip.AddrPortFrom(local, laddr.Port), netip.AddrPortFrom(peer, 9))
		if err := r.ep.Register(key, flow.Connected); err != nil {
			t.Fatal(err)
		}
		c, err := gonet.DialUDP(r.ns, &laddr, &raddr, ipv4.ProtocolNumber)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	msg := make([]byte, 1400)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.Write(msg); err != nil {
					return // stopped: sends fail from here on
				}
			}
		}()
	}
	for r.ep.Stats().TxPackets < 2000 {
		runtime.Gosched() // let the flood push a few rings' worth
	}
	r.ep.Stop()
	close(stop)
	// Closing wakes a sender gonet left waiting for send-buffer space: its
	// UDPConn.WriteTo registers for the wake-up only after the write that
	// would block, so the releases Stop just made may have gone unseen
	// (package client's WriteTo registers first).
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
	st := r.ep.Stats()
	if r.ep.Flows() != 0 || r.ep.Held() != 0 {
		t.Errorf("after Stop: %d flows, %d buffers held", r.ep.Flows(), r.ep.Held())
	}
	ns, err := r.n.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if ns.Flows != 0 {
		t.Errorf("nexus keeps %d flows", ns.Flows)
	}
	if ns.Switch.TxDrops != (flowswitch.TxDrops{}) {
		t.Errorf("flowswitch refused the endpoint's packets: %+v", ns.Switch.TxDrops)
	}
	t.Logf("sent %d, %d writes left packets queued, dropped: %d queue full, %d at stop",
		st.TxPackets, st.TxWaits, st.TxQueueFull, st.TxClosed)
}
