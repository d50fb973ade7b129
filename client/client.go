package client

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
	"github.com/skylane/skylane/stack"
)

// Port is a nexus port as a Stack uses it: the endpoint's needs
// (stack.Port) plus the interface's addresses and MTU, and Close.
type Port interface {
	stack.Port
	// Name names the port (its channel).
	Name() string
	// Addrs returns the addresses the port's flows may use locally.
	Addrs() []netip.Addr
	// MTU returns the largest IP packet the port may send.
	MTU() int
	// Close tears down the port's flows and closes its channel.
	Close() error
}

// Nexus opens ports: the control interface between an app and a nexus.
type Nexus interface {
	OpenPort(name string) (Port, error)
}

// InProcess returns the Nexus interface of a nexus running in this process.
// Its ports are opened as honouring flow advisories
// (nexus.PortOptions.Advisories): a Stack's endpoint holds a suspended
// flow's packets back, so the nexus suspends its flows rather than dropping
// their packets.
func InProcess(n *nexus.Nexus) Nexus { return inProcess{n} }

type inProcess struct{ n *nexus.Nexus }

func (l inProcess) OpenPort(name string) (Port, error) {
	p, err := l.n.OpenPortWith(name, nexus.PortOptions{Advisories: true})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Defaults of Options.
const (
	// DefaultBufferSize is each TCP connection's default send and receive
	// buffer: large enough for the bandwidth-delay product of a user-space
	// path (10 Gbit/s × 100 µs = 125 KB) several times over, and moderated
	// (auto-tuned) up to MaxBufferSize for the receive side.
	DefaultBufferSize = 1 << 20
	// MaxBufferSize caps the buffers an application may set.
	MaxBufferSize = 8 << 20
)

// Options configures a Stack. The zero value is usable.
type Options struct {
	// Name names the stack's port (for the nexus's stats and memfds).
	Name string
	// BufferSize is the default TCP send and receive buffer; 0 means
	// DefaultBufferSize.
	BufferSize int
	// GSOMaxSize is passed to the endpoint (stack.Options.GSOMaxSize).
	GSOMaxSize int
	// TimeWait is how long closed TCP connections stay in TIME-WAIT in
	// netstack; 0 keeps netstack's default (60 s). Their flows are torn down
	// as they enter it.
	TimeWait time.Duration
}

// Stack is a user-space TCP/IP stack on one nexus port. Its methods are
// safe for concurrent use.
type Stack struct {
	port  Port            // immutable
	ep    *stack.Endpoint // immutable
	ns    *gstack.Stack   // immutable
	nic   tcpip.NICID     // immutable
	addrs []netip.Addr    // immutable

	mu     sync.Mutex
	closed bool
}

const nicID tcpip.NICID = 1

// New opens a port on nx and builds a netstack on it: IPv4 and IPv6, TCP
// and UDP, the port's addresses, a default route per family.
func New(nx Nexus, opts Options) (_ *Stack, err error) {
	if nx == nil {
		return nil, fmt.Errorf("client: no nexus: pass client.InProcess(n) for a nexus in this process")
	}
	if opts.BufferSize < 0 || opts.BufferSize > MaxBufferSize {
		return nil, fmt.Errorf("client: buffer size %d outside 0..%d", opts.BufferSize, MaxBufferSize)
	}
	if opts.TimeWait < 0 {
		return nil, fmt.Errorf("client: negative TIME-WAIT %v", opts.TimeWait)
	}
	if opts.BufferSize == 0 {
		opts.BufferSize = DefaultBufferSize
	}
	if opts.Name == "" {
		opts.Name = "stack"
	}
	port, err := nx.OpenPort(opts.Name)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	s := &Stack{port: port, nic: nicID, addrs: port.Addrs()}
	defer func() {
		if err != nil {
			if s.ns != nil {
				s.ns.Close()
			}
			if s.ep != nil {
				s.ep.Stop()
			}
			if s.ns != nil {
				s.ns.Wait()
			}
			port.Close()
		}
	}()
	s.ns = gstack.New(gstack.Options{
		NetworkProtocols: []gstack.NetworkProtocolFactory{
			ipv4.NewProtocol,
			// No duplicate address detection: the nexus owns the
			// interface's addresses, and DAD would hold them tentative
			// for a second while its probes go nowhere.
			ipv6.NewProtocolWithOptions(ipv6.Options{DADConfigs: gstack.DADConfigurations{DupAddrDetectTransmits: 0}}),
		},
		TransportProtocols: []gstack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	for _, o := range []tcpip.SettableTransportProtocolOption{
		ptr(tcpip.TCPSACKEnabled(true)),
		ptr(tcpip.TCPModerateReceiveBufferOption(true)),
		// Loss recovery by SACK (RFC 6675) and the retransmission timer,
		// without RACK and its tail loss probes: see the package doc.
		ptr(tcpip.TCPRecovery(0)),
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: opts.BufferSize, Max: MaxBufferSize},
		&tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: opts.BufferSize, Max: MaxBufferSize},
	} {
		if terr := s.ns.SetTransportProtocolOption(tcp.ProtocolNumber, o); terr != nil {
			return nil, fmt.Errorf("client: tcp option %T: %s", o, terr)
		}
	}
	if opts.TimeWait > 0 {
		tw := tcpip.TCPTimeWaitTimeoutOption(opts.TimeWait)
		if terr := s.ns.SetTransportProtocolOption(tcp.ProtocolNumber, &tw); terr != nil {
			return nil, fmt.Errorf("client: tcp TIME-WAIT: %s", terr)
		}
	}
	s.ep, err = stack.New(stack.Options{Port: port, MTU: port.MTU(), GSOMaxSize: opts.GSOMaxSize, Alive: s.alive})
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	if terr := s.ns.CreateNICWithOptions(s.nic, s.ep, gstack.NICOptions{Name: port.Name()}); terr != nil {
		return nil, fmt.Errorf("client: create NIC: %s", terr)
	}
	var routes []tcpip.Route
	for _, a := range s.addrs {
		pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpAddr(a).WithPrefix()}
		dst := header.IPv4EmptySubnet
		if !a.Is4() {
			pa.Protocol, dst = ipv6.ProtocolNumber, header.IPv6EmptySubnet
		}
		if terr := s.ns.AddProtocolAddress(s.nic, pa, gstack.AddressProperties{}); terr != nil {
			return nil, fmt.Errorf("client: add address %v: %s", a, terr)
		}
		if !hasRoute(routes, dst) {
			routes = append(routes, tcpip.Route{Destination: dst, NIC: s.nic})
		}
	}
	s.ns.SetRouteTable(routes)
	return s, nil
}

func ptr[T any](v T) *T { return &v }

func hasRoute(rs []tcpip.Route, dst tcpip.Subnet) bool {
	for _, r := range rs {
		if r.Destination == dst {
			return true
		}
	}
	return false
}

// ErrClosed is returned by the Stack's methods after Close.
var ErrClosed = errors.New("client: stack closed")

// Close aborts every connection (their peers get a reset), tears down
// every flow, stops the endpoint and netstack's goroutines and closes the
// port. Safe to call more than once.
func (s *Stack) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.ns.Close() // aborts: resets still leave, the flows are up
	s.ep.Stop()  // before ns.Wait, which holds netstack's lock while it stops the NIC
	s.ns.Wait()
	return s.port.Close()
}

func (s *Stack) checkOpen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return nil
}

// Addrs returns the stack's local addresses.
func (s *Stack) Addrs() []netip.Addr { return append([]netip.Addr(nil), s.addrs...) }

// Endpoint returns the stack's link endpoint, for its statistics.
func (s *Stack) Endpoint() *stack.Endpoint { return s.ep }

// Netstack returns the gVisor stack, for its statistics and options.
func (s *Stack) Netstack() *gstack.Stack { return s.ns }

// alive reports whether netstack has a live connection for the TCP 5-tuple
// k: found (not the listener that would take a new one), not closed, not in
// TIME-WAIT. It reads only the demultiplexer and the endpoint's state word,
// so it never waits for a connection's lock.
func (s *Stack) alive(k packet.Key) bool {
	la, ra := k.LocalAddrPort(), k.RemoteAddrPort()
	id := gstack.TransportEndpointID{
		LocalPort: la.Port(), LocalAddress: tcpAddr(la.Addr()),
		RemotePort: ra.Port(), RemoteAddress: tcpAddr(ra.Addr()),
	}
	np := ipv4.ProtocolNumber
	if k.Version == 6 {
		np = ipv6.ProtocolNumber
	}
	ep := s.ns.FindTransportEndpoint(np, tcp.ProtocolNumber, id, s.nic)
	if ep == nil {
		return false
	}
	st, ok := ep.(interface{ State() uint32 })
	if !ok {
		return true
	}
	switch tcp.EndpointState(st.State()) {
	case tcp.StateListen, tcp.StateTimeWait, tcp.StateClose, tcp.StateError:
		return false
	}
	return true
}

func tcpAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}
